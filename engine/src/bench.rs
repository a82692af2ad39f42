//! `tessera bench`: timings of released-size networks with random weights, so the engine's
//! speed can be measured without downloading a release. Run it from a release build.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;

use crate::gpt::{Gpt, GptConfig};
use crate::vqgan::{Vqgan, VqganConfig};
use crate::xtransformer::{XTransformer, XTransformerConfig};
use crate::{Error, Result};

pub mod chain;

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

/// Builds a network with random weights that are plain tensors, as a loaded release's are.
///
/// Two traps of building straight from a `VarMap`: it hands out variables, and variables track
/// gradients, so every layer would take its training kernel (see [`crate::nn`]) and the
/// timings would be of training; and its default initialiser is zero, whose untouched pages
/// all map to the kernel's one zero page, so "streaming the weights" would read one cached
/// page. So the network is built once to learn the shapes, then again from random plain
/// tensors. Returns the network and its parameter count.
fn random_net<T>(
    dtype: DType,
    dev: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> Result<(T, usize)> {
    let vm = VarMap::new();
    drop(build(VarBuilder::from_varmap(&vm, DType::F32, dev))?);
    let tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .map_err(|_| Error::Input("bench: weight map poisoned".into()))?
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            Ok((
                k.clone(),
                random(v.shape(), dev, i as u64)?.to_dtype(dtype)?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let params = tensors.values().map(Tensor::elem_count).sum();
    let net = build(VarBuilder::from_tensors(tensors, dtype, dev))?;
    Ok((net, params))
}

/// A plain f32 tensor of `shape`, uniform in ±0.035 (std ≈ 0.02, the released init scale),
/// filled in parallel from a per-tensor xorshift stream (fast: 600 M weights in about a second).
fn random(shape: &Shape, dev: &Device, seed: u64) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let n = shape.elem_count();
    let mut v = vec![0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut x = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c as u64 + 1)) | 1;
        for e in chunk {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *e = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07;
        }
    });
    Tensor::from_vec(v, shape, dev)
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

/// CPU time and minor page faults of this process so far (`/proc/self/stat`), to print
/// beside the timings: system time and page faults show allocation churn that wall time hides.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    user_s: f64,
    sys_s: f64,
    minor_faults: u64,
}

impl Usage {
    fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return Self::default();
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields 10, 14 and 15 of proc(5), counted from the state (field 3) at index 0;
        // times are in clock ticks, 100 per second on Linux.
        Self {
            minor_faults: num(7),
            user_s: num(11) as f64 / 100.0,
            sys_s: num(12) as f64 / 100.0,
        }
    }

    fn since(self, start: Self) -> String {
        format!(
            "cpu user {:.1} s, system {:.1} s, {:.2} M minor page faults",
            self.user_s - start.user_s,
            self.sys_s - start.sys_s,
            (self.minor_faults - start.minor_faults) as f64 / 1e6
        )
    }
}

/// The memory wall a batch-1 step is measured against: a streaming read of a buffer far
/// larger than the caches, on all threads. Machines here are noisy (the rate moved between
/// 22 and 48 GB/s from one run to the next), so it is measured again beside every timing.
struct Machine {
    buf: Vec<f32>,
}

impl Machine {
    fn new() -> Self {
        Self {
            buf: (0..(1usize << 28)).map(|i| (i % 7) as f32).collect(),
        }
    }

