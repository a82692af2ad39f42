//! VQGAN training: the loss falls, resuming reproduces an uninterrupted run, the export loads in
//! the engine's `Vqgan`, and dead codes are restarted; the decoder fine-tune keeps the tokens,
//! lowers the error and resumes exactly.
//!
//! `trial` (ignored) is the measured run on emoji scenes: see its doc comment.
//!
//! One test file per module under test (each is its own test binary, and each binary links the
//! whole crate: splitting would cost CI disk and link time, not help a reader).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::vqgan::{Vqgan, VqganConfig};
use tessera_train::vqgan::{
    DecoderProgress, DecoderTuneConfig, VqganProgress, VqganTrainConfig, psnr, train_vqgan,
    tune_decoder,
};

/// A config small enough for debug builds: 16×16 images, f = 4, 32 codes.
fn tiny() -> VqganTrainConfig {
    VqganTrainConfig {
        resolution: 16,
        ch: 32,
        ch_mult: vec![1, 1, 1],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        z_channels: 32,
        n_embed: 32,
        embed_dim: 8,
        steps: 20,
        batch: 4,
        lr: 2e-3,
        lr_end: 2e-3,
        warmup: 1,
        disc_start: 10,
        disc_weight: 0.1,
        disc_ndf: 32,
        disc_layers: 1,
        restart_every: 0,
        restart_until: 0,
        ckpt_every: 0,
        log_every: 1,
        remap_batches: 2,
        ..VqganTrainConfig::default()
    }
}

/// Synthetic images: a coloured rectangle on a two-colour gradient, in [-1, 1], from `seed`.
fn shapes(seed: u64, b: usize, r: usize) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0f32; b * 3 * r * r];
    for img in v.chunks_mut(3 * r * r) {
        let c0: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
        let c1: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
        let fg: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1.0..1.0));
        let (x0, y0) = (rng.random_range(0..r / 2), rng.random_range(0..r / 2));
        let (x1, y1) = (x0 + r / 4 + rng.random_range(0..r / 4), y0 + r / 4);
        for ch in 0..3 {
            for y in 0..r {
                for x in 0..r {
                    let t = y as f32 / r as f32;
                    let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
                    img[ch * r * r + y * r + x] = if inside {
                        fg[ch]
                    } else {
                        c0[ch] * (1.0 - t) + c1[ch] * t
                    };
                }
            }
        }
    }
    Tensor::from_vec(v, (b, 3, r, r), &Device::Cpu).expect("shape matches")
}

/// Trains `cfg` on `shapes` in `dir`, recording progress; the data source fails at `fail_at`.
fn run(
    cfg: &VqganTrainConfig,
    dir: &Path,
    fail_at: Option<usize>,
) -> (
    tessera_engine::Result<tessera_train::vqgan::TrainedVqgan>,
    Vec<VqganProgress>,
) {
    let mut seen = Vec::new();
    let (b, r) = (cfg.batch, cfg.resolution);
    let mut data = |step: usize| {
        if Some(step) == fail_at {
            return Err(tessera_engine::Error::Input("interrupted".into()));
        }
        // Four batches repeat, so a few steps can fit them.
        Ok(shapes((step % 4) as u64, b, r))
    };
    let out = train_vqgan(cfg, &mut data, dir, &mut |p| seen.push(p.clone()));
    (out, seen)
}

fn exported(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("export is readable")
}

#[test]
fn loss_goes_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = tiny();
    // One fixed batch: 32 codes cannot describe random colours well, but can fit four images.
    let x = shapes(0, cfg.batch, cfg.resolution);
    let mut seen = Vec::new();
    train_vqgan(&cfg, &mut |_| Ok(x.clone()), dir.path(), &mut |p| {
        seen.push(p.clone())
    })
    .expect("training runs");
    assert_eq!(seen.len(), cfg.steps);
    let mean = |s: &[VqganProgress]| s.iter().map(|p| p.rec_loss).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&seen[..4]), mean(&seen[cfg.steps - 4..]));
    assert!(
        last < 0.6 * first,
        "reconstruction loss {first} → {last} did not fall"
    );
    // The adversarial loss is on from disc_start.
    assert_eq!(seen[cfg.disc_start - 1].d_loss, 0.0);
    assert!(seen[cfg.disc_start].d_loss > 0.0 && seen[cfg.disc_start].d_weight > 0.0);
    assert!(
        seen.iter()
            .all(|p| p.rec_loss.is_finite() && p.q_loss.is_finite())
    );
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).expect("metrics log");
    assert_eq!(lines.lines().count(), cfg.steps);
}

