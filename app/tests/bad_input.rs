//! The bad-input table: every way a user can hand the command line something wrong, run through
//! the real `tessera` binary. Each row says what the user gave and what must come back; every
//! row also checks that nothing panicked or printed a backtrace, that a refusal is one line
//! starting with `error:`, that a refused run wrote no output (and left no temporary file), and
//! that the inputs are byte-for-byte as they were. The README's troubleshooting section lists
//! every row by its id (checked below).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{copy_tree, golden};

/// What a row must produce.
enum Expect {
    /// Refused: exit status ≠ 0, one `error:` line holding every fragment.
    Refused(&'static [&'static str]),
    /// Done: exit status 0, the output written, every fragment somewhere in the output.
    Done(&'static [&'static str]),
    /// Nothing to do: exit status 0, no output written, the fragments said.
    Nothing(&'static [&'static str]),
}

struct Row {
    /// Stable id, listed in the README's troubleshooting table.
    id: &'static str,
    /// `inpaint` arguments, split on spaces, placeholders as in [`ROWS`].
    args: &'static str,
    expect: Expect,
}

use Expect::{Done, Nothing, Refused};

/// Inpainting rows; unless a row names them, `--model {g} --image {d}/in.png --mask
/// {d}/mask.png -o {od}/ID.png` are filled in (`{d}`: the fixture folder, `{od}`: the
/// outputs folder, `{g}`: the golden unconditional release).
#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Images.
    Row { id: "image-missing", args: "--image {d}/nope.png", expect: Refused(&["nope.png", "No such file"]) },
    Row { id: "image-empty-file", args: "--image {d}/zero.png", expect: Refused(&["zero.png", "an empty file"]) },
    Row { id: "image-not-an-image", args: "--image {d}/text.png", expect: Refused(&["text.png", "not a PNG, JPEG or WebP image"]) },
    Row { id: "image-truncated", args: "--image {d}/trunc.png", expect: Refused(&["trunc.png", "truncated"]) },
    Row { id: "image-corrupt", args: "--image {d}/corrupt.png", expect: Refused(&["corrupt.png", "damaged or truncated"]) },
    Row { id: "image-too-large", args: "--image {d}/huge.png", expect: Refused(&["huge.png", "30000×30000", "16384×16384"]) },
    Row { id: "image-unsupported-format", args: "--image {d}/in.gif", expect: Refused(&["in.gif", "a GIF image", "PNG, JPEG and WebP"]) },
    Row { id: "image-decompression-bomb", args: "--image {d}/bomb.webp", expect: Refused(&["bomb.webp", "42 bytes", "8737×13321", "decompression bomb"]) },
    Row { id: "image-jpeg-decoder-panic", args: "--image {d}/panics.jpg", expect: Refused(&["panics.jpg", "damaged"]) },
    Row { id: "image-one-pixel", args: "--image {d}/one.png --mask-preset centre-window", expect: Done(&["wrote"]) },
    Row { id: "image-16-bit-grey", args: "--image {d}/grey16.png --mask-preset centre-window", expect: Done(&["wrote"]) },
    // Masks.
    Row { id: "mask-size-mismatch", args: "--mask {d}/small.png", expect: Refused(&["small.png is 32×64", "64×64"]) },
    Row { id: "mask-empty", args: "--mask {d}/black.png", expect: Nothing(&["nothing to do"]) },
    Row { id: "mask-fully-transparent", args: "--mask {d}/clear.png", expect: Nothing(&["nothing to do"]) },
    Row { id: "mask-everything", args: "--mask {d}/white.png", expect: Done(&["wrote"]) },
    Row { id: "mask-not-an-image", args: "--mask {d}/text.png", expect: Refused(&["the mask", "text.png", "not a PNG"]) },
    Row { id: "mask-too-large", args: "--mask {d}/huge.png", expect: Refused(&["the mask", "huge.png", "30000×30000"]) },
    // Sampling options.
    Row { id: "temperature-nan", args: "--temperature NaN", expect: Refused(&["temperature must be a finite number > 0, got NaN"]) },
    Row { id: "temperature-wrong-count", args: "--temperature 1,2,3,4,5,6,7", expect: Refused(&["--temperature takes one value or one per level (3), got 7"]) },
    Row { id: "top-p-out-of-range", args: "--top-p 1.5", expect: Refused(&["--top-p must lie in (0, 1], got 1.5"]) },
    Row { id: "top-k-negative", args: "--top-k=-1", expect: Refused(&["'-1'", "--top-k"]) },
    Row { id: "candidates-out-of-range", args: "--candidates 100000", expect: Refused(&["--candidates must be between 1 and 64"]) },
    Row { id: "chains-zero", args: "--chains 0", expect: Refused(&["chain passes must be 1..=100, got 0"]) },
    Row { id: "strength-out-of-range", args: "--strength 99", expect: Refused(&["levels to redo must be in 1..=3, got 99"]) },
    Row { id: "guidance-nan", args: "--guidance NaN", expect: Refused(&["--guidance must be a finite number ≥ 0, got NaN"]) },
    Row { id: "quantize-unknown", args: "--quantize q2", expect: Refused(&["unknown quantization `q2`"]) },
    Row { id: "feather-negative", args: "--feather=-3", expect: Refused(&["'-3'", "--feather"]) },
    // Conditions.
    Row { id: "class-on-unconditional-model", args: "--class 3", expect: Refused(&["not class-conditional; drop --class"]) },
    Row { id: "prompt-on-unconditional-model", args: "--prompt cat", expect: Refused(&["takes no text prompt; drop --prompt"]) },
    Row { id: "class-out-of-range", args: "--model {d}/model --class 999", expect: Refused(&["class 999 is not in 0..40"]) },
    Row { id: "class-unknown-name", args: "--model {d}/model --class zzzz", expect: Refused(&["no class named `zzzz`"]) },
    Row { id: "prompt-unknown-words", args: "--model {d}/model --prompt qwertyuiop", expect: Done(&["does not know the word `qwertyuiop`"]) },
    Row { id: "prompt-huge", args: "--model {d}/model --prompt {long}", expect: Done(&["does not know the word `aaaaaaaaaaaaaaaaaaaaaaaa…`"]) },
    Row { id: "prompt-control-characters", args: "--model {d}/model --prompt {control}", expect: Done(&["does not know the word `x`"]) },
    Row { id: "prompt-empty", args: "--model {d}/model --prompt=", expect: Done(&["wrote"]) },
    // Models.
    Row { id: "model-unknown-name", args: "--model no-such-model", expect: Refused(&["--model no-such-model", "no installed model of that name"]) },
    Row { id: "model-not-a-model", args: "--model {d}", expect: Refused(&["neither a Tessera model folder (model.json) nor an official release folder"]) },
    Row { id: "model-card-invalid", args: "--model {d}/bad-card", expect: Refused(&["bad-card/model.json", "line 1"]) },
    Row { id: "weights-truncated", args: "--model {d}/truncated-weights", expect: Refused(&["stage1.safetensors", "not a readable safetensors file"]) },
    Row { id: "weights-shape-mismatch", args: "--model {d}/wrong-shape", expect: Refused(&["stage2.safetensors", "`tok_emb.weight`", "[1175, 128]", "[1175, 192]"]) },
    Row { id: "weights-missing-tensor", args: "--model {d}/swapped-stages", expect: Refused(&["stage2.safetensors", "missing tensor `tok_emb.weight`"]) },
    Row { id: "model-too-large-for-memory", args: "--model {d}/giant", expect: Refused(&["GB of memory", "are available", "low-memory"]) },
    Row { id: "tokenizer-missing", args: "--model {d}/no-tokenizer --prompt cat", expect: Refused(&["no-tokenizer/tokenizer.json", "No such file"]) },
    Row { id: "tokenizer-malformed-decoder", args: "--model {d}/bad-decoder --prompt cat", expect: Refused(&["bad-decoder/tokenizer.json", "not a tokenizer.json"]) },
    Row { id: "tokenizer-corrupt", args: "--model {d}/bad-tokenizer --prompt cat", expect: Refused(&["bad-tokenizer/tokenizer.json", "not a tokenizer.json"]) },
    Row { id: "checkpoint-truncated", args: "--model {d}/truncated-ckpt", expect: Refused(&["scale2.ckpt", "truncated"]) },
    Row { id: "checkpoint-malformed-pickle", args: "--model {d}/bad-pickle", expect: Refused(&["bad-pickle/models/scale2.ckpt"]) },
    Row { id: "checkpoint-runs-code", args: "--model {d}/pickle-code", expect: Refused(&["scale2.ckpt", "posix.system", "never runs code"]) },
    Row { id: "checkpoint-missing", args: "--model {d}/missing-ckpt", expect: Refused(&["scale3.ckpt", "was found neither beside the manifest"]) },
    Row { id: "manifest-invalid-yaml", args: "--model {d}/bad-yaml", expect: Refused(&["bad-yaml/sampling.yaml", "line"]) },
    // Outputs.
    Row { id: "output-exists", args: "-o {d}/existing.png", expect: Refused(&["existing.png exists; pass --force to replace it"]) },
    Row { id: "output-is-the-input", args: "-o {d}/in.png", expect: Refused(&["in.png exists; pass --force"]) },
    Row { id: "output-unknown-extension", args: "-o {od}/output-unknown-extension.xyz", expect: Refused(&["output-unknown-extension.xyz ends in .xyz", ".png, .jpg or .webp"]) },
    Row { id: "output-no-extension", args: "-o {od}/output-no-extension", expect: Refused(&["output-no-extension has no extension"]) },
    Row { id: "output-jpeg", args: "-o {od}/output-jpeg.jpg", expect: Done(&["wrote", "output-jpeg.jpg"]) },
    Row { id: "confidence-map-jpeg", args: "--confidence-map {od}/confidence-map-jpeg-map.jpg", expect: Refused(&["map.jpg", ".png or .webp"]) },
    Row { id: "output-folder-unwritable", args: "-o /proc/tessera-test/out.png", expect: Refused(&["cannot create /proc/tessera-test"]) },
];

