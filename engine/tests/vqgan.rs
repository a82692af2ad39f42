//! VQGAN first stage: structural tests with random weights, and agreement with the official
//! implementation on the golden checkpoint.
//!
//! One test file per module under test (each is its own test binary, and each binary links the
//! whole crate: splitting would cost CI disk and link time, not help a reader).

use std::collections::HashMap;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tessera_engine::vqgan::{DdConfig, Vqgan, VqganConfig};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden");

/// The golden models' first stage: ch 32, ch_mult [1,2,2], one res block, attention at 8, 32 px.
fn golden_config() -> VqganConfig {
    VqganConfig {
        embed_dim: 16,
        n_embed: 64,
        ddconfig: DdConfig {
            double_z: false,
            z_channels: 16,
            resolution: 32,
            in_channels: 3,
            out_ch: 3,
            ch: 32,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            norm_groups: 32,
        },
        decoder_ddconfig: None,
    }
}

/// Deterministic uniform numbers in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Tensor {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|_| self.next() * scale + offset).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// Random weights (fan-in scaled), with `quantize.used` = every `stride`-th code.
fn random_weights(cfg: &VqganConfig, stride: usize) -> (VarMap, usize) {
    let n_used = cfg.n_embed.div_ceil(stride);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Vqgan::new(vb, cfg, n_used).unwrap();
    let mut rng = Lcg(7);
    let mut data = varmap.data().lock().unwrap();
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    for name in names {
        let var = &data[&name];
        let dims = var.dims().to_vec();
        let value = if name == "quantize.used" {
            let used: Vec<i64> = (0..cfg.n_embed as i64).step_by(stride).collect();
            Tensor::new(used, &Device::Cpu).unwrap()
        } else if name.contains("norm") && name.ends_with("weight") {
            rng.tensor(&dims, 0.2, 1.0)
        } else if dims.len() == 4 {
            let fan_in = dims[1] * dims[2] * dims[3];
            rng.tensor(&dims, (3.0 / fan_in as f32).sqrt(), 0.0)
        } else {
            rng.tensor(&dims, 0.1, 0.0)
        };
        data.insert(name, candle_core::Var::from_tensor(&value).unwrap());
    }
    drop(data);
    (varmap, n_used)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Brute-force squared distances of latent vector (b, i) of h (B, E, r, r) to every code.
fn brute_distances(h: &Tensor, codebook: &[Vec<f32>], b: usize, i: usize) -> Vec<f32> {
    let (_, e, r, _) = h.dims4().unwrap();
    let z: Vec<f32> = h
        .i(b)
        .unwrap()
        .reshape((e, r * r))
        .unwrap()
        .i((.., i))
        .unwrap()
        .to_vec1()
        .unwrap();
    codebook
        .iter()
        .map(|c| z.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum())
        .collect()
}

#[test]
fn config_parses_official_yaml() {
    let yaml = std::fs::read_to_string(format!(
        "{GOLDEN}/uncond_geometric/configs/uncond_geometric-scale1.yaml"
    ))
    .unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let params = &doc["model"]["params"]["first_stage_config"]["params"];
    let cfg: VqganConfig = serde_yaml::from_value(params.clone()).unwrap();
    assert_eq!(cfg, golden_config());
    assert_eq!(cfg.downsample_factor(), 4);
    assert_eq!(cfg.latent_size(), 8);
    // tanh_out and other unknown keys are ignored, defaults fill double_z and dropout.
    let mut released: serde_yaml::Value = serde_yaml::from_str(
        "embed_dim: 256\nn_embed: 1024\nremap: x.npy\nddconfig: {z_channels: 256, resolution: 256, \
         in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1,1,2,2,4], num_res_blocks: 2, \
         attn_resolutions: [16], tanh_out: true}",
    )
    .unwrap();
    released["sane_index_shape"] = serde_yaml::Value::Bool(true);
    let cfg: VqganConfig = serde_yaml::from_value(released).unwrap();
    assert_eq!((cfg.downsample_factor(), cfg.latent_size()), (16, 16));
    assert!(!cfg.ddconfig.double_z);
}

#[test]
fn decoder_ddconfig_is_tessera_only_and_checked() {
    let cfg = golden_config();
    let json = serde_json::to_value(&cfg).unwrap();
    assert!(
        json.get("decoder_ddconfig").is_none(),
        "official layout kept"
    );

    // A deeper decoder with attention at 16 as well: its own blocks, the encoder unchanged.
    let mut deep = cfg.clone();
    let mut dec = cfg.ddconfig.clone();
    dec.num_res_blocks = 2;
    dec.attn_resolutions = vec![8, 16];
    deep.decoder_ddconfig = Some(dec.clone());
    let back: VqganConfig = serde_json::from_value(serde_json::to_value(&deep).unwrap()).unwrap();
    assert_eq!(back, deep);
    let (varmap, n_used) = random_weights(&deep, 2);
    let keys: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    let has = |k: &str| keys.iter().any(|x| x == k);
    assert!(has("decoder.up.0.block.2.conv1.weight") && has("decoder.up.1.attn.2.q.weight"));
    assert!(!has("encoder.down.0.block.1.conv1.weight") && !has("encoder.down.1.attn.0.q.weight"));
    let vqgan = Vqgan::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &deep,
        n_used,
    )
    .unwrap();
    let tokens = Tensor::new(&[[0u32; 64], [3u32; 64]], &Device::Cpu).unwrap();
    assert_eq!(
        vqgan.decode_tokens(&tokens).unwrap().dims(),
        &[2, 3, 32, 32]
    );

    // It must keep the encoder's levels and resolution, and be a valid ddconfig itself.
    for bad in [
        DdConfig {
            ch_mult: vec![1, 2],
            ..dec.clone()
        },
        DdConfig {
            resolution: 64,
            ..dec.clone()
        },
        DdConfig {
            norm_groups: 5,
            ..dec.clone()
        },
    ] {
        let mut c = cfg.clone();
        c.decoder_ddconfig = Some(bad);
        let err = Vqgan::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &c, 1)
            .err()
            .expect("an invalid decoder_ddconfig is refused")
            .to_string();
        assert!(err.contains("decoder_ddconfig"), "{err}");
    }
}

