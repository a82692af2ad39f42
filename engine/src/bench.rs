//! `tessera bench`: timings of released-size networks with random weights, so the engine's
//! speed can be measured without downloading a release. Run it from a release build.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;

use crate::gpt::{Gpt, GptConfig};
use crate::vqgan::{Vqgan, VqganConfig};
use crate::xtransformer::{XTransformer, XTransformerConfig};
use crate::{Error, Result};

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    /// Released-size encoder–decoder stage.
    pub encdec: bool,
    /// Released-size minGPT stage.
    pub gpt: bool,
    /// Released VQGAN decoder at 256².
    pub vqgan: bool,
}

impl Parts {
    /// From names (`encdec`, `gpt`, `vqgan`); none means all.
    pub fn from_names(names: &[String]) -> Result<Self> {
        if names.is_empty() {
            return Ok(Self {
                encdec: true,
                gpt: true,
                vqgan: true,
            });
        }
        let mut p = Self {
            encdec: false,
            gpt: false,
            vqgan: false,
        };
        for n in names {
            match n.as_str() {
                "encdec" => p.encdec = true,
                "gpt" => p.gpt = true,
                "vqgan" => p.vqgan = true,
                other => {
                    return Err(Error::Input(format!(
                        "unknown benchmark `{other}` (encdec, gpt, vqgan)"
                    )));
                }
            }
        }
        Ok(p)
    }
}

/// The released class-conditional ImageNet encoder–decoder stage (617 M parameters).
pub fn released_encdec_config() -> XTransformerConfig {
    serde_json::from_value(json!({
        "dim": 1152, "enc_num_tokens": 1000, "enc_depth": 32, "enc_heads": 16,
        "enc_max_seq_len": 258, "dec_num_tokens": 973, "dec_depth": 6, "dec_heads": 16,
        "dec_max_seq_len": 256
    }))
    .expect("static config")
}

/// The released class-conditional ImageNet minGPT stage (642 M parameters).
pub fn released_gpt_config() -> GptConfig {
    serde_json::from_value(json!({
        "vocab_size": 973, "block_size": 258, "n_layer": 36, "n_head": 16, "n_embd": 1216,
        "input_vocab_size": 1000, "n_unmasked": 2
    }))
    .expect("static config")
}