/// The fixture folder: images, masks and broken models made once for all rows.
fn fixture(d: &Path) {
    let png = |name: &str, w: u32, h: u32, f: &dyn Fn(u32, u32) -> [u8; 4]| {
        image::RgbaImage::from_fn(w, h, |x, y| image::Rgba(f(x, y)))
            .save(d.join(name))
            .unwrap();
    };
    png("in.png", 64, 64, &|x, y| {
        [(x * 4) as u8, (y * 4) as u8, 90, 255]
    });
    png("mask.png", 64, 64, &|x, y| {
        let v = if (10..30).contains(&x) && (10..30).contains(&y) {
            255
        } else {
            0
        };
        [v, v, v, 255]
    });
    png("small.png", 32, 64, &|_, _| [255; 4]);
    png("black.png", 64, 64, &|_, _| [0, 0, 0, 255]);
    png("white.png", 64, 64, &|_, _| [255; 4]);
    png("clear.png", 64, 64, &|_, _| [255, 255, 255, 0]);
    png("one.png", 1, 1, &|_, _| [200, 10, 10, 255]);
    png("existing.png", 8, 8, &|_, _| [1, 2, 3, 255]);
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(64, 64, |x, _| {
        image::Luma([(x * 1000) as u16])
    })
    .save(d.join("grey16.png"))
    .unwrap();
    // A 1×1 GIF (the image crate is built without a GIF codec, as Tessera is).
    std::fs::write(
        d.join("in.gif"),
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    )
    .unwrap();
    let good = std::fs::read(d.join("in.png")).unwrap();
    std::fs::write(d.join("trunc.png"), &good[..good.len() / 2]).unwrap();
    let mut corrupt = good.clone();
    for b in &mut corrupt[60..] {
        *b ^= 0x5a;
    }
    std::fs::write(d.join("corrupt.png"), corrupt).unwrap();
    std::fs::write(d.join("text.png"), "hello, not an image\n").unwrap();
    std::fs::write(d.join("zero.png"), b"").unwrap();
    std::fs::write(d.join("huge.png"), huge_png_header()).unwrap();
    // Inputs fuzzing found (fuzz/corpus/*/regress_*).
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    std::fs::copy(
        corpus.join("image/regress_webp_bomb_8737x13321.webp"),
        d.join("bomb.webp"),
    )
    .unwrap();
    std::fs::copy(
        corpus.join("image/regress_jpeg_upsampler_assert.jpg"),
        d.join("panics.jpg"),
    )
    .unwrap();

    // Tessera model folders, from the shipped default model.
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model");
    let model = |name: &str| {
        let dir = d.join(name);
        copy_tree(&assets, &dir);
        dir
    };
    model("model");
    std::fs::write(
        model("bad-card").join("model.json"),
        r#"{"format": "tessera-imagebart/1", "name": 3"#,
    )
    .unwrap();
    let w = model("truncated-weights").join("stage1.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    edit_card(&model("wrong-shape"), |c| {
        c["stages"][1]["network"]["config"]["n_embd"] = 192.into();
    });
    let swapped = model("swapped-stages");
    std::fs::copy(
        swapped.join("stage1.safetensors"),
        swapped.join("stage2.safetensors"),
    )
    .unwrap();
    // A card whose stage claims 6.8 × 10¹⁰ parameters (136 GB in f16; the card check allows
    // up to 2³⁶): refused from the card alone on any machine with less memory available.
    edit_card(&model("giant"), |c| {
        c["stages"][1]["parameters"] = 68_000_000_000u64.into();
    });
    std::fs::remove_file(model("no-tokenizer").join("tokenizer.json")).unwrap();
    std::fs::write(model("bad-tokenizer").join("tokenizer.json"), "junk").unwrap();
    // The fuzz seed's first byte picks the file; the rest made tokenizers panic.
    let seed = std::fs::read(corpus.join("model/regress_tokenizer_decoder_syntax_error")).unwrap();
    std::fs::write(model("bad-decoder").join("tokenizer.json"), &seed[1..]).unwrap();

    // Official releases, from the golden one.
    let release = |name: &str| {
        let dir = d.join(name);
        copy_tree(&golden().join("uncond_geometric"), &dir);
        dir
    };
    let ckpt = release("truncated-ckpt").join("models/scale2.ckpt");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let ckpt = release("pickle-code").join("models/scale2.ckpt");
    std::fs::write(&ckpt, pickle_calling_system(&d.join("PWNED"))).unwrap();
    std::fs::remove_file(release("missing-ckpt").join("models/scale3.ckpt")).unwrap();
    std::fs::copy(
        corpus.join("ckpt/regress_long1_9_bytes.ckpt"),
        release("bad-pickle").join("models/scale2.ckpt"),
    )
    .unwrap();
    let yaml = release("bad-yaml").join("sampling.yaml");
    let mut f = std::fs::OpenOptions::new().append(true).open(yaml).unwrap();
    f.write_all(b": [\n").unwrap();
}

