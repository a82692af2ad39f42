//! One entry point for every model Tessera can run: [`ModelSource::open`] takes an official
//! release manifest (or a folder holding `sampling.yaml`) or a Tessera model folder (holding
//! `model.json`), and [`ModelSource::load`] / [`ModelSource::load_stage`] build the networks.

pub mod backend;
pub mod card;
pub mod gguf;
pub mod import;
pub mod official;
pub mod pth;
pub mod tessera;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::gpt::Gpt;
use crate::recognizer::Recognizer;
use crate::vqgan::Vqgan;
use crate::xtransformer::XTransformer;
use crate::{Error, Result};
use backend::{Checked, Recorder, Source};
use card::{ModelCard, Network};
use gguf::GgufWeights;
use tessera::is_gguf;

/// Device and storage type for a load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the networks run.
    pub device: Device,
    /// Type of the transformer weights and activations (the VQGAN always runs in f32).
    pub dtype: DType,
    /// Load each stage when the chain reaches it and release it afterwards, so only the VQGAN
    /// and one stage are resident (for released-size models on machines with little memory);
    /// otherwise every stage is loaded up front and kept.
    pub lazy: bool,
    /// Quantize the linear layers of every stage to this ggml block format as they load
    /// (`dtype` must then be f32; see [`XTransformer::quantized`]). The VQGAN, embeddings and
    /// LayerNorms keep their type.
    pub quantize: Option<GgmlDType>,
    /// With `quantize`: a stage stored in a block format loads as stored instead of being
    /// refused (a standing preference, such as the editor's, applies to the stages that are
    /// not quantized already; an explicit `--quantize` on such a model stays an error).
    pub keep_stored_quantization: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            lazy: false,
            quantize: None,
            keep_stored_quantization: false,
        }
    }
}

impl LoadOptions {
    /// How a model with this card holds its transformer weights under these options, in words
    /// (`"f16"`, `"q8_0 (stored)"`, `"q8_0 (quantized at load from f16)"`, with
    /// `", one stage resident"` when lazy).
    pub fn describe_weights(&self, card: &ModelCard) -> String {
        let stored_blocks = stored_format(card).is_some();
        let mut s = match self.quantize {
            _ if stored_blocks => format!("{} (stored)", card.dtype),
            Some(q) => format!(
                "{} (quantized at load from {})",
                gguf::format_name(q),
                card.dtype
            ),
            None if self.dtype == DType::F32 => card.dtype.clone(),
            None => {
                format!("{:?} (converted at load from {})", self.dtype, card.dtype).to_lowercase()
            }
        };
        if self.lazy {
            s.push_str(", one stage resident");
        }
        s
    }
}

/// The network of one level.
#[allow(clippy::large_enum_variant)] // a handful per model, never moved in bulk
pub enum Stage {
    /// Encoder–decoder stage, t < T.
    EncDec(XTransformer),
    /// Decoder-only last stage, t = T.
    Gpt(Gpt),
}

/// A loaded model: the VQGAN and the stage networks (all resident, or loaded on demand).
pub struct Model {
    /// Its description.
    pub card: ModelCard,
    /// First stage.
    pub vqgan: Vqgan,
    /// Device the networks live on.
    pub device: Device,
    /// The concept recognizer that ranks candidates, when the card has one.
    pub recognizer: Option<Recognizer>,
    /// `stages[t-1]` undoes level t; `None` while a lazy stage is not resident.
    stages: Vec<Mutex<Option<Arc<Stage>>>>,
    /// Where lazy stages are (re)loaded from.
    source: Option<ModelSource>,
    opts: LoadOptions,
}

impl Model {
    /// A model from networks built in memory (benchmarks, tests): `stages[t-1]` undoes level t.
    /// Every stage stays resident.
    pub fn from_networks(
        card: ModelCard,
        vqgan: Vqgan,
        stages: Vec<Stage>,
        device: Device,
    ) -> Result<Self> {
        card.validate().map_err(Error::Input)?;
        if stages.len() != card.levels() {
            return Err(Error::Input(format!(
                "{} networks for a card of {} levels",
                stages.len(),
                card.levels()
            )));
        }
        Ok(Self::from_parts(card, vqgan, stages, device))
    }

