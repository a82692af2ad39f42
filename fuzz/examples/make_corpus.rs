//! Writes the base model folders of the `model` target (`fuzz/model/f32`, `fuzz/model/q8_0`:
//! a small text-conditional model with random weights) and the seed corpora of the `image`,
//! `model`, `project` and `prompt` targets. (`ckpt` seeds: `fuzz/tools/make_ckpt_seeds.py`.)
//!
//! ```text
//! cargo run -p tessera-fuzz --example make_corpus [models image project model prompt]
//! ```

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use image::{GrayImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use tessera::editor::document::{MaskEdit, PixelRect};
use tessera::editor::history::{Change, ImageEdit};
use tessera::editor::project::{GenRecord, Project, ProjectMeta, encode_project};
use tessera::editor::saved::{SavedHistory, SavedResults};
use tessera::editor::settings::GenSettings;
use tessera_engine::loader::card::{ModelCard, Network};
use tessera_engine::loader::{LoadOptions, ModelSource, Stage, build_network, gguf};
use tessera_engine::nn::Linear;
use tessera_engine::text::PromptTokenizer;
use tessera_engine::vqgan::Vqgan;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"[PAD]": 0, "[UNK]": 1, "a": 2, "red": 3, "heart": 4, "on": 5, "blue": 6,
              "stripes": 7, "class_star": 8},
    "unk_token": "[UNK]"
  }
}"#;

fn card() -> serde_json::Value {
    let dd = serde_json::json!({
        "double_z": false, "z_channels": 4, "resolution": 8, "in_channels": 3, "out_ch": 3,
        "ch": 8, "ch_mult": [1, 1], "num_res_blocks": 0, "attn_resolutions": [],
        "dropout": 0.0, "norm_groups": 4
    });
    serde_json::json!({
        "format": "tessera-imagebart/1",
        "name": "fuzz-tiny",
        "description": "A tiny random model: the base folder of the `model` fuzz target.",
        "vqgan": {"embed_dim": 4, "n_embed": 32, "ddconfig": dd},
        "n_tokens": 16,
        "stages": [
            {"level": 1, "network": {"kind": "x_transformer", "config": {
                "dim": 32, "enc_num_tokens": 25, "enc_depth": 1, "enc_heads": 2,
                "enc_max_seq_len": 21, "dec_num_tokens": 16, "dec_depth": 1, "dec_heads": 2,
                "dec_max_seq_len": 16, "dim_head": 16}, "residual_scaled": false},
             "weights": "stage1.safetensors", "parameters": 0},
            {"level": 2, "network": {"kind": "gpt", "config": {
                "vocab_size": 16, "block_size": 20, "n_layer": 1, "n_head": 2, "n_embd": 32,
                "input_vocab_size": 25, "n_unmasked": 5}},
             "weights": "stage2.safetensors", "parameters": 0}
        ],
        "schedule": {"alphats": [1.0, 0.5, 0.0], "alphacum": [1.0, 0.5, 0.0]},
        "conditioning": {"kind": "text", "tokenizer": "tokenizer.json", "context_len": 4,
                         "token_offset": 16, "pad_id": 0, "class_names": ["star"]},
        "dtype": "f32",
        "provenance": "random weights (fuzz/examples/make_corpus.rs)",
        "license": "MIT OR Apache-2.0",
        "guidance_scale": 2.0
    })
}