/// The released VQGAN (f = 16, 16384 codes).
pub fn released_vqgan_config() -> VqganConfig {
    serde_json::from_value(json!({
        "embed_dim": 256, "n_embed": 16384,
        "ddconfig": {"double_z": false, "z_channels": 256, "resolution": 256, "in_channels": 3,
            "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
            "attn_resolutions": [16], "dropout": 0.0}
    }))
    .expect("static config")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn time(reps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
    f()?; // warm-up: first-touch of weights, allocator
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

/// One timed run, no warm-up: for whole levels, which warm themselves up.
fn once(mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn tokens(b: usize, n: usize, vocab: u32, dev: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = (0..b * n).map(|i| (i as u32 * 7919 + 13) % vocab).collect();
    Tensor::from_vec(v, (b, n), dev)
}

/// Runs the selected benchmarks, printing one line per measurement through `out`.
pub fn run(parts: &Parts, quick: bool, out: &mut dyn FnMut(String)) -> Result<()> {
    let dev = Device::Cpu;
    let reps = if quick { 1 } else { 3 };
    out(format!(
        "threads: {} (RAYON_NUM_THREADS or all cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    if parts.encdec {
        let cfg = released_encdec_config();
        let vm = VarMap::new();
        let net = XTransformer::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg, None)?;
        out(format!(
            "encoder–decoder stage (dim 1152, 32+6 layers, 16×64 heads, K 973): {:.1} M parameters",
            vm.all_vars().iter().map(|v| v.elem_count()).sum::<usize>() as f64 / 1e6
        ));
        for b in [1usize, 4] {
            let src = tokens(b, 258, 973, &dev)?;
            let enc = time(reps, || net.start(&src).map(drop))?;
            out(format!(
                "  batch {b}: encoder pass + cross K/V over 258 tokens: {:.3} s",
                enc
            ));
            for p in [1usize, 128, 248] {
                let mut per = Vec::new();
                for _ in 0..reps {
                    let mut cache = net.start(&src)?;
                    if p > 1 {
                        net.step(&tokens(b, p - 1, 973, &dev)?, &mut cache)?;
                    }
                    let one = tokens(b, 1, 973, &dev)?;
                    let t = Instant::now();
                    for _ in 0..8 {
                        net.step(&one, &mut cache)?;
                    }
                    per.push(t.elapsed().as_secs_f64() / 8.0);
                }
                out(format!(
                    "  batch {b}: decoder step with prefix {p}..{}: {:.2} ms/token",
                    p + 7,
                    median(per) * 1e3
                ));
            }
            let whole = once(|| {
                let mut cache = net.start(&src)?;
                let one = tokens(b, 1, 973, &dev)?;
                for _ in 0..256 {
                    net.step(&one, &mut cache)?;
                }
                Ok(())
            })?;
            out(format!(
                "  batch {b}: whole level (encoder + 256 cached steps): {whole:.2} s"
            ));
            // Inpainting a centred window of 26 tokens (10%): each known run is fed in one
            // prefill call, only the masked positions are stepped one by one.
            let masked: Vec<bool> = (0..256)
                .map(|i| {
                    let (r, c) = (i / 16, i % 16);
                    ((6..10).contains(&r) && (5..11).contains(&c))
                        || (r == 10 && (7..9).contains(&c))
                })
                .collect();
            let n_masked = masked.iter().filter(|m| **m).count();
            let part = once(|| {
                let mut cache = net.start(&src)?;
                // The SOS and the known run before a masked position go in together.
                let mut pending = 1usize;
                for &m in &masked {
                    if m {
                        net.step(&tokens(b, pending, 973, &dev)?, &mut cache)?;
                        pending = 1;
                    } else {
                        pending += 1;
                    }
                }
                Ok(())
            })?;
            out(format!(
                "  batch {b}: inpainting level, {n_masked} of 256 tokens masked (known runs \
                 prefilled): {part:.2} s = {:.0}% of the whole level",
                100.0 * part / whole
            ));
        }
    }
    if parts.gpt {
        let cfg = released_gpt_config();
        let vm = VarMap::new();
        let net = Gpt::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg)?;
        out(format!(
            "minGPT stage (36 layers × 1216, 16 heads): {:.1} M parameters",
            vm.all_vars().iter().map(|v| v.elem_count()).sum::<usize>() as f64 / 1e6
        ));
        for b in [1usize, 4] {
            for past in [2usize, 130, 250] {
                let mut per = Vec::new();
                for _ in 0..reps {
                    let mut cache = net.new_cache();
                    net.step(&tokens(b, past, 973, &dev)?, &mut cache)?;
                    let one = tokens(b, 1, 973, &dev)?;
                    let t = Instant::now();
                    for _ in 0..6 {
                        net.step(&one, &mut cache)?;
                    }
                    per.push(t.elapsed().as_secs_f64() / 6.0);
                }
                out(format!(
                    "  batch {b}: cached step with {past}..{} tokens of past: {:.2} ms/token",
                    past + 5,
                    median(per) * 1e3
                ));
            }
            let whole = once(|| {
                let mut cache = net.new_cache();
                net.step(&tokens(b, 2, 973, &dev)?, &mut cache)?;
                let one = tokens(b, 1, 973, &dev)?;
                for _ in 0..255 {
                    net.step(&one, &mut cache)?;
                }
                Ok(())
            })?;
            out(format!(
                "  batch {b}: whole level (prefix + 255 cached steps): {whole:.2} s"
            ));
        }
    }
    out(format!("peak resident memory so far: {}", peak_rss()));
    if parts.vqgan {
        let cfg = released_vqgan_config();
        let vm = VarMap::new();
        let vq = Vqgan::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &cfg, 973)?;
        for b in [1usize, 4] {
            let t = tokens(b, 256, 973, &dev)?;
            let d = time(reps, || vq.decode_tokens(&t).map(drop))?;
            out(format!("VQGAN decode 256×256, batch {b}: {d:.3} s"));
            let img = Tensor::zeros((b, 3, 256, 256), DType::F32, &dev)?;
            let e = time(reps, || vq.encode_tokens(&img).map(drop))?;
            out(format!("VQGAN encode 256×256, batch {b}: {e:.3} s"));
        }
    }
    out(format!("peak resident memory: {}", peak_rss()));
    Ok(())
}

/// The process's peak resident set (VmHWM), as text.
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
