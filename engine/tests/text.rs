//! Text conditioning: word-level training, loading `tokenizer.json`, encoding prompts, and the
//! conditioning prefix built from them.

use std::path::{Path, PathBuf};

use tessera_engine::Error;
use tessera_engine::loader::ModelSource;
use tessera_engine::loader::card::{Condition, Conditioning, ModelCard};
use tessera_engine::text::{PromptTokenizer, train_word_level};

const CONTEXT_LEN: usize = 8;

fn captions() -> Vec<String> {
    [
        "cat face and red apple on blue to green",
        "A red apple, on a green table.",
        "Blue cat face",
        "green to blue",
    ]
    .map(String::from)
    .to_vec()
}

/// A trained tokenizer saved as `tokenizer.json` in a fresh folder.
fn saved_tokenizer() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    train_word_level(&captions(), 1)
        .unwrap()
        .save(&path, true)
        .unwrap();
    (dir, path)
}

fn uncond_card() -> ModelCard {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/uncond_geometric");
    ModelSource::open(&case).unwrap().card().clone()
}

fn text_card(tokenizer: &str) -> ModelCard {
    let mut card = uncond_card();
    card.conditioning = Conditioning::Text {
        tokenizer: tokenizer.into(),
        context_len: CONTEXT_LEN,
        token_offset: 0,
        pad_id: 0,
        class_names: vec![],
    };
    card
}

#[test]
fn training_builds_a_deterministic_vocabulary() {
    let a = train_word_level(&captions(), 1).unwrap();
    let b = train_word_level(&captions(), 1).unwrap();
    assert_eq!(a.token_to_id("[PAD]"), Some(0));
    assert_eq!(a.token_to_id("[UNK]"), Some(1));
    for word in ["cat", "face", "red", "apple", "blue", "green", ",", "."] {
        assert!(a.token_to_id(word).is_some(), "{word} missing");
    }
    // Lowercased: "A" and "a" are one word.
    assert!(a.token_to_id("A").is_none());
    assert_eq!(a.get_vocab(true), b.get_vocab(true));
    // The most frequent words come first: "blue" and "green" (3 each) before "cat" (2).
    assert!(a.token_to_id("blue").unwrap() < a.token_to_id("cat").unwrap());

    // min_count drops rare words.
    let c = train_word_level(&captions(), 2).unwrap();
    assert!(c.token_to_id("table").is_none());
    assert!(c.token_to_id("apple").is_some());
    assert!(c.get_vocab_size(true) < a.get_vocab_size(true));

    // No captions: only the two special tokens.
    assert_eq!(train_word_level(&[], 1).unwrap().get_vocab_size(true), 2);
}

#[test]
fn encodes_known_and_unknown_words() {
    let (_dir, path) = saved_tokenizer();
    let tok = PromptTokenizer::from_file(&path).unwrap();
    let red = tok.token_to_id("red").unwrap();
    let apple = tok.token_to_id("apple").unwrap();
    assert_eq!(
        tok.vocab_size(),
        train_word_level(&captions(), 1)
            .unwrap()
            .get_vocab_size(true)
    );

    let e = tok.encode("Red apple").unwrap();
    assert_eq!(e.ids, vec![red, apple]);
    assert!(e.unknown.is_empty());
    assert!(!e.truncated(CONTEXT_LEN));

    // Whitespace is normalised; the unknown word keeps its byte range in the prompt as typed.
    let prompt = "  Red\t\tZebra  apple ";
    let e = tok.encode(prompt).unwrap();
    assert_eq!(e.ids, vec![red, 1, apple]);
    assert_eq!(e.unknown, vec![(7..12, "Zebra".to_string())]);
    assert_eq!(&prompt[e.unknown[0].0.clone()], "Zebra");

    // Multi-byte characters before and inside an unknown word.
    let prompt = "Grün  red Äpfel";
    let e = tok.encode(prompt).unwrap();
    assert_eq!(e.ids, vec![1, red, 1]);
    let words: Vec<&str> = e.unknown.iter().map(|(r, _)| &prompt[r.clone()]).collect();
    assert_eq!(words, ["Grün", "Äpfel"]);
    assert_eq!(e.unknown[1].1, "Äpfel");

    // Empty and blank prompts: nothing.
    for prompt in ["", "   \n\t "] {
        let e = tok.encode(prompt).unwrap();
        assert!(
            e.ids.is_empty() && e.unknown.is_empty(),
            "{prompt:?}: {e:?}"
        );
        assert!(!e.truncated(CONTEXT_LEN));
    }

    // A long prompt is reported as truncated.
    let e = tok.encode(&"red apple ".repeat(20)).unwrap();
    assert_eq!(e.ids.len(), 40);
    assert!(e.truncated(CONTEXT_LEN));
    assert!(!e.truncated(40));
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, b"{\"model\": {\"type\": \"WordLevel\", \"vocab\": ").unwrap();
    let err = PromptTokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let missing = dir.path().join("absent.json");
    let err = PromptTokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.json"), "{err}");
}

#[test]
fn model_cards_select_the_tokenizer() {
    let (dir, path) = saved_tokenizer();

    let card = uncond_card();
    assert!(
        PromptTokenizer::for_model(dir.path(), &card)
            .unwrap()
            .is_none()
    );

    let card = text_card("tokenizer.json");
    let tok = PromptTokenizer::for_model(dir.path(), &card)
        .unwrap()
        .expect("a text card has a tokenizer");
    assert_eq!(tok.path(), path);
    let encoded = tok.encode("red apple on a green table").unwrap();
    let prefix = card
        .prefix(1, &Condition::Text(encoded.ids.clone()))
        .unwrap();
    assert_eq!(prefix.len(), 1 + CONTEXT_LEN);
    assert_eq!(prefix.len(), card.prefix_len());
    assert_eq!(prefix[0], 1);
    assert_eq!(&prefix[1..1 + encoded.ids.len()], &encoded.ids[..]);
    assert!(prefix[1 + encoded.ids.len()..].iter().all(|&id| id == 0));

    let long = tok.encode(&"red apple ".repeat(10)).unwrap();
    assert!(long.truncated(CONTEXT_LEN));
    let prefix = card.prefix(2, &Condition::Text(long.ids.clone())).unwrap();
    assert_eq!(prefix.len(), 1 + CONTEXT_LEN);
    assert_eq!(&prefix[1..], &long.ids[..CONTEXT_LEN]);

    // A missing file, a name outside the folder, and a tokenizer too large for the table.
    let err = PromptTokenizer::for_model(dir.path(), &text_card("other.json")).unwrap_err();
    assert!(err.to_string().contains("other.json"), "{err}");
    let err = PromptTokenizer::for_model(dir.path(), &text_card("../tokenizer.json")).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let mut card = text_card("tokenizer.json");
    if let Conditioning::Text { token_offset, .. } = &mut card.conditioning {
        *token_offset = 39;
    }
    let err = PromptTokenizer::for_model(dir.path(), &card).unwrap_err();
    assert!(err.to_string().contains("token_offset"), "{err}");
}