    /// Bytes per second now: the best of three parallel sums over the 1 GiB buffer.
    fn read_rate(&self) -> f64 {
        use rayon::prelude::*;
        let mut best = f64::INFINITY;
        let mut sink = 0f32;
        for _ in 0..3 {
            let t = Instant::now();
            sink += self
                .buf
                .par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0f32; 16];
                    for b in c.chunks_exact(16) {
                        for i in 0..16 {
                            acc[i] += b[i];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum::<f32>();
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink);
        (self.buf.len() * 4) as f64 / best
    }

    /// "= r× the weight read (… ms at … GB/s)" for a step of `step` seconds reading `bytes`.
    fn versus(&self, step: f64, bytes: f64) -> String {
        let rate = self.read_rate();
        let read = bytes / rate;
        format!(
            "{:.2}× the weight read ({:.1} ms at {:.1} GB/s)",
            step / read,
            read * 1e3,
            rate / 1e9
        )
    }
}

/// Median time of `x · w` as one plain candle matmul: `x` `(rows, k)`, `w` `(k, n)`, both
/// contiguous f32 — the reference the engine's products are compared with.
fn plain_matmul_s(rows: usize, k: usize, n: usize, reps: usize, dev: &Device) -> Result<f64> {
    let x = random(&(rows, k).into(), dev, 1)?;
    let w = random(&(k, n).into(), dev, 2)?;
    time(reps.max(3), || x.matmul(&w).map(drop))
}

/// The linear products of one released-size encoder pass (and the decoder's cross-attention
/// K/V) as plain matmuls: their FLOPs and the plain-matmul time of the same shapes.
fn encoder_plain(
    cfg: &XTransformerConfig,
    rows: usize,
    reps: usize,
    dev: &Device,
) -> Result<(f64, f64)> {
    let (d, inner) = (cfg.dim, cfg.enc_heads * cfg.dim_head);
    let per_layer = [(d, 3 * inner), (inner, d), (d, 4 * d), (4 * d, d)];
    let mut flops = 0.0;
    let mut secs = 0.0;
    for (k, n) in per_layer {
        flops += cfg.enc_depth as f64 * 2.0 * (rows * k * n) as f64;
        secs += cfg.enc_depth as f64 * plain_matmul_s(rows, k, n, reps, dev)?;
    }
    let kv = (d, 2 * cfg.dec_heads * cfg.dim_head);
    flops += cfg.dec_depth as f64 * 2.0 * (rows * kv.0 * kv.1) as f64;
    secs += cfg.dec_depth as f64 * plain_matmul_s(rows, kv.0, kv.1, reps, dev)?;
    Ok((flops, secs))
}

/// A decoding state that can be copied, so several windows of steps start from one set-up.
trait Fork: Sized {
    fn fork(&self) -> candle_core::Result<Self>;
}

impl Fork for crate::xtransformer::DecoderCache {
    fn fork(&self) -> candle_core::Result<Self> {
        self.try_clone()
    }
}

impl Fork for crate::gpt::GptCache {
    fn fork(&self) -> candle_core::Result<Self> {
        self.try_clone()
    }
}

/// Windows of 8 steps timed per set-up state: a single window swings by up to 2× on these
/// shared machines (one slow time slice of either core), the median of several does not.
const WINDOWS: usize = 5;

/// Median seconds per token over windows of 8 one-token steps, each window starting from a
/// copy of the state `setup` makes (untimed, once per repetition; [`WINDOWS`] windows each).
fn per_token<S: Fork>(
    reps: usize,
    mut setup: impl FnMut() -> candle_core::Result<S>,
    mut step: impl FnMut(&mut S) -> candle_core::Result<()>,
) -> Result<f64> {
    let mut per = Vec::with_capacity(reps * WINDOWS);
    for _ in 0..reps {
        let base = setup()?;
        for _ in 0..WINDOWS {
            let mut state = base.fork()?;
            let t = Instant::now();
            for _ in 0..8 {
                step(&mut state)?;
            }
            per.push(t.elapsed().as_secs_f64() / 8.0);
        }
    }
    Ok(median(per))
}

/// Weight formats timed beside f32.
#[derive(Debug, Clone, Copy)]
enum Variant {
    F16,
    Q8_0,
    Q4K,
}

impl Variant {
    const ALL: [Self; 3] = [Self::F16, Self::Q8_0, Self::Q4K];

    fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        }
    }

    /// The dtype the network is built in (quantized ones from f32).
    fn build_dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::Q8_0 | Self::Q4K => DType::F32,
        }
    }

    fn ggml(self) -> Option<GgmlDType> {
        match self {
            Self::F16 => None,
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4K => Some(GgmlDType::Q4K),
        }
    }

    fn line(self, b: usize, what: &str, step: f64, bytes: f64, machine: &Machine) -> String {
        format!(
            "  {}: batch {b}: {what}: {:.2} ms/token, weights {:.0} MB = {}",
            self.name(),
            step * 1e3,
            bytes / 1e6,
            machine.versus(step, bytes)
        )
    }
}

