//! Fuzz targets for Tessera's readers of untrusted files. Each target is a plain
//! `fn(&[u8])` that must never panic, whatever the bytes (errors are the expected outcome for
//! most inputs), and must not allocate what a malformed header asks for.
//!
//! The same functions are driven by the AFL++ harnesses in `src/bin/` (`--features afl`,
//! built and run by `scripts/fuzz.sh`) and by `tests/corpus.rs`, which replays
//! `corpus/<target>/` and a few seconds of simple mutations on every `cargo test`.
//!
//! | target | what the bytes are |
//! | --- | --- |
//! | [`image`] | an image file given to the editor (`load_image`, then `load_mask`) |
//! | [`ckpt`] | an official PyTorch `.ckpt` (zip + pickle), every tensor read |
//! | [`model`] | byte 0 picks a file of a small valid model folder, the rest replaces it |
//! | [`project`] | a `.tessera` project / autosave (`decode_project`) |
//! | [`project_entries`] | the entries of a project, zipped with valid checksums, then decoded |
//! | [`prompt`] | a prompt (lossy UTF-8) for the default model's tokenizer |

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tessera::editor::{files, project as project_file};
use tessera_engine::loader::card::{self, Condition, ModelCard};
use tessera_engine::loader::pth::Checkpoint;
use tessera_engine::loader::{LoadOptions, ModelSource};
use tessera_engine::text::PromptTokenizer;

/// The names of the targets, as `corpus/` and `scripts/fuzz.sh` spell them.
pub const TARGETS: [&str; 6] = [
    "image",
    "ckpt",
    "model",
    "project",
    "project_entries",
    "prompt",
];

/// Runs the target called `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "image" => image(data),
        "ckpt" => ckpt(data),
        "model" => model(data),
        "project" => project(data),
        "project_entries" => project_entries(data),
        "prompt" => prompt(data),
        _ => return false,
    }
    true
}

/// The folder of this crate (corpus, base model).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

thread_local! {
    static SCRATCH: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// A scratch folder for this thread, in `/dev/shm` where it exists (the loaders read files).
///
/// Its name comes from `TESSERA_FUZZ_KEY` when set (the AFL harnesses fork a new process every
/// few thousand inputs, so `scripts/fuzz.sh` names one folder per target), else from the
/// process and thread, so parallel tests do not share one.
pub fn scratch_dir() -> PathBuf {
    SCRATCH.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| {
                let base = Path::new("/dev/shm");
                let base = if base.is_dir() {
                    base.to_path_buf()
                } else {
                    std::env::temp_dir()
                };
                let key = std::env::var("TESSERA_FUZZ_KEY").unwrap_or_else(|_| {
                    let thread = format!("{:?}", std::thread::current().id());
                    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
                    format!("{}-{thread}", std::process::id())
                });
                let dir = base.join("tessera-fuzz").join(key);
                std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch folder");
                dir
            })
            .clone()
    })
}

/// Removes this thread's scratch folder (tests call it when done).
pub fn remove_scratch_dir() {
    SCRATCH.with(|s| {
        if let Some(dir) = s.borrow_mut().take() {
            std::fs::remove_dir_all(dir).ok();
        }
    });
}

/// Writes `data` to the file `name` in the scratch folder and returns its path.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("cannot write the fuzz scratch file");
    path
}

/// Image and mask loading, as the editor opens files: `load_image`, then `load_mask` for the
/// decoded size (or 8×8 when the image did not decode).
pub fn image(data: &[u8]) {
    let path = scratch_file("input.png", data);
    let size = match files::load_image(&path) {
        Ok(img) => img.dimensions(),
        Err(_) => (8, 8),
    };
    let _ = files::load_mask(&path, size);
}

/// The official checkpoint reader: opens the bytes as a `.ckpt` and reads every tensor of its
/// state dict.
pub fn ckpt(data: &[u8]) {
    let path = scratch_file("scale1.ckpt", data);
    let Ok(ckpt) = Checkpoint::open(&path) else {
        return;
    };
    let keys: Vec<String> = ckpt.keys().into_iter().map(str::to_owned).collect();
    let _ = ckpt.skipped_keys();
    for key in keys {
        let _ = ckpt.info(&key);
        let _ = ckpt.get(&key);
    }
}

/// The files of the base model folders [`model`] mutates: `(folder, file)`.
pub const MODEL_FILES: [(&str, &str); 10] = [
    ("f32", "model.json"),
    ("f32", "tokenizer.json"),
    ("f32", "vqgan.safetensors"),
    ("f32", "stage1.safetensors"),
    ("f32", "stage2.safetensors"),
    ("q8_0", "model.json"),
    ("q8_0", "tokenizer.json"),
    ("q8_0", "vqgan.safetensors"),
    ("q8_0", "stage1.gguf"),
    ("q8_0", "stage2.gguf"),
];

/// The base model folders of [`model`]: `model/f32` (safetensors) and `model/q8_0` (stages
/// in GGUF), small text-conditional models made by `examples/make_corpus.rs`.
pub fn base_model_dir(variant: &str) -> PathBuf {
    crate_dir().join("model").join(variant)
}