fn edit_card(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut card);
    std::fs::write(&path, serde_json::to_vec(&card).unwrap()).unwrap();
}

/// A PNG whose header says 30000×30000 (a decompression bomb if decoded).
fn huge_png_header() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(30000u32.to_be_bytes());
    ihdr.extend(30000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    // A stored (uncompressed) zlib stream of a few zero rows.
    let mut idat = vec![0x78, 0x01, 0x01, 0x00, 0x01, 0xff, 0xfe];
    idat.extend(vec![0u8; 256]);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PyTorch-style zip whose `data.pkl` asks to run `os.system("touch MARKER")`.
fn pickle_calling_system(marker: &Path) -> Vec<u8> {
    let unicode = |out: &mut Vec<u8>, s: &str| {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    };
    let mut pkl = vec![0x80, 0x02, b'}'];
    unicode(&mut pkl, "state_dict");
    pkl.extend(b"cposix\nsystem\n");
    unicode(&mut pkl, &format!("touch {}", marker.display()));
    pkl.extend([0x85, b'R', b's', b'.']);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file(
        "archive/data.pkl",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    zip.write_all(&pkl).unwrap();
    zip.finish().unwrap().into_inner()
}

/// Every file under `dir`: its size and modification time, and the bytes of small files.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let meta = std::fs::metadata(&p).unwrap();
                let bytes = if meta.len() < 1 << 20 {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                out.insert(p.clone(), (meta.len(), meta.modified().unwrap(), bytes));
            }
        }
    }
    out
}