#[test]
fn resume_matches_uninterrupted_run() {
    let cfg = VqganTrainConfig {
        steps: 6,
        ckpt_every: 2,
        disc_start: 2,
        restart_every: 2,
        restart_until: 6,
        ..tiny()
    };
    let whole = tempfile::tempdir().expect("temp dir");
    let (out, _) = run(&cfg, whole.path(), None);
    let a = out.expect("uninterrupted run");
    a.export(&whole.path().join("a.safetensors"))
        .expect("export");

    let split = tempfile::tempdir().expect("temp dir");
    let (out, seen) = run(&cfg, split.path(), Some(5));
    assert!(out.is_err(), "the data source failed at step 5");
    assert_eq!(seen.len(), 5);
    let (out, seen) = run(&cfg, split.path(), None);
    assert_eq!(seen.first().map(|p| p.step), Some(5), "resumed from step 4");
    let b = out.expect("resumed run");
    b.export(&split.path().join("b.safetensors"))
        .expect("export");

    let (ta, tb) = (
        exported(&whole.path().join("a.safetensors")),
        exported(&split.path().join("b.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    for (k, va) in &ta {
        let vb = &tb[k];
        let d = (va.to_dtype(DType::F64).unwrap() - vb.to_dtype(DType::F64).unwrap())
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f64>())
            .expect("same shapes");
        assert!(d == 0.0, "{k} differs by {d} after resuming");
    }
    // Another configuration must not silently continue this run.
    let other = VqganTrainConfig { lr: 1e-3, ..cfg };
    let (out, _) = run(&other, split.path(), None);
    assert!(matches!(out, Err(tessera_engine::Error::Config { .. })));
}

#[test]
fn export_loads_in_the_engine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = VqganTrainConfig {
        steps: 8,
        disc_start: 100,
        ..tiny()
    };
    let (out, _) = run(&cfg, dir.path(), None);
    let trained = out.expect("training runs");
    let path = dir.path().join("vqgan.safetensors");
    let (vcfg, n_used) = trained.export(&path).expect("export");
    assert_eq!(&vcfg, trained.config());
    assert_eq!(n_used, trained.used().len());
    assert!(n_used > 0 && n_used <= cfg.n_embed);
    assert!(trained.used().windows(2).all(|w| w[0] < w[1]));

    let t = exported(&path);
    assert_eq!(t["quantize.used"].dtype(), DType::I64);
    assert_eq!(
        t["quantize.embedding.weight"].dims(),
        [cfg.n_embed, cfg.embed_dim]
    );
    let vq = Vqgan::new(
        VarBuilder::from_tensors(t, DType::F32, &Device::Cpu),
        &vcfg,
        n_used,
    )
    .expect("the engine loads the export");
    assert_eq!(vq.n_used(), n_used);

    // Images from the remap sample use only codes in the table, so the engine's round trip
    // must equal the training network's reconstruction.
    let x = shapes(0, cfg.batch, cfg.resolution);
    let tokens = vq.encode_tokens(&x).expect("encode");
    let side = cfg.resolution / 4;
    assert_eq!(tokens.dims(), [cfg.batch, side * side]);
    let max = tokens.max_all().unwrap().to_scalar::<u32>().unwrap();
    assert!((max as usize) < n_used);
    let engine = vq.decode_tokens(&tokens).expect("decode");
    let ours = trained.reconstruct(&x).expect("reconstruct");
    let gap = psnr(&engine, &ours).expect("psnr");
    assert!(gap > 60.0, "engine and trainer disagree: PSNR {gap} dB");
    let from_helper = trained
        .to_vqgan()
        .expect("to_vqgan")
        .encode_tokens(&x)
        .unwrap();
    assert_eq!(
        from_helper.to_vec2::<u32>().unwrap(),
        tokens.to_vec2::<u32>().unwrap()
    );
}