#[test]
fn random_weights_structure() {
    let cfg = golden_config();
    let (varmap, n_used) = random_weights(&cfg, 2);
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Vqgan::new(vb, &cfg, n_used).unwrap();
    assert_eq!(model.n_used(), 32);
    assert_eq!(model.config(), &cfg);

    let x = Lcg(3).tensor(&[2, 3, 32, 32], 1.0, 0.0);
    let h = model.encode_prequant(&x).unwrap();
    assert_eq!(h.dims(), &[2, 16, 8, 8]);

    // Nearest full code: the true argmin of the squared distance.
    let emb = varmap.data().lock().unwrap()["quantize.embedding.weight"]
        .as_tensor()
        .clone();
    let codebook: Vec<Vec<f32>> = emb.to_vec2().unwrap();
    let full = model.nearest_codes(&h).unwrap();
    assert_eq!((full.dims(), full.dtype()), (&[2, 64][..], DType::U32));
    let full_v: Vec<Vec<u32>> = full.to_vec2().unwrap();
    for b in 0..2 {
        for i in 0..64 {
            let d = brute_distances(&h, &codebook, b, i);
            let min = d.iter().cloned().fold(f32::INFINITY, f32::min);
            assert!(d[full_v[b][i] as usize] <= min + 1e-4, "({b},{i})");
        }
    }

    // Remap of every code: even codes are in the table at code / 2; odd ones go to the used
    // entry nearest to the latent vector.
    let all: Vec<u32> = (0..64).chain(0..64).collect();
    let all = Tensor::from_vec(all, (2, 64), &Device::Cpu).unwrap();
    let (remapped, in_used) = model.remap(&h, &all).unwrap();
    assert_eq!(in_used.dtype(), DType::U8);
    let remapped: Vec<Vec<u32>> = remapped.to_vec2().unwrap();
    let in_used: Vec<Vec<u8>> = in_used.to_vec2().unwrap();
    for b in 0..2 {
        for i in 0..64 {
            if i % 2 == 0 {
                assert_eq!((remapped[b][i], in_used[b][i]), (i as u32 / 2, 1));
            } else {
                assert_eq!(in_used[b][i], 0);
                let d = brute_distances(&h, &codebook, b, i);
                let used_d: Vec<f32> = d.iter().step_by(2).cloned().collect();
                let min = used_d.iter().cloned().fold(f32::INFINITY, f32::min);
                assert!(used_d[remapped[b][i] as usize] <= min + 1e-4, "({b},{i})");
            }
        }
    }
    // i64 codes work too; out-of-range codes are an error, not a panic.
    let (r64, _) = model.remap(&h, &all.to_dtype(DType::I64).unwrap()).unwrap();
    assert_eq!(r64.to_vec2::<u32>().unwrap(), remapped);
    let bad = Tensor::new(&[[64u32; 64], [0; 64]], &Device::Cpu).unwrap();
    assert!(model.remap(&h, &bad).is_err());

    // encode_tokens = remap(nearest_codes).
    let tokens = model.encode_tokens(&x).unwrap();
    let (expect, _) = model.remap(&h, &full).unwrap();
    assert_eq!(
        tokens.to_vec2::<u32>().unwrap(),
        expect.to_vec2::<u32>().unwrap()
    );

    // embed_tokens looks up used[token]; decode_tokens returns images.
    let z = model.embed_tokens(&tokens).unwrap();
    assert_eq!(z.dims(), &[2, 16, 8, 8]);
    let t: Vec<Vec<u32>> = tokens.to_vec2().unwrap();
    let zv = z.i((1, .., 2, 3)).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(zv, codebook[2 * t[1][2 * 8 + 3] as usize]);
    let y = model
        .decode_tokens(&tokens.to_dtype(DType::I64).unwrap())
        .unwrap();
    assert_eq!(y.dims(), &[2, 3, 32, 32]);
    assert!(
        model
            .embed_tokens(&Tensor::new(&[[32u32; 64]], &Device::Cpu).unwrap())
            .is_err()
    );
    assert!(
        model
            .embed_tokens(&Tensor::new(&[[0u32; 63]], &Device::Cpu).unwrap())
            .is_err()
    );
}

