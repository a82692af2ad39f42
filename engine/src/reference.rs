//! Comparison with outputs computed by the official implementation (`expected.safetensors` in a
//! reference case folder, see `shared/golden/README.md`). Used by `tessera check-reference` and
//! by the tests; it runs each network the way Tessera runs it — the full teacher-forced forward
//! and the cached token-by-token path — and reports the largest deviation of each output.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::loader::{Model, Stage};
use crate::{Error, Result};

/// Largest absolute error tolerated on float outputs (logits, latents, images).
pub const TOLERANCE: f32 = 1e-4;

/// How one output compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Float tensor: largest absolute difference.
    MaxAbs(f32),
    /// Integer tensor: number of differing entries out of the total.
    Mismatches {
        /// Entries that differ.
        differ: usize,
        /// Entries compared.
        of: usize,
    },
    /// The outputs could not be compared (shape mismatch, missing tensor).
    Incomparable(String),
}

/// One compared output.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was compared, e.g. `stage1.logits (cached)`.
    pub name: String,
    /// The result.
    pub measure: Measure,
}

impl Row {
    /// Whether this output agrees with the reference.
    pub fn passed(&self) -> bool {
        match &self.measure {
            Measure::MaxAbs(e) => e.is_finite() && *e <= TOLERANCE,
            Measure::Mismatches { differ, .. } => *differ == 0,
            Measure::Incomparable(_) => false,
        }
    }
}

/// All comparisons of one reference case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// One row per compared output.
    pub rows: Vec<Row>,
}

impl Report {
    /// Whether every output agrees.
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(Row::passed)
    }

    fn float(&mut self, name: impl Into<String>, ours: &Tensor, theirs: &Tensor) -> Result<()> {
        let measure = if ours.dims() != theirs.dims() {
            Measure::Incomparable(format!(
                "shape {:?}, expected {:?}",
                ours.dims(),
                theirs.dims()
            ))
        } else {
            let d = (ours.to_dtype(DType::F32)? - theirs.to_dtype(DType::F32)?)?.abs()?;
            let max = d.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            // A NaN anywhere must fail, and `max` ignores NaN on some backends.
            let nan = d
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .any(|v| v.is_nan());
            Measure::MaxAbs(if nan { f32::NAN } else { max })
        };
        self.rows.push(Row {
            name: name.into(),
            measure,
        });
        Ok(())
    }

    fn index(&mut self, name: impl Into<String>, ours: &[i64], theirs: &[i64]) {
        let measure = if ours.len() != theirs.len() {
            Measure::Incomparable(format!("{} entries, expected {}", ours.len(), theirs.len()))
        } else {
            Measure::Mismatches {
                differ: ours.iter().zip(theirs).filter(|(a, b)| a != b).count(),
                of: ours.len(),
            }
        };
        self.rows.push(Row {
            name: name.into(),
            measure,
        });
    }
}

struct Expected {
    tensors: HashMap<String, Tensor>,
    path: std::path::PathBuf,
}

impl Expected {
    fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        })
    }
    fn ints(&self, key: &str) -> Result<Vec<i64>> {
        Ok(self
            .get(key)?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?)
    }
}

fn ints(t: &Tensor) -> Result<Vec<i64>> {
    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
}