#[test]
fn dead_codes_are_restarted() {
    let base = VqganTrainConfig {
        steps: 2,
        n_embed: 64,
        disc_start: 100,
        ..tiny()
    };
    let dir_a = tempfile::tempdir().expect("temp dir");
    let (out, _) = run(&base, dir_a.path(), None);
    out.expect("run without restarts")
        .export(&dir_a.path().join("v.safetensors"))
        .expect("export");
    let with = VqganTrainConfig {
        restart_every: 2,
        restart_until: 2,
        ..base
    };
    let dir_b = tempfile::tempdir().expect("temp dir");
    let (out, seen) = run(&with, dir_b.path(), None);
    out.expect("run with restarts")
        .export(&dir_b.path().join("v.safetensors"))
        .expect("export");
    let restarted = seen[1].restarted;
    assert!(
        restarted > 0,
        "a 64-entry codebook has dead codes after 2 steps"
    );
    assert_eq!(seen[1].used_codes + restarted, 64);

    let key = "quantize.embedding.weight";
    let a = exported(&dir_a.path().join("v.safetensors"))[key]
        .to_vec2::<f32>()
        .unwrap();
    let b = exported(&dir_b.path().join("v.safetensors"))[key]
        .to_vec2::<f32>()
        .unwrap();
    let changed = a.iter().zip(&b).filter(|(ra, rb)| ra != rb).count();
    assert_eq!(changed, restarted, "exactly the dead rows change");
}

/// Trains `tiny` for a few steps (no adversarial loss) and exports it to `dir/start.safetensors`.
fn start_vqgan(dir: &Path) -> VqganTrainConfig {
    let cfg = VqganTrainConfig {
        steps: 8,
        disc_start: 100,
        ..tiny()
    };
    let (out, _) = run(&cfg, dir, None);
    out.expect("training runs")
        .export(&dir.join("start.safetensors"))
        .expect("export");
    cfg
}

/// Fine-tunes the decoder of `dir/start.safetensors` into `dir/{name}`; data fails at `fail_at`.
fn tune(
    vq: &VqganTrainConfig,
    cfg: &DecoderTuneConfig,
    dir: &Path,
    name: &str,
    fail_at: Option<usize>,
) -> (tessera_engine::Result<()>, Vec<DecoderProgress>) {
    let mut seen = Vec::new();
    let mut data = |step: usize| {
        if Some(step) == fail_at {
            return Err(tessera_engine::Error::Input("interrupted".into()));
        }
        Ok(shapes((step % 2) as u64, cfg.batch, vq.resolution))
    };
    let out = tune_decoder(
        vq,
        cfg,
        &dir.join("start.safetensors"),
        &mut data,
        &dir.join(format!("{name}.run")),
        &dir.join(name),
        &mut |p| seen.push(p.clone()),
    );
    (out, seen)
}

fn decoder_cfg(steps: usize) -> DecoderTuneConfig {
    DecoderTuneConfig {
        steps,
        batch: 4,
        crop: 0,
        lr: 2e-3,
        lr_end: 2e-3,
        warmup: 1,
        ckpt_every: 2,
        log_every: 1,
        num_res_blocks: None,
        attn_resolutions: None,
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F64)?.to_vec1::<f64>())
        .expect("a numeric tensor")
}

fn vqgan_of(path: &Path, cfg: &VqganTrainConfig) -> Vqgan {
    vqgan_with(path, &cfg.vqgan_config())
}

fn vqgan_with(path: &Path, cfg: &VqganConfig) -> Vqgan {
    let t = exported(path);
    let n = t["quantize.used"].dim(0).unwrap();
    Vqgan::new(
        VarBuilder::from_tensors(t, DType::F32, &Device::Cpu),
        cfg,
        n,
    )
    .expect("the engine loads it")
}