/// Small deterministic weights (xorshift, ±0.05).
fn random(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The tensors a network asks for, filled with random values (`quantize.used` = 0..K).
fn weights(
    seed: u64,
    build: impl Fn(VarBuilder) -> candle_core::Result<()>,
) -> Res<HashMap<String, Tensor>> {
    let vm = VarMap::new();
    build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let data = vm.data().lock().map_err(|_| "poisoned")?;
    let mut out = HashMap::new();
    for (i, (name, var)) in data.iter().enumerate() {
        let t = if var.dtype() == DType::I64 {
            Tensor::arange(0i64, var.elem_count() as i64, &Device::Cpu)?
        } else {
            random(var.dims(), seed * 1000 + i as u64)?
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// A stage's tensors as `tessera import --quantize q8_0` stores them.
fn quantized(
    tensors: &HashMap<String, Tensor>,
    network: &Network,
    alphats: &[f32],
) -> Res<Vec<(String, QTensor)>> {
    let stage = build_network(
        network,
        VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu),
        alphats,
    )?;
    let mut linear = HashSet::new();
    let mut list = |l: &Linear| {
        linear.extend(l.weight_names());
        Ok(l.clone())
    };
    match &stage {
        Stage::EncDec(n) => drop(n.map_linears(&mut list)?),
        Stage::Gpt(n) => drop(n.map_linears(&mut list)?),
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let t = &tensors[name];
        let format = match t.dims() {
            [_, in_dim] if linear.contains(name) => {
                Linear::block_format(GgmlDType::Q8_0, *in_dim).unwrap_or(GgmlDType::F32)
            }
            _ => GgmlDType::F32,
        };
        out.push((name.clone(), QTensor::quantize(t, format)?));
    }
    Ok(out)
}

fn write_models(root: &Path) -> Res<()> {
    let json = card();
    let card: ModelCard = serde_json::from_value(json.clone())?;
    card.validate()?;
    let f32_dir = root.join("f32");
    let q8_dir = root.join("q8_0");
    std::fs::create_dir_all(&f32_dir)?;
    std::fs::create_dir_all(&q8_dir)?;
    let vqgan = weights(1, |vb| Vqgan::new(vb, &card.vqgan, card.n_tokens).map(drop))?;
    for dir in [&f32_dir, &q8_dir] {
        candle_core::safetensors::save(&vqgan, dir.join("vqgan.safetensors"))?;
        std::fs::write(dir.join("tokenizer.json"), TOKENIZER)?;
    }
    let mut f32_card = card.clone();
    let mut q8_card = card.clone();
    for (i, stage) in card.stages.iter().enumerate() {
        let t = i + 1;
        let alphats = &card.schedule.alphats;
        let tensors = weights(t as u64 + 1, |vb| {
            build_network(&stage.network, vb, alphats).map(drop)
        })?;
        let params = tensors.values().map(Tensor::elem_count).sum();
        candle_core::safetensors::save(&tensors, f32_dir.join(&stage.weights))?;
        let q = quantized(&tensors, &stage.network, alphats)?;
        gguf::write(
            &q8_dir.join(format!("stage{t}.gguf")),
            t,
            GgmlDType::Q8_0,
            &q,
        )?;
        f32_card.stages[i].parameters = params;
        q8_card.stages[i].parameters = params;
        q8_card.stages[i].weights = format!("stage{t}.gguf");
    }
    q8_card.dtype = "q8_0".into();
    std::fs::write(
        f32_dir.join("model.json"),
        serde_json::to_string_pretty(&f32_card)?,
    )?;
    std::fs::write(
        q8_dir.join("model.json"),
        serde_json::to_string_pretty(&q8_card)?,
    )?;
    for dir in [&f32_dir, &q8_dir] {
        let source = ModelSource::open(dir)?;
        let opts = LoadOptions {
            keep_stored_quantization: true,
            ..LoadOptions::default()
        };
        source.load(&opts)?;
        PromptTokenizer::for_model(dir, source.card())?.ok_or("no tokenizer")?;
        println!("{}: loads", dir.display());
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{}/{name}: {} bytes", dir.display(), bytes.len());
    Ok(())
}

fn encoded(img: &image::DynamicImage, format: ImageFormat) -> Res<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)?;
    Ok(out.into_inner())
}

fn test_image(w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        Rgba([(x * 40) as u8, (y * 30) as u8, ((x + y) * 20) as u8, 255])
    })
}

