//! The work folder's files: the VQGAN's metadata, the recipe a run was started with, f16
//! export, and atomic JSON writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use tessera_engine::vqgan::{Vqgan, VqganConfig};
use tessera_engine::{Error, Result};

use super::{RECIPE_FILE, Recipe};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VqganMeta {
    pub(super) config: VqganConfig,
    pub(super) n_used: usize,
}

pub(super) fn load_vqgan(path: &Path, meta: &VqganMeta) -> Result<Vqgan> {
    // The file is ours and small; read it whole rather than memory-mapping.
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Ok(Vqgan::new(vb, &meta.config, meta.n_used)?)
}

/// A rerun must use the recipe the work folder was started with — except for what only goes
/// into the card (name, description, the recommended sampling and guidance), which is chosen
/// after measuring the trained model: the rerun then exports the card anew (and the work
/// folder's copy of the recipe is updated).
pub(super) fn check_recipe_file(recipe: &Recipe, work: &Path) -> Result<()> {
    let path = work.join(RECIPE_FILE);
    if path.is_file() {
        let saved: Recipe = read_json(&path)?;
        let training = |r: &Recipe| Recipe {
            name: String::new(),
            description: String::new(),
            sampling: None,
            guidance_scale: None,
            chains: None,
            ..r.clone()
        };
        if training(&saved) != training(recipe) {
            return Err(Error::Input(format!(
                "{} was started with another recipe ({}); use a new work folder",
                work.display(),
                path.display()
            )));
        }
        if &saved != recipe {
            write_json(&path, recipe)?;
        }
        Ok(())
    } else {
        write_json(&path, recipe)
    }
}

/// Rewrites a safetensors file with its float tensors in f16.
pub(super) fn to_f16(path: &Path) -> Result<()> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    let half: HashMap<String, Tensor> = map
        .into_iter()
        .map(|(k, v)| {
            let v = if v.dtype() == DType::F32 {
                v.to_dtype(DType::F16)?
            } else {
                v
            };
            Ok((k, v))
        })
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("f16.tmp");
    candle_core::safetensors::save(&half, &tmp)
        .map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub(super) fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|e| Error::io(to, e))?;
    Ok(())
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Input(format!("cannot serialise {}: {e}", path.display())))?;
    let tmp: PathBuf = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e))
}
