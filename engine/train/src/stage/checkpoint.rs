//! The resumable state of a stage's training run: weights, EMA, Adam moments and the step,
//! in one atomically written file, and the metrics log trimmed to match on resume.

use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarMap;

use tessera_engine::{Error, Result};

use super::StageTrainConfig;
use crate::optim::{self, AdamW, Ema};

/// Reads the checkpoint in `dir`, if any, into the variables, the optimiser and the EMA;
/// returns the step to continue from.
pub(super) fn resume(
    path: &Path,
    cfg: &StageTrainConfig,
    varmap: &VarMap,
    opt: &mut AdamW,
    ema: &mut Ema,
) -> Result<usize> {
    if !path.is_file() {
        return Ok(0);
    }
    let (tensors, meta) = optim::load_checkpoint(path)?;
    let saved: StageTrainConfig = serde_json::from_value(meta["config"].clone())
        .map_err(|e| Error::bad_file(path, format!("checkpoint settings: {e}")))?;
    if saved.network != cfg.network || saved.level != cfg.level || saved.seed != cfg.seed {
        return Err(Error::Input(format!(
            "{} was written for another network, level or seed; use another folder",
            path.display()
        )));
    }
    for (name, var) in optim::sorted_vars(varmap)? {
        let key = format!("param.{name}");
        let t = tensors
            .get(&key)
            .ok_or_else(|| Error::Input(format!("checkpoint lacks tensor `{key}`")))?;
        var.set(&t.reshape(var.shape())?)?;
    }
    let num = |k: &str| meta[k].as_u64().unwrap_or(0);
    opt.load_state(&tensors, num("adam_updates"))?;
    ema.load_state(&tensors, num("ema_updates"))?;
    Ok(num("step") as usize)
}

pub(super) fn save(
    path: &Path,
    cfg: &StageTrainConfig,
    step: usize,
    varmap: &VarMap,
    opt: &AdamW,
    ema: &Ema,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = optim::sorted_vars(varmap)?
        .into_iter()
        .map(|(n, v)| (format!("param.{n}"), v.as_tensor().detach()))
        .collect();
    tensors.extend(opt.state()?);
    tensors.extend(
        ema.tensors()?
            .into_iter()
            .map(|(n, t)| (format!("ema.{n}"), t)),
    );
    let meta = serde_json::json!({
        "step": step,
        "adam_updates": opt.updates(),
        "ema_updates": ema.num_updates(),
        "config": cfg,
    });
    optim::save_checkpoint(path, tensors, &meta)
}

/// Keeps the metrics lines of steps before `step` (a resumed run rewrites the rest).
pub(super) fn trim_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| (s as usize) <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|e| Error::io(path, e))
}