    /// The network of level `t`, loading it first if it is not resident.
    pub fn stage(&self, t: usize) -> Result<Arc<Stage>> {
        let slot = self
            .stages
            .get(t.wrapping_sub(1))
            .ok_or_else(|| Error::Input(format!("the model has no stage {t}")))?;
        let mut guard = slot
            .lock()
            .map_err(|_| Error::Input("stage slot poisoned".into()))?;
        if let Some(stage) = guard.as_ref() {
            return Ok(stage.clone());
        }
        let source = self
            .source
            .as_ref()
            .ok_or_else(|| Error::Input(format!("stage {t} is not loaded")))?;
        let stage = Arc::new(source.load_stage(t, &self.opts)?);
        *guard = Some(stage.clone());
        Ok(stage)
    }

    /// Drops level `t`'s network if the model was loaded lazily (no-op otherwise).
    pub fn release(&self, t: usize) {
        if self.opts.lazy
            && let Some(Ok(mut slot)) = self.stages.get(t.wrapping_sub(1)).map(|s| s.lock())
        {
            *slot = None;
        }
    }

    /// Whether stages are loaded on demand.
    pub fn is_lazy(&self) -> bool {
        self.opts.lazy
    }

    /// Levels whose networks are resident now.
    pub fn resident_stages(&self) -> Vec<usize> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.lock().is_ok_and(|s| s.is_some()))
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// Assembles a model from networks built elsewhere (tests, benchmarks).
    pub fn from_parts(card: ModelCard, vqgan: Vqgan, stages: Vec<Stage>, device: Device) -> Self {
        Self {
            card,
            vqgan,
            recognizer: None,
            device: device.clone(),
            stages: stages
                .into_iter()
                .map(|s| Mutex::new(Some(Arc::new(s))))
                .collect(),
            source: None,
            opts: LoadOptions {
                device,
                ..LoadOptions::default()
            },
        }
    }
}

/// A model on disk, opened but not loaded.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// An official release.
    Official(official::Release),
    /// A Tessera model folder.
    Tessera(tessera::Folder),
}

