//! Inputs that once made a reader panic, found by fuzzing: each is kept in the corpus
//! (`corpus/<target>/regress_*`) and replayed here by name, through its fuzz target and
//! through the API it broke, which must now return an error instead.

use std::path::PathBuf;

use tessera_engine::loader::pth::Checkpoint;
use tessera_engine::text::PromptTokenizer;

fn seed(target: &str, name: &str) -> PathBuf {
    tessera_fuzz::crate_dir()
        .join("corpus")
        .join(target)
        .join(name)
}

fn replay(target: &str, name: &str) -> Vec<u8> {
    let data = std::fs::read(seed(target, name)).expect("regression seed");
    assert!(tessera_fuzz::run(target, &data));
    tessera_fuzz::remove_scratch_dir();
    data
}

/// candle's pickle reader shifted an `i64` by 64 bits on a LONG1 of 9 bytes (a panic in
/// builds with overflow checks); `Checkpoint::open` now reports a malformed pickle.
#[test]
fn ckpt_long1_longer_than_8_bytes_is_an_error() {
    replay("ckpt", "regress_long1_9_bytes.ckpt");
    let err = Checkpoint::open(seed("ckpt", "regress_long1_9_bytes.ckpt")).unwrap_err();
    assert!(err.to_string().contains("data.pkl"), "{err}");
}

/// candle's `rebuild_args` indexed past a `_rebuild_tensor_v2` call with too few arguments;
/// such an entry is now skipped like any tensor Tessera cannot read.
#[test]
fn ckpt_tensor_with_too_few_rebuild_args_is_skipped() {
    replay("ckpt", "regress_short_rebuild_args.ckpt");
    let ckpt = Checkpoint::open(seed("ckpt", "regress_short_rebuild_args.ckpt")).unwrap();
    assert_eq!(ckpt.skipped_keys(), ["short"]);
    assert_eq!(ckpt.get("ok").unwrap().dims(), [2, 3]);
}

/// A shape whose element count (or whose storage offset in bytes) overflows `usize`: the size
/// check in `Checkpoint::get` overflowed before it could refuse the tensor.
#[test]
fn ckpt_tensor_with_overflowing_shape_is_an_error() {
    replay("ckpt", "regress_overflowing_shape.ckpt");
    let ckpt = Checkpoint::open(seed("ckpt", "regress_overflowing_shape.ckpt")).unwrap();
    let err = ckpt.get("huge").unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    if ckpt.contains("far") {
        assert!(ckpt.get("far").is_err());
    }
    assert_eq!(ckpt.get("ok").unwrap().dims(), [6]);
}

/// `tokenizers` panicked (`expect("Helper")`) on a JSON syntax error inside `"decoder"`;
/// `PromptTokenizer::from_file` now says the file is not a tokenizer.
#[test]
fn tokenizer_with_a_syntax_error_in_its_decoder_is_an_error() {
    let data = replay("model", "regress_tokenizer_decoder_syntax_error");
    let path = tessera_fuzz::scratch_dir().join("tokenizer.json");
    std::fs::write(&path, &data[1..]).unwrap();
    let err = PromptTokenizer::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("not a tokenizer.json"), "{err}");
    tessera_fuzz::remove_scratch_dir();
}

/// Opens the card of a `model` regression seed (selector byte 0 or 5: a `model.json`).
fn open_card(name: &str) -> tessera_engine::Result<tessera_engine::loader::ModelSource> {
    let data = replay("model", name);
    assert_eq!(data[0] % 5, 0, "{name} is not a model.json seed");
    let dir = tessera_fuzz::scratch_dir().join("card");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.json"), &data[1..]).unwrap();
    let opened = tessera_engine::loader::ModelSource::open(&dir);
    tessera_fuzz::remove_scratch_dir();
    opened
}

/// `resolution: 8888888888888888`: `ModelCard::n_positions` (grid side squared) overflowed in
/// `validate`; the card's sizes are now bounded first.
#[test]
fn card_with_a_huge_resolution_is_an_error() {
    let err = open_card("regress_card_huge_resolution").unwrap_err();
    assert!(
        err.to_string().contains("vqgan.ddconfig.resolution"),
        "{err}"
    );
}

/// A `ch_mult` entry of 11111111111111111111: `ch * ch_mult` overflowed in the VQGAN's
/// config check when the model loaded.
#[test]
fn card_with_a_huge_ch_mult_is_an_error() {
    let err = open_card("regress_card_huge_ch_mult").unwrap_err();
    assert!(err.to_string().contains("ch * ch_mult"), "{err}");
}

/// A 42-byte lossless WebP declaring 8737×13321 pixels (inside the side limit) took 6 s and
/// 900 MB to decode (an AFL hang); it is now refused from its header as a decompression bomb.
#[test]
fn image_webp_bomb_is_refused_before_decoding() {
    let data = replay("image", "regress_webp_bomb_8737x13321.webp");
    let t = std::time::Instant::now();
    let err = tessera::editor::files::decode_image(&data).unwrap_err();
    assert!(
        err.contains("8737×13321") && err.contains("decompression bomb"),
        "{err}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
}

/// A 624-byte progressive JPEG made zune-jpeg's AVX2 upsampler fail an assertion (a panic in
/// release too; found by AFL after the WebP fix); the loader now says the file is damaged.
#[test]
fn image_jpeg_that_panics_the_upsampler_is_an_error() {
    let data = replay("image", "regress_jpeg_upsampler_assert.jpg");
    let err = tessera::editor::files::decode_image(&data).unwrap_err();
    assert!(err.contains("damaged"), "{err}");
}