/// The float32 CPU kernels (Winograd convolutions, fused GroupNorm) against candle's generic
/// ops in float64, on a non-square image with odd-sized feature maps.
#[test]
fn fast_kernels_match_candle_ops() {
    let cfg = golden_config();
    let (varmap, n_used) = random_weights(&cfg, 3);
    let fast = Vqgan::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let mut tensors64 = tensors.clone();
    for (k, v) in tensors64.iter_mut() {
        if k != "quantize.used" {
            *v = v.to_dtype(DType::F64).unwrap();
        }
    }
    let slow = Vqgan::new(
        VarBuilder::from_tensors(tensors64, DType::F64, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();
    let x = Lcg(11).tensor(&[1, 3, 24, 28], 1.0, 0.0);
    let h_fast = fast.encode_prequant(&x).unwrap();
    let h_slow = slow.encode_prequant(&x).unwrap();
    assert_eq!(h_fast.dims(), &[1, 16, 6, 7]);
    let err = max_abs_diff(&h_fast, &h_slow);
    eprintln!("encoder: max abs err {err:e}");
    assert!(err < 1e-4, "encoder: {err}");

    let tokens: Vec<u32> = (0..128).map(|i| (i * 7) % n_used as u32).collect();
    let tokens = Tensor::from_vec(tokens, (2, 64), &Device::Cpu).unwrap();
    let y_fast = fast.decode_tokens(&tokens).unwrap();
    let y_slow = slow.decode_tokens(&tokens).unwrap();
    let err = max_abs_diff(&y_fast, &y_slow);
    eprintln!("decoder: max abs err {err:e}");
    assert!(err < 1e-4, "decoder: {err}");
    let scale = y_slow
        .abs()
        .unwrap()
        .max_keepdim(D::Minus1)
        .unwrap()
        .max(0)
        .unwrap();
    assert!(
        scale
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            > 0.1
    );
}

#[test]
fn golden_uncond_geometric() {
    let n_missing = check_golden("uncond_geometric", 40);
    assert!(
        n_missing > 0,
        "the case should exercise codes outside the table"
    );
}

#[test]
fn golden_class_custom() {
    check_golden("class_custom", 0);
}

/// The first stage of a golden case against the official outputs; returns how many codes fell
/// outside the remap table.
fn check_golden(case: &str, expect_used: usize) -> usize {
    let dir = format!("{GOLDEN}/{case}");
    let expected =
        candle_core::safetensors::load(format!("{dir}/expected.safetensors"), &Device::Cpu)
            .unwrap();
    let ckpt =
        tessera_engine::loader::pth::Checkpoint::open(format!("{dir}/models/scale1.ckpt")).unwrap();
    let prefix = "first_stage_model.";
    let tensors: HashMap<String, Tensor> = ckpt
        .keys()
        .into_iter()
        .filter_map(|k| k.strip_prefix(prefix).map(|s| (s.to_owned(), k)))
        .map(|(name, key)| (name, ckpt.get(key).unwrap()))
        .collect();
    let n_used = tensors["quantize.used"].dims1().unwrap();
    if expect_used > 0 {
        assert_eq!(n_used, expect_used);
    }
    let mut configs: Vec<_> = std::fs::read_dir(format!("{dir}/configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    configs.sort();
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&configs[0]).unwrap()).unwrap();
    let cfg: VqganConfig =
        serde_yaml::from_value(yaml["model"]["params"]["first_stage_config"]["params"].clone())
            .unwrap();
    let model = Vqgan::new(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();

    let image = &expected["vqgan.image"];
    let h = model.encode_prequant(image).unwrap();
    let err = max_abs_diff(&h, &expected["vqgan.h"]);
    eprintln!("{case} h: max abs err {err:e}");
    assert!(err < 1e-4, "h: {err}");

    // Quantize the reference latent so that rounding in h cannot flip a near tie.
    let h_ref = &expected["vqgan.h"];
    let full = model.nearest_codes(h_ref).unwrap();
    let full_ref = expected["vqgan.indices_full"].to_dtype(DType::U32).unwrap();
    assert_eq!(
        full.to_vec2::<u32>().unwrap(),
        full_ref.to_vec2::<u32>().unwrap()
    );
    assert_eq!(
        model.nearest_codes(&h).unwrap().to_vec2::<u32>().unwrap(),
        full_ref.to_vec2::<u32>().unwrap()
    );

    let (remapped, in_used) = model.remap(h_ref, &full).unwrap();
    let in_used: Vec<Vec<u8>> = in_used.to_vec2().unwrap();
    assert_eq!(in_used, expected["vqgan.in_used"].to_vec2::<u8>().unwrap());
    let remapped: Vec<Vec<u32>> = remapped.to_vec2().unwrap();
    let remapped_ref: Vec<Vec<i64>> = expected["vqgan.indices_remapped"].to_vec2().unwrap();
    let mut n_missing = 0;
    for b in 0..2 {
        for i in 0..64 {
            if in_used[b][i] == 1 {
                assert_eq!(remapped[b][i] as i64, remapped_ref[b][i]);
            } else {
                assert_eq!(remapped_ref[b][i], -1);
                n_missing += 1;
            }
        }
    }

    let decoded = model
        .decode_tokens(&expected["vqgan.decode_tokens"])
        .unwrap();
    let err = max_abs_diff(&decoded, &expected["vqgan.decoded"]);
    eprintln!("{case} decoded: max abs err {err:e}");
    assert!(err < 1e-4, "decoded: {err}");

    let zeroed = expected["vqgan.indices_remapped"]
        .clamp(0i64, i64::MAX)
        .unwrap();
    let rec = model.decode_tokens(&zeroed).unwrap();
    let err = max_abs_diff(&rec, &expected["vqgan.reconstruction_of_image"]);
    eprintln!("{case} reconstruction: max abs err {err:e}");
    assert!(err < 1e-4, "reconstruction: {err}");
    n_missing
}

/// Released-size timing (random weights): `VQGAN_BENCH_RUNS=8 cargo test --release -p
/// tessera-engine --test vqgan -- --ignored --nocapture`. Prints wall and process CPU time per
/// run and the best run; wall time is noisy when other work shares the cores.
#[test]
#[ignore = "timing of the released 256² VQGAN; run in release"]
fn bench_released_size() {
    let mut cfg = golden_config();
    cfg.embed_dim = 256;
    cfg.n_embed = 1024;
    cfg.ddconfig = DdConfig {
        z_channels: 256,
        resolution: 256,
        ch: 128,
        ch_mult: vec![1, 1, 2, 2, 4],
        num_res_blocks: 2,
        attn_resolutions: vec![16],
        ..cfg.ddconfig
    };
    let (varmap, n_used) = random_weights(&cfg, 2);
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tokens: Vec<u32> = (0..256).map(|i| (i * 37) % n_used as u32).collect();
    let tokens = Tensor::from_vec(tokens, (1, 256), &Device::Cpu).unwrap();
    let x = Lcg(5).tensor(&[1, 3, 256, 256], 1.0, 0.0);
    // CPU seconds of this process (all threads), less disturbed than wall time on a busy box.
    let cpu_s = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (tick(11) + tick(12)) / 100.0
    };
    let t = std::time::Instant::now();
    let model = Vqgan::new(vb, &cfg, n_used).unwrap();
    eprintln!("build (with weight transforms): {:.2?}", t.elapsed());
    let runs: usize = std::env::var("VQGAN_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut best = [f64::INFINITY; 2];
    for run in 0..runs {
        let (t, c) = (std::time::Instant::now(), cpu_s());
        let y = model.decode_tokens(&tokens).unwrap();
        let (dec, dec_cpu) = (t.elapsed(), cpu_s() - c);
        let (t, c) = (std::time::Instant::now(), cpu_s());
        let toks = model.encode_tokens(&x).unwrap();
        let (enc, enc_cpu) = (t.elapsed(), cpu_s() - c);
        assert_eq!(
            (y.dims(), toks.dims()),
            (&[1, 3, 256, 256][..], &[1, 256][..])
        );
        eprintln!(
            "run {run}: decode {dec:.2?} (cpu {dec_cpu:.2}s), encode {enc:.2?} (cpu {enc_cpu:.2}s)"
        );
        best[0] = best[0].min(dec.as_secs_f64());
        best[1] = best[1].min(enc.as_secs_f64());
    }
    eprintln!("best: decode {:.3}s, encode {:.3}s", best[0], best[1]);
}

/// The released architecture's depth (ch_mult [1,1,2,2,4], two res blocks, attention at 16) at
/// half width and 64 px: the Winograd/fused float32 path stays close to float64 candle ops
/// through the whole network.
#[test]
fn released_architecture_matches_f64() {
    let mut cfg = golden_config();
    cfg.embed_dim = 256;
    cfg.n_embed = 128;
    cfg.ddconfig = DdConfig {
        z_channels: 256,
        resolution: 64,
        ch: 64,
        ch_mult: vec![1, 1, 2, 2, 4],
        num_res_blocks: 2,
        attn_resolutions: vec![16],
        ..cfg.ddconfig
    };
    let (varmap, n_used) = random_weights(&cfg, 2);
    let fast = Vqgan::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();
    let tensors64: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = v.as_tensor();
            let t = if k == "quantize.used" {
                t.clone()
            } else {
                t.to_dtype(DType::F64).unwrap()
            };
            (k.clone(), t)
        })
        .collect();
    let slow = Vqgan::new(
        VarBuilder::from_tensors(tensors64, DType::F64, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();
    let x = Lcg(13).tensor(&[1, 3, 64, 64], 1.0, 0.0);
    let (h_fast, h_slow) = (
        fast.encode_prequant(&x).unwrap(),
        slow.encode_prequant(&x).unwrap(),
    );
    let rel = |a: &Tensor, b: &Tensor| {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        max_abs_diff(a, b) / scale.to_scalar::<f32>().unwrap()
    };
    let err = rel(&h_fast, &h_slow);
    eprintln!("released encoder: max error / max |h| = {err:e}");
    assert!(err < 1e-4, "encoder: {err}");
    let tokens: Vec<u32> = (0..16).map(|i| (i * 5) % n_used as u32).collect();
    let tokens = Tensor::from_vec(tokens, (1, 16), &Device::Cpu).unwrap();
    let (y_fast, y_slow) = (
        fast.decode_tokens(&tokens).unwrap(),
        slow.decode_tokens(&tokens).unwrap(),
    );
    let err = rel(&y_fast, &y_slow);
    eprintln!("released decoder: max error / max |y| = {err:e}");
    assert!(err < 1e-4, "decoder: {err}");
}

/// Half precision runs through candle's generic ops (codebook distances stay f32).
#[test]
fn half_precision_runs() {
    let cfg = golden_config();
    let (varmap, n_used) = random_weights(&cfg, 2);
    let f32m = Vqgan::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();
    let tensors16: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = v.as_tensor();
            let t = if k == "quantize.used" {
                t.clone()
            } else {
                t.to_dtype(DType::F16).unwrap()
            };
            (k.clone(), t)
        })
        .collect();
    let f16m = Vqgan::new(
        VarBuilder::from_tensors(tensors16, DType::F16, &Device::Cpu),
        &cfg,
        n_used,
    )
    .unwrap();
    let x = Lcg(17).tensor(&[1, 3, 32, 32], 1.0, 0.0);
    let h16 = f16m.encode_prequant(&x).unwrap();
    assert_eq!(h16.dtype(), DType::F16);
    let err = max_abs_diff(&h16, &f32m.encode_prequant(&x).unwrap());
    assert!(err < 0.05, "f16 encoder: {err}");
    let tokens = f16m.encode_tokens(&x).unwrap();
    assert_eq!(tokens.dtype(), DType::U32);
    let y16 = f16m.decode_tokens(&tokens).unwrap();
    let err = max_abs_diff(&y16, &f32m.decode_tokens(&tokens).unwrap());
    eprintln!("f16 decoder: max abs err {err:e}");
    assert!(err < 0.05, "f16 decoder: {err}");
}