/// The original bytes of [`MODEL_FILES`], read once.
fn base_model() -> &'static [Vec<u8>] {
    static BASE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASE.get_or_init(|| {
        MODEL_FILES
            .iter()
            .map(|(variant, file)| {
                let path = base_model_dir(variant).join(file);
                std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "fuzz setup: cannot read {} ({e}); run `cargo run -p tessera-fuzz \
                         --example make_corpus`",
                        path.display()
                    )
                })
            })
            .collect()
    })
}

/// A Tessera model folder with one file replaced: byte 0 (mod 10) picks the file of
/// [`MODEL_FILES`], the remaining bytes are its new content. The folder is opened, its
/// tokenizer loaded, and every network built (on the CPU, in f32).
pub fn model(data: &[u8]) {
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let base = base_model();
    let pick = usize::from(selector) % MODEL_FILES.len();
    let (variant, _) = MODEL_FILES[pick];
    let dir = scratch_dir().join(format!("model-{variant}"));
    std::fs::create_dir_all(&dir).expect("cannot create the fuzz model folder");
    // (Re)writes the pristine folder, then the fuzzed file.
    for (i, (v, file)) in MODEL_FILES.iter().enumerate() {
        if *v == variant {
            let bytes = if i == pick { content } else { &base[i] };
            std::fs::write(dir.join(file), bytes).expect("cannot write the fuzz model folder");
        }
    }
    let Ok(source) = ModelSource::open(&dir) else {
        return;
    };
    let card = source.card().clone();
    if let Ok(Some(tokenizer)) = PromptTokenizer::for_model(&dir, &card)
        && let Ok(encoded) = tokenizer.encode("a red heart on blue stripes")
    {
        let _ = card.prefix(1, &Condition::Text(encoded.ids));
    }
    let opts = LoadOptions {
        keep_stored_quantization: true,
        ..LoadOptions::default()
    };
    let _ = source.load(&opts);
}

/// Project files and autosaves (`decode_project`).
pub fn project(data: &[u8]) {
    let _ = project_file::decode_project(data);
}

/// Separates the entries of a [`project_entries`] input.
pub const ENTRY_SEPARATOR: &[u8] = b"@@tessera-entry@@";

/// The entry names of a project, in the order [`project_entries`] reads them.
pub const PROJECT_ENTRIES: [&str; 10] = [
    "image.png",
    "mask.png",
    "history.json",
    "last_mask.png",
    "history.bin",
    "candidates.json",
    "candidate-0.png",
    "candidate-1.png",
    "candidate-2.png",
    "candidate-source.png",
];

/// Project files whose entries are fuzzed behind the zip layer: `data` is split at
/// [`ENTRY_SEPARATOR`] into the entries of [`PROJECT_ENTRIES`] (an empty one is left out),
/// which are zipped with valid checksums and decoded. (Raw mutations of a `.tessera` file,
/// as [`project`] makes, rarely get past the zip checksums to the PNG, JSON and history
/// decoders.)
pub fn project_entries(data: &[u8]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut rest = data;
    for name in PROJECT_ENTRIES {
        let (entry, next) = match find(rest, ENTRY_SEPARATOR) {
            Some(i) => (&rest[..i], &rest[i + ENTRY_SEPARATOR.len()..]),
            None => (rest, &[][..]),
        };
        rest = next;
        if entry.is_empty() {
            continue;
        }
        if zip.start_file(name, opts).is_err() || zip.write_all(entry).is_err() {
            return;
        }
    }
    if let Ok(bytes) = zip.finish() {
        let _ = project_file::decode_project(&bytes.into_inner());
    }
}

/// Position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The default model (`assets/model`): its card and prompt tokenizer, loaded once.
fn default_tokenizer() -> &'static (ModelCard, PromptTokenizer) {
    static TOKENIZER: OnceLock<(ModelCard, PromptTokenizer)> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = crate_dir().join("../assets/model");
        let card_path = dir.join(card::CARD_FILE);
        let text = std::fs::read_to_string(&card_path)
            .unwrap_or_else(|e| panic!("fuzz setup: cannot read {}: {e}", card_path.display()));
        let card: ModelCard = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("fuzz setup: {}: {e}", card_path.display()));
        let tokenizer = PromptTokenizer::for_model(&dir, &card)
            .unwrap_or_else(|e| panic!("fuzz setup: the default tokenizer: {e}"))
            .expect("fuzz setup: the default model is not text-conditional");
        (card, tokenizer)
    })
}

/// Prompt encoding with the default model's tokenizer, as the editor and the command line
/// encode prompts: the class word prefix, the ids, the unknown-word ranges, and the
/// conditioning prefix of every level.
pub fn prompt(data: &[u8]) {
    let (card, tokenizer) = default_tokenizer();
    let text = String::from_utf8_lossy(data);
    let class = card.class_names().first().map(String::as_str);
    let _ = card::class_word(&text);
    for prompt in [text.to_string(), card::class_prompt(class, &text)] {
        let Ok(encoded) = tokenizer.encode(&prompt) else {
            continue;
        };
        let _ = encoded.truncated(16);
        for (range, word) in &encoded.unknown {
            assert_eq!(
                prompt.get(range.clone()),
                Some(word.as_str()),
                "unknown-word range {range:?} does not select `{word}` in {prompt:?}"
            );
        }
        for t in 1..=card.levels() {
            let _ = card.prefix(t, &Condition::Text(encoded.ids.clone()));
        }
    }
}