fn write_image_seeds(dir: &Path) -> Res<()> {
    let rgba = test_image(8, 8);
    let rgb = image::DynamicImage::ImageRgba8(rgba.clone()).to_rgb8();
    write(
        dir,
        "rgba.png",
        &encoded(&rgba.clone().into(), ImageFormat::Png)?,
    )?;
    write(
        dir,
        "rgb.jpg",
        &encoded(&rgb.clone().into(), ImageFormat::Jpeg)?,
    )?;
    write(dir, "rgb.webp", &encoded(&rgb.into(), ImageFormat::WebP)?)?;
    let mask = GrayImage::from_fn(8, 8, |x, y| image::Luma([if x > y { 255 } else { 0 }]));
    write(dir, "mask.png", &encoded(&mask.into(), ImageFormat::Png)?)?;
    let painted = RgbaImage::from_fn(8, 8, |x, _| {
        Rgba([255, 255, 255, if x < 4 { 0 } else { 255 }])
    });
    write(
        dir,
        "mask_alpha.png",
        &encoded(&painted.into(), ImageFormat::Png)?,
    )?;
    // A decoding bomb: a valid header claiming 16384×16384 and almost no data.
    let mut bomb = encoded(&test_image(1, 1).into(), ImageFormat::Png)?;
    bomb[16..20].copy_from_slice(&16384u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&16384u32.to_be_bytes());
    let crc = png_crc(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    write(dir, "bomb_16384.png", &bomb)?;
    Ok(())
}

/// CRC-32 as PNG chunks carry it.
fn png_crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn write_project_seeds(dir: &Path) -> Res<()> {
    let mut settings = GenSettings {
        prompt: "a red heart".into(),
        ..GenSettings::default()
    };
    settings.seed = 7;
    let meta = ProjectMeta {
        source: Some("scene.png".into()),
        model: Some("assets/model".into()),
        settings: settings.clone(),
        generations: vec![GenRecord {
            model: "tessera-concepts-128".into(),
            settings,
            class_name: Some("star".into()),
            negative_class_name: None,
            candidate: 1,
            secs: 0.5,
        }],
    };
    let image = test_image(4, 4);
    let mask = GrayImage::from_fn(4, 4, |x, _| image::Luma([if x < 2 { 255 } else { 0 }]));
    let project = Project {
        image: image.clone(),
        mask: mask.clone(),
        meta: ProjectMeta::default(),
        last_mask: None,
        history: None,
        results: None,
    };
    write(dir, "plain.tessera", &encode_project(&project)?)?;
    let project = Project {
        image,
        mask: mask.clone(),
        meta: meta.clone(),
        last_mask: Some(mask),
        history: None,
        results: None,
    };
    write(dir, "history.tessera", &encode_project(&project)?)?;
    // A recovery project: undo/redo stacks and unaccepted candidates as well.
    let rect = PixelRect {
        x: 1,
        y: 1,
        w: 2,
        h: 2,
    };
    let candidate = |v: u8| RgbImage::from_pixel(4, 4, Rgb([v, 2, 3]));
    let project = Project {
        history: Some(SavedHistory {
            undo: vec![
                Change::Mask(MaskEdit {
                    rect,
                    before: vec![0; 4],
                    after: vec![255; 4],
                    label: "brush",
                }),
                Change::Image(ImageEdit {
                    rect,
                    before: vec![1; 16],
                    after: vec![2; 16],
                    label: "accept candidate 2".into(),
                }),
            ],
            redo: vec![Change::Mask(MaskEdit {
                rect,
                before: vec![255; 4],
                after: vec![0; 4],
                label: "invert",
            })],
        }),
        results: Some(SavedResults {
            record: meta.generations[0].clone(),
            selected: 1,
            sample: false,
            finals: vec![Some(candidate(10)), None, Some(candidate(30))],
            source: Some(candidate(0)),
        }),
        ..project
    };
    let recovery = encode_project(&project)?;
    write(dir, "recovery.tessera", &recovery)?;
    // The same projects as `project_entries` inputs.
    let entries_dir = dir.with_file_name("project_entries");
    for name in ["plain", "history", "recovery"] {
        let bytes = std::fs::read(dir.join(format!("{name}.tessera")))?;
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes))?;
        let mut input = Vec::new();
        for (i, entry) in tessera_fuzz::PROJECT_ENTRIES.iter().enumerate() {
            if i > 0 {
                input.extend_from_slice(tessera_fuzz::ENTRY_SEPARATOR);
            }
            if let Ok(mut f) = zip.by_name(entry) {
                std::io::Read::read_to_end(&mut f, &mut input)?;
            }
        }
        write(&entries_dir, name, &input)?;
    }
    Ok(())
}

fn write_model_seeds(models: &Path, dir: &Path) -> Res<()> {
    for (i, (variant, file)) in tessera_fuzz::MODEL_FILES.iter().enumerate() {
        let mut bytes = vec![i as u8];
        bytes.extend(std::fs::read(models.join(variant).join(file))?);
        write(dir, &format!("{i}_{variant}_{file}"), &bytes)?;
    }
    Ok(())
}

fn write_prompt_seeds(dir: &Path) -> Res<()> {
    let prompts: [(&str, &str); 6] = [
        ("plain.txt", "a red heart on blue stripes"),
        ("unknown_words.txt", "A   Zebra\ton  QUUX-stripes!"),
        ("unicode.txt", "ﬁre Ａpple 🍎 ÉCLAIR ǅ straße İstanbul"),
        (
            "controls.txt",
            "\u{0}cat\u{7f}\r\nface\u{200b} \u{2028}rocket",
        ),
        ("class_word.txt", "class_cat_face class_rocket on a moon"),
        ("empty.txt", ""),
    ];
    for (name, text) in prompts {
        write(dir, name, text.as_bytes())?;
    }
    write(dir, "invalid_utf8.txt", b"red \xff\xfe heart \xc3")?;
    Ok(())
}

fn main() -> Res<()> {
    // Which parts to write (`models image project model prompt`); all by default.
    let parts: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let root = tessera_fuzz::crate_dir();
    let models = root.join("model");
    let corpus = root.join("corpus");
    if wanted("models") {
        write_models(&models)?;
    }
    if wanted("image") {
        write_image_seeds(&corpus.join("image"))?;
    }
    if wanted("project") {
        write_project_seeds(&corpus.join("project"))?;
    }
    if wanted("model") {
        write_model_seeds(&models, &corpus.join("model"))?;
    }
    if wanted("prompt") {
        write_prompt_seeds(&corpus.join("prompt"))?;
    }
    Ok(())
}
