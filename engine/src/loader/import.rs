//! `tessera import`: converts an official release into a Tessera model folder, stage by stage
//! (safetensors, or GGUF with block-quantized linear layers; see [`super::gguf`]).
//! Each stage's network is built once from its checkpoint with a recording backend, so exactly
//! the tensors the network uses (EMA weights, no optimizer state, no raw weights, no unused
//! heads) are written; only one stage's checkpoint is open at a time. The folder is written
//! under a temporary name and renamed when complete, so an interrupted import leaves nothing
//! that looks like a model.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::card::{CARD_FILE, ModelCard, VQGAN_FILE};
use super::{LoadOptions, ModelSource, Stage, gguf};
use crate::nn::Linear;
use crate::{Error, Result};

/// Options of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Storage type of the transformer weights (`F32`, `F16`, `BF16`); the VQGAN stays f32.
    pub dtype: DType,
    /// Store the stages' linear-layer weights in this ggml block format instead (`dtype` must
    /// then be f32, which the other stage tensors keep), one GGUF file per stage.
    pub quantize: Option<GgmlDType>,
    /// Replace an existing output folder.
    pub overwrite: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quantize: None,
            overwrite: false,
        }
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The recorded tensors, each name once (a network may ask for a tensor twice).
fn unique(tensors: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    let mut map = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        map.entry(name).or_insert(tensor);
    }
    map
}

fn save(tensors: Vec<(String, Tensor)>, path: &Path) -> Result<usize> {
    let map = unique(tensors);
    candle_core::safetensors::save(&map, path)
        .map_err(|e| Error::bad_file(path, format!("cannot write: {e}")))?;
    Ok(map.values().map(Tensor::elem_count).sum())
}

/// Writes a stage's recorded tensors to a GGUF file: the weights of `stage`'s linear layers in
/// `quantize`'s block format (or Q8_0 / f32 where the input width does not allow it, as
/// [`Linear::block_format`] decides), everything else f32. Quantized part by part, so a fused
/// layer's blocks equal those of the fused matrix quantized at load time.
fn save_gguf(
    tensors: Vec<(String, Tensor)>,
    stage: &Stage,
    level: usize,
    quantize: GgmlDType,
    path: &Path,
) -> Result<usize> {
    let mut linear = HashSet::new();
    let mut list = |l: &Linear| {
        linear.extend(l.weight_names());
        Ok(l.clone())
    };
    match stage {
        Stage::EncDec(n) => drop(n.map_linears(&mut list)?),
        Stage::Gpt(n) => drop(n.map_linears(&mut list)?),
    }
    let map = unique(tensors);
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut stored = Vec::with_capacity(names.len());
    let mut count = 0;
    for name in names {
        let t = map[name].to_dtype(DType::F32)?;
        count += t.elem_count();
        let format = match t.dims() {
            [_, in_dim] if linear.contains(name) => {
                Linear::block_format(quantize, *in_dim).unwrap_or(GgmlDType::F32)
            }
            _ => GgmlDType::F32,
        };
        let q = QTensor::quantize(&t, format)
            .map_err(|e| Error::Input(format!("cannot store `{name}` {:?}: {e}", t.dims())))?;
        stored.push((name.clone(), q));
    }
    gguf::write(path, level, quantize, &stored)?;
    Ok(count)
}

/// Imports the release at `manifest` into the folder `out`. `progress` receives one line per
/// step. Returns the written card.
pub fn import(
    manifest: &Path,
    out: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ModelCard> {
    import_source(&ModelSource::open(manifest)?, out, opts, progress)
}

/// [`import`] of a release already opened (whose [`ModelSource::warnings`] the caller has shown).
pub fn import_source(
    source: &ModelSource,
    out: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ModelCard> {
    if !matches!(source, ModelSource::Official(_)) {
        return Err(Error::Input(format!(
            "{} is already a Tessera model folder",
            source.path().display()
        )));
    }
    if out.exists() && !opts.overwrite {
        return Err(Error::Input(format!(
            "{} already exists; choose another folder or allow overwriting",
            out.display()
        )));
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp: PathBuf = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = write_folder(source, &tmp, opts, progress);
    let card = match result {
        Ok(card) => card,
        Err(e) => {
            std::fs::remove_dir_all(&tmp).ok();
            return Err(e);
        }
    };
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        std::fs::remove_dir_all(&old).ok();
    } else {
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    }
    Ok(card)
}

fn write_folder(
    source: &ModelSource,
    dir: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ModelCard> {
    let mut card = source.card().clone();
    if opts.quantize.is_some() && opts.dtype != DType::F32 {
        return Err(Error::Input(format!(
            "quantized stages keep their other tensors in f32, not {:?}",
            opts.dtype
        )));
    }
    let cpu = LoadOptions {
        device: Device::Cpu,
        dtype: opts.dtype,
        lazy: false,
        quantize: None,
        keep_stored_quantization: false,
    };
    progress("VQGAN");
    let rec = Arc::new(Mutex::new(Vec::new()));
    drop(source.build_vqgan(&cpu, Some(rec.clone()))?);
    save(take(&rec), &dir.join(VQGAN_FILE))?;
    for t in 1..=card.levels() {
        progress(&format!("stage {t} of {}", card.levels()));
        let rec = Arc::new(Mutex::new(Vec::new()));
        let stage = source.build_stage(t, &cpu, Some(rec.clone()))?;
        let (file, count) = match opts.quantize {
            Some(q) => {
                let file = format!("stage{t}.gguf");
                let count = save_gguf(take(&rec), &stage, t, q, &dir.join(&file))?;
                (file, count)
            }
            None => {
                let file = format!("stage{t}.safetensors");
                (file.clone(), save(take(&rec), &dir.join(&file))?)
            }
        };
        drop(stage);
        let stage = &mut card.stages[t - 1];
        stage.weights = file;
        stage.parameters = count;
    }
    card.dtype = match opts.quantize {
        Some(q) => gguf::format_name(q),
        None => dtype_name(opts.dtype).into(),
    };
    card.provenance = format!(
        "imported by tessera import from {} ({})",
        source.path().display(),
        card.provenance
    );
    let json = serde_json::to_string_pretty(&card).map_err(|e| Error::Input(e.to_string()))?;
    let card_path = dir.join(CARD_FILE);
    std::fs::write(&card_path, json).map_err(|e| Error::io(&card_path, e))?;
    Ok(card)
}

fn take(rec: &Arc<Mutex<Vec<(String, Tensor)>>>) -> Vec<(String, Tensor)> {
    rec.lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}