/// Splits a row's arguments on spaces and fills in the placeholders.
fn expand(args: &str, d: &Path, outputs: &Path) -> Vec<String> {
    let long = "a".repeat(20_000);
    args.split(' ')
        .map(|a| {
            a.replace("{d}", &d.to_string_lossy())
                .replace("{g}", &golden().join("uncond_geometric").to_string_lossy())
                .replace("{od}", &outputs.to_string_lossy())
                .replace("{long}", &long)
                .replace("{control}", "\u{1}\u{7}x")
        })
        .collect()
}

/// Runs one row; returns what went wrong, if anything.
fn check(row: &Row, d: &Path, outputs: &Path) -> Result<(), String> {
    let out = outputs.join(format!("{}.png", row.id));
    let mut args = expand(row.args, d, outputs);
    let named = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let mut defaults = vec!["inpaint".to_string()];
    for (flag, value) in [
        ("--model", golden().join("uncond_geometric")),
        ("--image", d.join("in.png")),
        ("--mask", d.join("mask.png")),
        ("-o", out.clone()),
    ] {
        let preset = flag == "--mask" && named("--mask-preset");
        if !named(flag) && !preset {
            defaults.push(flag.into());
            defaults.push(value.to_string_lossy().into_owned());
        }
    }
    defaults.append(&mut args);
    let before = snapshot(d);
    let result = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(&defaults)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("TESSERA_MODELS", outputs.join("no-models-installed"))
        .output()
        .map_err(|e| format!("cannot run tessera: {e}"))?;
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    let text = format!("{}{stderr}", String::from_utf8_lossy(&result.stdout));
    let fail = |why: &str| Err(format!("{why}\n--- output ---\n{text}"));
    if text.contains("panicked") || text.contains("backtrace") || text.contains("RUST_BACKTRACE") {
        return fail("a panic or a backtrace");
    }
    if snapshot(d) != before {
        return fail("the run changed a file it was given");
    }
    if d.join("PWNED").exists() {
        return fail("a checkpoint ran code");
    }
    let leftovers: Vec<_> = snapshot(outputs)
        .into_keys()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    if !leftovers.is_empty() {
        return fail(&format!("temporary files left: {leftovers:?}"));
    }
    let written = snapshot(outputs).keys().any(|p| {
        p.file_stem()
            .is_some_and(|s| s.to_string_lossy().starts_with(row.id))
    });
    match &row.expect {
        Refused(says) => {
            if result.status.success() {
                return fail("accepted");
            }
            if written {
                return fail("refused, yet wrote an output");
            }
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            let [line] = errors[..] else {
                return fail("not exactly one `error:` line");
            };
            if let Some(missing) = says.iter().find(|s| !line.contains(*s)) {
                return fail(&format!("the error does not say `{missing}`"));
            }
            // Our own errors are one line; clap's usage hints follow its first line.
            if result.status.code() == Some(1) && stderr.lines().count() != 1 {
                return fail("the error is more than one line");
            }
        }
        Done(says) | Nothing(says) => {
            if !result.status.success() {
                return fail("failed");
            }
            let should_write = matches!(row.expect, Done(_));
            if written != should_write {
                return fail(if should_write {
                    "wrote no output"
                } else {
                    "wrote an output though there was nothing to do"
                });
            }
            if let Some(missing) = says.iter().find(|s| !text.contains(*s)) {
                return fail(&format!("the output does not say `{missing}`"));
            }
            if text.lines().any(|l| l.chars().count() > 400) {
                return fail("a line over 400 characters");
            }
            if text.chars().any(|c| c.is_control() && c != '\n') {
                return fail("a control character in the output");
            }
        }
    }
    Ok(())
}