/// Compares `model` with the reference outputs in `expected` (an `expected.safetensors`).
pub fn check(model: &Model, expected: &Path) -> Result<Report> {
    let tensors = candle_core::safetensors::load(expected, &Device::Cpu)
        .map_err(|e| Error::bad_file(expected, format!("cannot read reference outputs: {e}")))?;
    let exp = Expected {
        tensors,
        path: expected.to_path_buf(),
    };
    let dev = &model.device;
    let mut report = Report::default();

    // First stage.
    let vq = &model.vqgan;
    let image = exp.get("vqgan.image")?.to_device(dev)?;
    let h = vq.encode_prequant(&image)?;
    report.float("vqgan.h", &h, exp.get("vqgan.h")?)?;
    let full = vq.nearest_codes(&h)?;
    report.index(
        "vqgan.indices_full",
        &ints(&full)?,
        &exp.ints("vqgan.indices_full")?,
    );
    let (remapped, in_used) = vq.remap(&h, &full)?;
    report.index(
        "vqgan.in_used",
        &ints(&in_used)?,
        &exp.ints("vqgan.in_used")?,
    );
    // Where the official code drew a random replacement (−1 here) there is nothing to compare.
    let theirs = exp.ints("vqgan.indices_remapped")?;
    let ours = ints(&remapped)?;
    let known: Vec<(i64, i64)> = ours
        .iter()
        .zip(&theirs)
        .filter(|(_, t)| **t >= 0)
        .map(|(o, t)| (*o, *t))
        .collect();
    let (o, t): (Vec<i64>, Vec<i64>) = known.into_iter().unzip();
    report.index("vqgan.indices_remapped (codes in the used set)", &o, &t);
    let decode_tokens = exp.get("vqgan.decode_tokens")?.to_device(dev)?;
    let decoded = vq.decode_tokens(&decode_tokens)?;
    report.float("vqgan.decoded", &decoded, exp.get("vqgan.decoded")?)?;
    let zeroed: Vec<i64> = theirs.iter().map(|v| (*v).max(0)).collect();
    let zeroed = Tensor::from_vec(zeroed, exp.get("vqgan.indices_remapped")?.dims(), dev)?;
    let recon = vq.decode_tokens(&zeroed)?;
    report.float(
        "vqgan.reconstruction_of_image",
        &recon,
        exp.get("vqgan.reconstruction_of_image")?,
    )?;

    // Schedule.
    let s = &model.card.schedule;
    let n = s.alphats.len();
    report.float(
        "schedule.alphats",
        &Tensor::from_vec(s.alphats.clone(), n, &Device::Cpu)?,
        exp.get("schedule.alphats")?,
    )?;
    report.float(
        "schedule.alphacum",
        &Tensor::from_vec(s.alphacum.clone(), n, &Device::Cpu)?,
        exp.get("schedule.alphacum")?,
    )?;

    // Stages.
    for t in 1..=model.card.levels() {
        let stage = model.stage(t)?;
        let expected_logits = exp.get(&format!("stage{t}.logits"))?;
        match &*stage {
            Stage::EncDec(net) => {
                let src = exp.get(&format!("stage{t}.src"))?.to_device(dev)?;
                let tgt = exp.get(&format!("stage{t}.tgt"))?.to_device(dev)?;
                let full = net.forward(&src, &tgt)?;
                report.float(format!("stage{t}.logits"), &full, expected_logits)?;
                let mut cache = net.start(&src)?;
                let mut rows = Vec::with_capacity(tgt.dim(1)?);
                for j in 0..tgt.dim(1)? {
                    rows.push(net.step(&tgt.i((.., j..j + 1))?, &mut cache)?);
                }
                let cached = Tensor::cat(&rows, 1)?;
                report.float(
                    format!("stage{t}.logits (cached)"),
                    &cached,
                    expected_logits,
                )?;
            }
            Stage::Gpt(net) => {
                let idx = exp.get(&format!("stage{t}.idx"))?.to_device(dev)?;
                let len = idx.dim(1)?;
                let rows_expected = expected_logits.dim(1)?;
                if rows_expected > len {
                    return Err(Error::bad_file(
                        expected,
                        format!("stage{t}: {rows_expected} logit rows for {len} input tokens"),
                    ));
                }
                let first = len + 1 - rows_expected;
                let full = net.forward(&idx)?;
                let full = full.i((.., first - 1..))?;
                report.float(format!("stage{t}.logits"), &full, expected_logits)?;
                // Cached: the prefix in one call, then one token per call.
                let mut cache = net.new_cache();
                let prefix = net.step(&idx.i((.., ..first))?, &mut cache)?;
                let mut rows = vec![prefix.i((.., first - 1..first, ..))?];
                for j in first..len {
                    rows.push(net.step(&idx.i((.., j..j + 1))?, &mut cache)?);
                }
                let cached = Tensor::cat(&rows, 1)?;
                report.float(
                    format!("stage{t}.logits (cached)"),
                    &cached,
                    expected_logits,
                )?;
            }
        }
    }
    Ok(report)
}