/// What the weight-format rows need of a network.
trait Quantizable: Sized {
    fn quantized(&self, dtype: GgmlDType) -> candle_core::Result<Self>;
    fn step_weight_bytes(&self) -> usize;
}

impl Quantizable for XTransformer {
    fn quantized(&self, dtype: GgmlDType) -> candle_core::Result<Self> {
        XTransformer::quantized(self, dtype)
    }
    fn step_weight_bytes(&self) -> usize {
        XTransformer::step_weight_bytes(self)
    }
}

impl Quantizable for Gpt {
    fn quantized(&self, dtype: GgmlDType) -> candle_core::Result<Self> {
        Gpt::quantized(self, dtype)
    }
    fn step_weight_bytes(&self) -> usize {
        Gpt::step_weight_bytes(self)
    }
}

/// One line per weight format and batch size (1, 4): `step(net, batch)` timed on a network
/// built by `build` with random weights in that format.
fn variant_rows<N: Quantizable>(
    what: &str,
    build: impl Fn(VarBuilder) -> candle_core::Result<N>,
    step: impl Fn(&N, usize) -> Result<f64>,
    machine: &Machine,
    out: &mut dyn FnMut(String),
) -> Result<()> {
    for variant in Variant::ALL {
        let (net, _) = random_net(variant.build_dtype(), &Device::Cpu, &build)?;
        let net = match variant.ggml() {
            Some(q) => net.quantized(q)?,
            None => net,
        };
        let bytes = net.step_weight_bytes() as f64;
        for b in [1usize, 4] {
            let s = step(&net, b)?;
            out(variant.line(b, what, s, bytes, machine));
        }
    }
    Ok(())
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
    let machine = Machine::new();
    out(format!(
        "memory: streaming read {:.1} GB/s (1 GiB, all threads; measured again beside every \
         step below)",
        machine.read_rate() / 1e9
    ));
    let (r, k, n) = (1032, 1152, 4608);
    let mm = plain_matmul_s(r, k, n, reps, &dev)?;
    out(format!(
        "plain candle matmul f32 {r}×{k} · {k}×{n}: {:.1} GFLOP/s",
        2.0 * (r * k * n) as f64 / mm / 1e9
    ));
    if parts.encdec {
        let cfg = released_encdec_config();
        let (net, params) = random_net(DType::F32, &dev, |vb| XTransformer::new(vb, &cfg, None))?;
        out(format!(
            "encoder–decoder stage (dim 1152, 32+6 layers, 16×64 heads, K 973): {:.1} M parameters",
            params as f64 / 1e6
        ));
        out(format!(
            "  a decoder step reads {:.0} MB of weights",
            net.step_weight_bytes() as f64 / 1e6
        ));
        // The same network in f32 and with its linear layers in `Q8_0`; the encoder passes of
        // both against the f32 products run as plain matmuls (measured once per batch size).
        let q8 = net.quantized(GgmlDType::Q8_0)?;
        let mut plain_by_batch = HashMap::new();
        for (tag, net) in [("", &net), ("q8_0: ", &q8)] {
            let step_bytes = net.step_weight_bytes() as f64;
            for b in [1usize, 4] {
                let src = tokens(b, 258, 973, &dev)?;
                let (flops, plain) = match plain_by_batch.get(&b) {
                    Some(&fp) => fp,
                    None => {
                        let fp = encoder_plain(&cfg, b * 258, reps, &dev)?;
                        plain_by_batch.insert(b, fp);
                        fp
                    }
                };
                let u = Usage::now();
                let enc = time(reps, || net.start(&src).map(drop))?;
                out(format!(
                    "  {tag}batch {b}: encoder pass + cross K/V over 258 tokens: {enc:.3} s \
                 ({:.0} GFLOP/s; its products as plain f32 matmuls {plain:.3} s: efficiency \
                 {:.0}%; {})",
                    flops / enc / 1e9,
                    100.0 * plain / enc,
                    Usage::now().since(u)
                ));
                for p in [1usize, 128, 248] {
                    let one = tokens(b, 1, 973, &dev)?;
                    let m = per_token(
                        reps,
                        || {
                            let mut c = net.start(&src)?;
                            if p > 1 {
                                net.step(&tokens(b, p - 1, 973, &dev)?, &mut c)?;
                            }
                            Ok(c)
                        },
                        |c| net.step(&one, c).map(drop),
                    )?;
                    out(format!(
                        "  {tag}batch {b}: decoder step with prefix {p}..{}: {:.2} ms/token = {}",
                        p + 7,
                        m * 1e3,
                        machine.versus(m, step_bytes)
                    ));
                }
                let u = Usage::now();
                let whole = once(|| {
                    let mut cache = net.start(&src)?;
                    let one = tokens(b, 1, 973, &dev)?;
                    for _ in 0..256 {
                        net.step(&one, &mut cache)?;
                    }
                    Ok(())
                })?;
                out(format!(
                    "  {tag}batch {b}: whole level (encoder + 256 cached steps): {whole:.2} s ({})",
                    Usage::now().since(u)
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
                    "  {tag}batch {b}: inpainting level, {n_masked} of 256 tokens masked (known runs \
                 prefilled): {part:.2} s = {:.0}% of the whole level",
                    100.0 * part / whole
                ));
            }
        }
    }
    if parts.encdec {
        // Other weight formats, a decoder step at prefix 128 (same shapes, new random weights).
        let cfg = released_encdec_config();
        variant_rows(
            "decoder step with prefix 128..135",
            |vb| XTransformer::new(vb, &cfg, None),
            |net, b| {
                let src = tokens(b, 258, 973, &dev)?;
                let one = tokens(b, 1, 973, &dev)?;
                per_token(
                    reps,
                    || {
                        let mut c = net.start(&src)?;
                        net.step(&tokens(b, 128, 973, &dev)?, &mut c)?;
                        Ok(c)
                    },
                    |c| net.step(&one, c).map(drop),
                )
            },
            &machine,
            out,
        )?;
    }
    if parts.gpt {
        let cfg = released_gpt_config();
        let (net, params) = random_net(DType::F32, &dev, |vb| Gpt::new(vb, &cfg))?;
        out(format!(
            "minGPT stage (36 layers × 1216, 16 heads): {:.1} M parameters",
            params as f64 / 1e6
        ));
        let step_bytes = net.step_weight_bytes() as f64;
        out(format!(
            "  a step reads {:.0} MB of weights",
            step_bytes / 1e6
        ));
        for b in [1usize, 4] {
            for past in [2usize, 130, 248] {
                let one = tokens(b, 1, 973, &dev)?;
                let m = per_token(
                    reps,
                    || {
                        let mut c = net.new_cache();
                        net.step(&tokens(b, past, 973, &dev)?, &mut c)?;
                        Ok(c)
                    },
                    |c| net.step(&one, c).map(drop),
                )?;
                out(format!(
                    "  batch {b}: cached step with {past}..{} tokens of past: {:.2} ms/token = {}",
                    past + 7,
                    m * 1e3,
                    machine.versus(m, step_bytes)
                ));
            }
            let u = Usage::now();
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
                "  batch {b}: whole level (prefix + 255 cached steps): {whole:.2} s ({})",
                Usage::now().since(u)
            ));
        }
    }
    if parts.gpt {
        let cfg = released_gpt_config();
        variant_rows(
            "cached step with 130..137 tokens of past",
            |vb| Gpt::new(vb, &cfg),
            |net, b| {
                let one = tokens(b, 1, 973, &dev)?;
                per_token(
                    reps,
                    || {
                        let mut c = net.new_cache();
                        net.step(&tokens(b, 130, 973, &dev)?, &mut c)?;
                        Ok(c)
                    },
                    |c| net.step(&one, c).map(drop),
                )
            },
            &machine,
            out,
        )?;
    }
    out(format!("peak resident memory so far: {}", peak_rss()));
    if parts.vqgan {
        let cfg = released_vqgan_config();
        let (vq, _) = random_net(DType::F32, &dev, |vb| Vqgan::new(vb, &cfg, 973))?;
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