impl ModelSource {
    /// Opens a Tessera model folder, an official manifest, or a folder with `sampling.yaml`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        if path.is_dir() {
            if path.join(card::CARD_FILE).is_file() {
                return Ok(Self::Tessera(tessera::Folder::open(path)?));
            }
            let manifest = path.join("sampling.yaml");
            if manifest.is_file() {
                return Ok(Self::Official(official::Release::open(manifest)?));
            }
            return Err(Error::config(
                path,
                format!(
                    "neither a Tessera model folder ({}) nor an official release folder \
                     (sampling.yaml)",
                    card::CARD_FILE
                ),
            ));
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Ok(Self::Official(official::Release::open(path)?)),
            Some("json") if path.file_name().is_some_and(|n| n == card::CARD_FILE) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                Ok(Self::Tessera(tessera::Folder::open(dir)?))
            }
            _ => Err(Error::config(
                path,
                "expected a model folder, a model.json, or an official sampling manifest (.yaml)",
            )),
        }
    }

    /// The model's card.
    pub fn card(&self) -> &ModelCard {
        match self {
            Self::Official(r) => &r.card,
            Self::Tessera(f) => &f.card,
        }
    }

    /// Where the model was opened from.
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Official(r) => r.manifest.clone(),
            Self::Tessera(f) => f.dir.clone(),
        }
    }

    /// Non-fatal findings made while opening.
    pub fn warnings(&self) -> &[String] {
        match self {
            Self::Official(r) => &r.warnings,
            Self::Tessera(_) => &[],
        }
    }

    fn backend(&self, part: Part, record: Option<Recorder>) -> Result<Checked> {
        let source = match (self, part) {
            (Self::Official(r), Part::Vqgan) => Source::Pth {
                ckpt: r.checkpoint(1)?,
                map: backend::first_stage_key,
            },
            (Self::Official(r), Part::Stage(t)) => Source::Pth {
                ckpt: r.checkpoint(t)?,
                map: backend::ema_key,
            },
            (Self::Tessera(f), part) => f.source(part)?,
        };
        Ok(Checked::new(source, record))
    }

    /// Builds the VQGAN (f32).
    pub fn load_vqgan(&self, opts: &LoadOptions) -> Result<Vqgan> {
        self.build_vqgan(opts, None)
    }

    pub(crate) fn build_vqgan(
        &self,
        opts: &LoadOptions,
        record: Option<Recorder>,
    ) -> Result<Vqgan> {
        let backend = self.backend(Part::Vqgan, record)?;
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, opts.device.clone());
        let card = self.card();
        Vqgan::new(vb, &card.vqgan, card.n_tokens).map_err(backend::unwrap)
    }

    /// Builds the card's concept recognizer (f32; it is small), if it has one.
    pub fn load_recognizer(&self, opts: &LoadOptions) -> Result<Option<Recognizer>> {
        let (Self::Tessera(f), Some(rc)) = (self, &self.card().recognizer) else {
            return Ok(None);
        };
        let path = f.dir.join(&rc.weights);
        // The stages' checks: a missing tensor or a shape mismatch names the file, the key
        // and both shapes.
        let backend = Checked::new(Source::safetensors(path)?, None);
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, opts.device.clone());
        let card = self.card();
        match Recognizer::new(vb, rc, card.n_tokens, card.grid_side()) {
            Ok(r) => Ok(Some(r)),
            Err(Error::Candle(e)) => Err(backend::unwrap(e)),
            Err(e) => Err(e),
        }
    }

    /// Builds the network of level `t` (1-based).
    pub fn load_stage(&self, t: usize, opts: &LoadOptions) -> Result<Stage> {
        self.build_stage(t, opts, None)
    }

    pub(crate) fn build_stage(
        &self,
        t: usize,
        opts: &LoadOptions,
        record: Option<Recorder>,
    ) -> Result<Stage> {
        let card = self.card();
        let stage = card
            .stages
            .get(t.wrapping_sub(1))
            .ok_or_else(|| Error::Input(format!("the model has no stage {t}")))?;
        // Refused before the weights are read, not after.
        let stored_quantized = is_gguf(Path::new(&stage.weights));
        if stored_quantized
            && ((opts.quantize.is_some() && !opts.keep_stored_quantization)
                || opts.dtype != DType::F32)
        {
            return Err(Error::Input(format!(
                "stage {t} is stored quantized ({}); it loads as it is, with f32 activations \
                 (no other weight type or quantization applies)",
                card.dtype
            )));
        }
        if opts.quantize.is_some() && opts.dtype != DType::F32 {
            return Err(Error::Input(format!(
                "quantized weights are made from f32 weights, not {:?}",
                opts.dtype
            )));
        }
        let backend = self.backend(Part::Stage(t), record)?;
        let stored = backend.gguf();
        let vb = VarBuilder::from_backend(Box::new(backend), opts.dtype, opts.device.clone());
        let net =
            build_network(&stage.network, vb, &card.schedule.alphats).map_err(backend::unwrap)?;
        if let Some(weights) = stored {
            return with_stored_quant(net, &weights, &opts.device);
        }
        let Some(q) = opts.quantize else {
            return Ok(net);
        };
        Ok(match net {
            Stage::EncDec(n) => Stage::EncDec(n.quantized(q)?),
            Stage::Gpt(n) => Stage::Gpt(n.quantized(q)?),
        })
    }

    /// Loads the VQGAN and every stage (or, with `opts.lazy`, only the VQGAN; stages follow
    /// on demand).
    pub fn load(&self, opts: &LoadOptions) -> Result<Model> {
        if let Some(available) = available_memory() {
            check_memory(self.card(), opts, available)?;
        }
        let vqgan = self.load_vqgan(opts)?;
        let stages = (1..=self.card().levels())
            .map(|t| {
                Ok(Mutex::new(if opts.lazy {
                    None
                } else {
                    Some(Arc::new(self.load_stage(t, opts)?))
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let recognizer = self.load_recognizer(opts)?;
        Ok(Model {
            card: self.card().clone(),
            vqgan,
            recognizer,
            device: opts.device.clone(),
            stages,
            source: opts.lazy.then(|| self.clone()),
            opts: opts.clone(),
        })
    }
}

/// The block format the card's stages are stored in (`q8_0`, `q4k`), if any.
fn stored_format(card: &ModelCard) -> Option<GgmlDType> {
    [GgmlDType::Q8_0, GgmlDType::Q4K]
        .into_iter()
        .find(|q| card.dtype == gguf::format_name(*q))
}

/// Bytes the stages' weights take once loaded under `opts` (all of them, or the largest alone
/// when lazy): 4 per parameter in f32, 2 in f16/bf16, about 1.06 in q8_0 and 0.56 in q4k.
pub fn resident_bytes(card: &ModelCard, opts: &LoadOptions) -> u64 {
    let per_param = match opts.quantize.or(stored_format(card)) {
        Some(GgmlDType::Q4K) => 0.5625,
        Some(_) => 1.0625,
        None if opts.dtype == DType::F32 => 4.0,
        None => 2.0,
    };
    let stage = |p: usize| (p as f64 * per_param) as u64;
    let sizes = card.stages.iter().map(|s| stage(s.parameters));
    if opts.lazy {
        sizes.max().unwrap_or(0)
    } else {
        sizes.sum()
    }
}

/// Refuses a load whose weights would not fit in `available` bytes of memory, before anything
/// is read, naming both numbers and what would make it fit.
pub fn check_memory(card: &ModelCard, opts: &LoadOptions, available: u64) -> Result<()> {
    let needed = resident_bytes(card, opts);
    if needed > available {
        let gb = |b: u64| b as f64 / 1e9;
        return Err(Error::Input(format!(
            "the model needs about {:.1} GB of memory for its weights ({}), but only {:.1} GB \
             are available; load one stage at a time (low-memory loading) or quantize to \
             q8_0, or close other programs",
            gb(needed),
            opts.describe_weights(card),
            gb(available)
        )));
    }
    Ok(())
}

/// Memory the system can give without swapping (Linux `MemAvailable`); `None` where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Swaps the block-format weights stored in `weights` into the linear layers of `net` (built
/// with placeholders for them), and checks that every stored block tensor found its layer.
fn with_stored_quant(net: Stage, weights: &GgufWeights, device: &Device) -> Result<Stage> {
    let mut used = std::collections::HashSet::new();
    let mut find = |name: &str| -> candle_core::Result<Option<candle_core::quantized::QTensor>> {
        if !weights.is_quantized(name) {
            return Ok(None);
        }
        used.insert(name.to_owned());
        weights.read(name, device).map(Some).map_err(backend::wrap)
    };
    let mut swap = |l: &crate::nn::Linear| l.with_stored_quant(&mut find);
    let net = match net {
        Stage::EncDec(n) => Stage::EncDec(n.map_linears(&mut swap).map_err(backend::unwrap)?),
        Stage::Gpt(n) => Stage::Gpt(n.map_linears(&mut swap).map_err(backend::unwrap)?),
    };
    let unused: Vec<String> = weights
        .quantized_names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect();
    if !unused.is_empty() {
        return Err(Error::bad_file(
            weights.path(),
            format!("block-format tensors that are no linear layer's weight: {unused:?}"),
        ));
    }
    Ok(net)
}

/// Builds a stage network from its description; `alphats` (α_t for t = 0..=T) feeds the
/// residual term of residual-scaled stages.
pub fn build_network(
    network: &Network,
    vb: VarBuilder,
    alphats: &[f32],
) -> candle_core::Result<Stage> {
    match network {
        Network::XTransformer {
            config,
            residual_scaled,
        } => {
            let alphas = residual_scaled.then(|| alphats.to_vec());
            XTransformer::new(vb, config, alphas).map(Stage::EncDec)
        }
        Network::Gpt { config } => Gpt::new(vb, config).map(Stage::Gpt),
    }
}

/// Which weights of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The first stage.
    Vqgan,
    /// Level t's network.
    Stage(usize),
}

/// Parses a quantized weight format: `q8_0` (8 bits and a scale per 32 weights) or `q4k`
/// (4-bit k-quants, 256-weight super-blocks).
pub fn parse_quantization(s: &str) -> Result<GgmlDType> {
    match s {
        "q8_0" => Ok(GgmlDType::Q8_0),
        "q4k" => Ok(GgmlDType::Q4K),
        other => Err(Error::Input(format!(
            "unknown quantization `{other}` (use q8_0 or q4k)"
        ))),
    }
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Input(format!(
            "unknown weight type `{other}` (use f32, f16 or bf16)"
        ))),
    }
}