#[test]
fn every_row_of_the_bad_input_table() {
    let fixture_dir = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    fixture(fixture_dir.path());
    let failures: Vec<String> = ROWS
        .iter()
        .filter_map(|row| {
            check(row, fixture_dir.path(), outputs.path())
                .err()
                .map(|e| format!("[{}] {e}", row.id))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n\n")
    );
}

/// A write that fails half-way (here a file-size limit, the same failure path as a full disk:
/// the write call returns an error mid-file) leaves the file that was there, says so, and
/// leaves no temporary file behind.
#[test]
fn a_failing_write_keeps_the_original_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let out = d.path().join("existing.png");
    let before = std::fs::read(&out).unwrap();
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 1; exec '{}' inpaint --model '{}' --image '{}' --mask '{}' -o '{}' --force",
        env!("CARGO_BIN_EXE_tessera"),
        golden().join("uncond_geometric").display(),
        d.path().join("in.png").display(),
        d.path().join("white.png").display(),
        out.display()
    );
    let result = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
    let (ok, text) = common::outcome(result);
    assert!(!ok, "{text}");
    assert!(
        text.contains("cannot write")
            && text.contains("existing.png")
            && text.contains("the file already there was left as it was"),
        "{text}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), before, "the original changed");
    let tmp: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

/// The README's troubleshooting section names every row, so the table a user reads is the
/// one the tests run.
#[test]
fn the_readme_lists_every_row() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("## Troubleshooting")
        .expect("README has a Troubleshooting section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let missing: Vec<&str> = ROWS
        .iter()
        .map(|r| r.id)
        .filter(|id| !section.contains(&format!("`{id}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "rows missing from the README: {missing:?}"
    );
}