#[test]
fn decoder_tune_keeps_the_tokens_and_lowers_the_error() {
    tune_keeps_the_tokens_and_lowers_the_error(0);
}

/// On crops (3×3 of the 4×4 codes: 56% of the pixels per step) the decoder still learns, and
/// what it learns holds for whole images.
#[test]
fn decoder_tune_on_crops_keeps_the_tokens_and_lowers_the_error() {
    tune_keeps_the_tokens_and_lowers_the_error(12);
}

fn tune_keeps_the_tokens_and_lowers_the_error(crop: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let vq = start_vqgan(dir.path());
    let cfg = DecoderTuneConfig {
        crop,
        ..decoder_cfg(16)
    };
    let (out, seen) = tune(&vq, &cfg, dir.path(), "tuned.safetensors", None);
    out.expect("fine-tune runs");
    assert_eq!(seen.len(), cfg.steps);
    let lines = std::fs::read_to_string(dir.path().join("tuned.safetensors.run/metrics.jsonl"))
        .expect("metrics log");
    assert_eq!(lines.lines().count(), cfg.steps);

    let (a, b) = (
        exported(&dir.path().join("start.safetensors")),
        exported(&dir.path().join("tuned.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    let mut decoder_changed = 0;
    for (k, va) in &a {
        let same = values(va) == values(&b[k]);
        if k.starts_with("decoder.") || k.starts_with("post_quant_conv.") {
            decoder_changed += usize::from(!same);
        } else {
            assert!(same, "{k} is not the decoder's but changed");
        }
    }
    assert!(decoder_changed > 0, "the decoder did not change");

    // Same tokens, better reconstructions of the images it was tuned on.
    let (va, vb) = (
        vqgan_of(&dir.path().join("start.safetensors"), &vq),
        vqgan_of(&dir.path().join("tuned.safetensors"), &vq),
    );
    let x = Tensor::cat(
        &[shapes(0, 4, vq.resolution), shapes(1, 4, vq.resolution)],
        0,
    )
    .unwrap();
    let (ta, tb) = (va.encode_tokens(&x).unwrap(), vb.encode_tokens(&x).unwrap());
    assert_eq!(ta.to_vec2::<u32>().unwrap(), tb.to_vec2::<u32>().unwrap());
    let before = psnr(&va.decode_tokens(&ta).unwrap(), &x).unwrap();
    let after = psnr(&vb.decode_tokens(&tb).unwrap(), &x).unwrap();
    assert!(
        after > before + 1.0,
        "PSNR {before:.2} → {after:.2} dB: the fine-tune did not help"
    );
}

#[test]
fn decoder_tune_resumes_exactly_and_checks_its_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vq = start_vqgan(dir.path());
    let cfg = decoder_cfg(4);
    tune(&vq, &cfg, dir.path(), "whole.safetensors", None)
        .0
        .expect("uninterrupted fine-tune");
    let (out, seen) = tune(&vq, &cfg, dir.path(), "split.safetensors", Some(3));
    assert!(out.is_err() && seen.len() == 3);
    let (out, seen) = tune(&vq, &cfg, dir.path(), "split.safetensors", None);
    out.expect("resumed fine-tune");
    assert_eq!(seen.first().map(|p| p.step), Some(3), "resumed from step 2");
    let (a, b) = (
        exported(&dir.path().join("whole.safetensors")),
        exported(&dir.path().join("split.safetensors")),
    );
    for (k, va) in &a {
        assert_eq!(values(va), values(&b[k]), "{k} differs after resuming");
    }
    // Another configuration must not silently continue the run.
    let other = DecoderTuneConfig {
        lr: 1e-3,
        ..cfg.clone()
    };
    let (out, _) = tune(&vq, &other, dir.path(), "split.safetensors", None);
    assert!(matches!(out, Err(tessera_engine::Error::Config { .. })));

    // A start file without a decoder weight names the key.
    let mut t = exported(&dir.path().join("start.safetensors"));
    t.remove("decoder.conv_out.weight").expect("the key exists");
    candle_core::safetensors::save(&t, dir.path().join("start.safetensors")).unwrap();
    let (out, _) = tune(&vq, &cfg, dir.path(), "bad.safetensors", None);
    match out {
        Err(tessera_engine::Error::MissingKey { key, .. }) => {
            assert_eq!(key, "decoder.conv_out.weight")
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
}

#[test]
fn decoder_tune_config_survives_json() {
    // A resumed run compares its configuration with the saved one, so every setting must come
    // back as it went out: `None` included, although the default deepens the decoder.
    let deep = DecoderTuneConfig {
        num_res_blocks: Some(2),
        attn_resolutions: Some(vec![4]),
        ..decoder_cfg(4)
    };
    for cfg in [decoder_cfg(4), DecoderTuneConfig::default(), deep] {
        let json = serde_json::to_string(&cfg).unwrap();
        let back: DecoderTuneConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg, "{json}");
    }
    assert_eq!(DecoderTuneConfig::default().num_res_blocks, Some(1));
    // A hand-written section without the keys: a decoder as deep as the encoder, the other
    // settings from the default.
    let partial: DecoderTuneConfig = serde_json::from_str(r#"{"steps": 10}"#).unwrap();
    assert_eq!(
        (partial.num_res_blocks, partial.attn_resolutions),
        (None, None)
    );
    assert_eq!(partial.batch, DecoderTuneConfig::default().batch);
}

#[test]
fn deeper_decoder_starts_as_the_trained_one_then_improves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vq = start_vqgan(dir.path());
    // One more block per level and attention at the 4×4 latent resolution.
    let deep = |steps, lr| DecoderTuneConfig {
        lr,
        lr_end: lr,
        num_res_blocks: Some(vq.num_res_blocks + 1),
        attn_resolutions: Some(vec![4]),
        ..decoder_cfg(steps)
    };
    let base = vq.vqgan_config();
    let tuned_cfg = deep(1, 0.0).tuned_config(&base);
    let dec = tuned_cfg
        .decoder_ddconfig
        .clone()
        .expect("a decoder of its own");
    assert_eq!(
        (dec.num_res_blocks, dec.attn_resolutions.as_slice()),
        (2, &[4][..])
    );
    assert_eq!(
        tuned_cfg.ddconfig, base.ddconfig,
        "the encoder keeps its architecture"
    );
    assert_eq!(
        decoder_cfg(1).tuned_config(&base),
        base,
        "no override without a change"
    );

    // With a zero learning rate the export is the warm start: the added blocks are identities.
    tune(&vq, &deep(1, 0.0), dir.path(), "zero.safetensors", None)
        .0
        .expect("fine-tune runs");
    let t = exported(&dir.path().join("zero.safetensors"));
    for key in [
        "decoder.up.0.block.2.conv1.weight",
        "decoder.up.2.attn.0.q.weight",
    ] {
        assert!(t.contains_key(key), "{key} missing from the deeper decoder");
    }
    let start = vqgan_of(&dir.path().join("start.safetensors"), &vq);
    let zero = vqgan_with(&dir.path().join("zero.safetensors"), &tuned_cfg);
    let x = Tensor::cat(
        &[shapes(0, 4, vq.resolution), shapes(1, 4, vq.resolution)],
        0,
    )
    .unwrap();
    let tokens = start.encode_tokens(&x).unwrap();
    let before = start.decode_tokens(&tokens).unwrap();
    assert_eq!(
        values(&before),
        values(&zero.decode_tokens(&tokens).unwrap()),
        "the deeper decoder does not start from the trained one's output"
    );

    // Trained, it keeps the tokens and reconstructs better.
    tune(&vq, &deep(16, 2e-3), dir.path(), "deep.safetensors", None)
        .0
        .expect("fine-tune runs");
    let tuned = vqgan_with(&dir.path().join("deep.safetensors"), &tuned_cfg);
    let again = tuned.encode_tokens(&x).unwrap();
    assert_eq!(
        tokens.to_vec2::<u32>().unwrap(),
        again.to_vec2::<u32>().unwrap()
    );
    let (p0, p1) = (
        psnr(&before, &x).unwrap(),
        psnr(&tuned.decode_tokens(&again).unwrap(), &x).unwrap(),
    );
    assert!(p1 > p0 + 1.0, "PSNR {p0:.2} → {p1:.2} dB");

    // A folder holding the old decoder's run is not continued with the deeper one.
    let (out, _) = tune(&vq, &deep(4, 2e-3), dir.path(), "zero.safetensors", None);
    assert!(matches!(out, Err(tessera_engine::Error::Config { .. })));
}

/// Emoji scenes for the measured trial: 1–3 Fluent Emoji sprites on a random two-colour
/// gradient, 64×64. Every tenth emoji (sorted by file name) is held out for evaluation.
struct Scenes {
    train: Vec<image::RgbaImage>,
    held_out: Vec<image::RgbaImage>,
}

impl Scenes {
    fn load(dir: &Path, limit: usize) -> Scenes {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("emoji folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "webp"))
            .collect();
        files.sort();
        files.truncate(limit);
        let (mut train, mut held_out) = (Vec::new(), Vec::new());
        for (i, f) in files.iter().enumerate() {
            let Ok(img) = image::open(f) else { continue };
            let small = image::imageops::resize(
                &img.to_rgba8(),
                56,
                56,
                image::imageops::FilterType::Triangle,
            );
            if i % 10 == 0 {
                held_out.push(small);
            } else {
                train.push(small);
            }
        }
        Scenes { train, held_out }
    }

    /// `b` scenes of side `r` from `seed`, as (B, 3, r, r) in [-1, 1].
    fn batch(&self, held_out: bool, seed: u64, b: usize, r: usize) -> Tensor {
        let pool = if held_out {
            &self.held_out
        } else {
            &self.train
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(b * 3 * r * r);
        for _ in 0..b {
            let c0: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
            let c1: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
            let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            let (dx, dy) = (angle.cos(), angle.sin());
            let mut canvas = image::RgbImage::from_fn(r as u32, r as u32, |x, y| {
                let t = ((x as f32 * dx + y as f32 * dy) / r as f32 * 0.7 + 0.5).clamp(0.0, 1.0);
                image::Rgb(std::array::from_fn(|c| {
                    (c0[c] * (1.0 - t) + c1[c] * t) as u8
                }))
            });
            for _ in 0..rng.random_range(1..=3) {
                let sprite = &pool[rng.random_range(0..pool.len())];
                let s = rng.random_range(r as u32 * 3 / 8..=r as u32 * 3 / 4);
                let sprite =
                    image::imageops::resize(sprite, s, s, image::imageops::FilterType::Triangle);
                let x0 = rng.random_range(0..=r as u32 - s / 2) as i64 - s as i64 / 4;
                let y0 = rng.random_range(0..=r as u32 - s / 2) as i64 - s as i64 / 4;
                for (sx, sy, p) in sprite.enumerate_pixels() {
                    let (x, y) = (x0 + sx as i64, y0 + sy as i64);
                    if x < 0 || y < 0 || x >= r as i64 || y >= r as i64 {
                        continue;
                    }
                    let a = p[3] as f32 / 255.0;
                    let q = canvas.get_pixel_mut(x as u32, y as u32);
                    for c in 0..3 {
                        q[c] = (q[c] as f32 * (1.0 - a) + p[c] as f32 * a).round() as u8;
                    }
                }
            }
            for c in 0..3 {
                out.extend(canvas.pixels().map(|p| p[c] as f32 / 127.5 - 1.0));
            }
        }
        Tensor::from_vec(out, (b, 3, r, r), &Device::Cpu).expect("shape matches")
    }
}

/// Saves (B, 3, r, r) images in [-1, 1] side by side as a PNG.
fn save_strip(x: &Tensor, path: &Path) {
    let (b, _, r, _) = x.dims4().expect("4-d");
    let v = x
        .clamp(-1f32, 1f32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let img = image::RgbImage::from_fn((b * r) as u32, r as u32, |x, y| {
        let (i, xx) = (x as usize / r, x as usize % r);
        image::Rgb(std::array::from_fn(|c| {
            ((v[((i * 3 + c) * r + y as usize) * r + xx] + 1.0) * 127.5).round() as u8
        }))
    });
    img.save(path).expect("write png");
}

/// The measured run (release build): trains on emoji scenes and reports steps/s and held-out
/// PSNR through the engine's `Vqgan`.
///
/// `TESSERA_VQGAN_TRIAL=<dir> [TESSERA_VQGAN_CONFIG=<json>] [TESSERA_EMOJI=<assets dir>]
/// cargo test --release -p tessera-engine --test train_vqgan trial -- --ignored --nocapture`.
/// The run resumes when `<dir>` holds a checkpoint of the same config.
#[test]
#[ignore = "minutes to hours; needs the Fluent Emoji 3D assets"]
fn trial() {
    let Ok(dir) = std::env::var("TESSERA_VQGAN_TRIAL") else {
        eprintln!("set TESSERA_VQGAN_TRIAL to a run folder");
        return;
    };
    let dir = Path::new(&dir);
    let cfg: VqganTrainConfig = match std::env::var("TESSERA_VQGAN_CONFIG") {
        Ok(p) => serde_json::from_str(&std::fs::read_to_string(p).expect("config")).expect("json"),
        Err(_) => VqganTrainConfig::default(),
    };
    let assets = std::env::var("TESSERA_EMOJI").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/emoji/fluent-emoji-3d/package/assets"
        )
        .into()
    });
    let t0 = std::time::Instant::now();
    let scenes = Scenes::load(Path::new(&assets), usize::MAX);
    eprintln!(
        "{} train / {} held-out emoji loaded in {:.1}s",
        scenes.train.len(),
        scenes.held_out.len(),
        t0.elapsed().as_secs_f64()
    );
    let (b, r) = (cfg.batch, cfg.resolution);
    let mut data = |step: usize| Ok(scenes.batch(false, step as u64, b, r));
    let t0 = std::time::Instant::now();
    let mut first = None;
    let trained = train_vqgan(&cfg, &mut data, dir, &mut |p| {
        let first = *first.get_or_insert(p.step);
        if p.step % 50 == 0 || p.step == p.steps {
            let rate = (p.step - first + 1) as f64 / t0.elapsed().as_secs_f64();
            eprintln!(
                "step {}/{} rec {:.4} q {:.4} g {:.3} d {:.3} w {:.3} psnr {:.2} ppl {:.0} used {} restarted {} | {:.2} steps/s eta {:.0}s",
                p.step, p.steps, p.rec_loss, p.q_loss, p.g_loss, p.d_loss, p.d_weight, p.psnr,
                p.perplexity, p.used_codes, p.restarted, rate, p.eta_s
            );
        }
    })
    .expect("training");
    let path = dir.join("vqgan.safetensors");
    let (vcfg, n_used) = trained.export(&path).expect("export");
    let vq = Vqgan::new(
        VarBuilder::from_tensors(exported(&path), DType::F32, &Device::Cpu),
        &vcfg,
        n_used,
    )
    .expect("engine loads the export");
    let mut total = 0.0;
    let n = 8;
    for i in 0..n {
        let x = scenes.batch(true, 1_000_000 + i, 8, r);
        let y = vq.decode_tokens(&vq.encode_tokens(&x).unwrap()).unwrap();
        if i == 0 {
            save_strip(&x, &dir.join("held_out.png"));
            save_strip(&y, &dir.join("held_out_rec.png"));
        }
        total += psnr(&x, &y).unwrap();
    }
    eprintln!(
        "held-out PSNR {:.2} dB over {} scenes, {n_used} codes used",
        total / n as f64,
        n * 8
    );
}
