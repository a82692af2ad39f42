//! Text conditioning: turns a prompt into the tokenizer ids that
//! [`ModelCard::prefix`](crate::loader::card::ModelCard::prefix) places after the scale token.
//!
//! A text-conditional model ships a Hugging Face `tokenizer.json` in its folder, named by the
//! card's [`Conditioning::Text`] entry. [`PromptTokenizer`] loads it and encodes prompts; the
//! [`Encoded`] report lists the words the tokenizer does not know, so the editor can underline
//! them, and tells whether the prompt is longer than the model's context.
//! [`train_word_level`] builds the small word-level tokenizer the default model is trained with.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use tokenizers::models::ModelWrapper;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::{Lowercase, NFKC, NormalizerWrapper, Sequence};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{
    Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer,
};

use crate::loader::card::{Conditioning, ModelCard, Network};
use crate::{Error, Result};

/// Padding token of tokenizers made by [`train_word_level`] (id 0).
pub const PAD_TOKEN: &str = "[PAD]";
/// Unknown-word token of tokenizers made by [`train_word_level`] (id 1).
pub const UNK_TOKEN: &str = "[UNK]";

/// A model's tokenizer, ready to encode prompts.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    /// Id of the model's unknown token, when it has one.
    unk_id: Option<u32>,
    /// Whether [`encode`](Self::encode) lowercases (the tokenizer's normalizer does not).
    lowercase: bool,
    /// Where the tokenizer was loaded from, for error messages.
    path: PathBuf,
}

/// A prompt encoded by [`PromptTokenizer::encode`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Tokenizer ids (before the card's `token_offset`), not padded or truncated.
    pub ids: Vec<u32>,
    /// Words the tokenizer does not know (mapped to its unknown token): byte ranges into the
    /// prompt as given, and the word as written there — the editor underlines them.
    pub unknown: Vec<(Range<usize>, String)>,
}

impl Encoded {
    /// Whether the prompt has more tokens than `context_len` allows, so that
    /// [`ModelCard::prefix`] drops its end.
    pub fn truncated(&self, context_len: usize) -> bool {
        self.ids.len() > context_len
    }
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` (Hugging Face tokenizers format). Truncation and padding
    /// settings stored in the file are dropped: the model card decides both.
    ///
    /// Errors ([`Error::Io`], [`Error::BadFile`]) name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let not_tokenizer = |e: &dyn std::fmt::Display| {
            Error::bad_file(
                path,
                format!("not a tokenizer.json (Hugging Face tokenizers format): {e}"),
            )
        };
        // `tokenizers` panics (`expect("Helper")`) on some malformed JSON instead of failing:
        // the syntax is checked first, and any panic left is an error too.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| not_tokenizer(&e))?;
        let mut tokenizer = crate::panic::catch(|| Tokenizer::from_bytes(&bytes))
            .map_err(|_| not_tokenizer(&"malformed file"))?
            .map_err(|e| not_tokenizer(&e))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::bad_file(path, e))?;
        tokenizer.with_padding(None);
        Ok(Self {
            unk_id: unk_id(&tokenizer),
            lowercase: !normalizer_lowercases(tokenizer.get_normalizer()),
            tokenizer,
            path: path.to_path_buf(),
        })
    }

    /// For a model folder and its card: loads the tokenizer file the card's
    /// [`Conditioning::Text`] names, relative to `dir`. `Ok(None)` if the card is not
    /// text-conditional.
    ///
    /// Besides the errors of [`from_file`](Self::from_file), fails with [`Error::Config`] when
    /// the card names no file inside the folder, or when the tokenizer does not fit the card:
    /// `pad_id` outside its vocabulary, or `token_offset` + vocabulary larger than a stage's
    /// input table.
    pub fn for_model(dir: &Path, card: &ModelCard) -> Result<Option<Self>> {
        let Conditioning::Text {
            tokenizer,
            token_offset,
            pad_id,
            ..
        } = &card.conditioning
        else {
            return Ok(None);
        };
        let name = Path::new(tokenizer);
        let inside = !tokenizer.is_empty()
            && name
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(Error::config(
                dir,
                format!("the card's tokenizer `{tokenizer}` is not a file inside the model folder"),
            ));
        }
        let path = dir.join(name);
        let this = Self::from_file(&path)?;
        let vocab = this.vocab_size();
        if *pad_id >= vocab {
            return Err(Error::config(
                &path,
                format!("the card's pad_id {pad_id} is not in the tokenizer's {vocab} ids"),
            ));
        }
        let need = token_offset.saturating_add(vocab);
        for stage in &card.stages {
            let table = match &stage.network {
                Network::XTransformer { config, .. } => config.enc_num_tokens,
                Network::Gpt { config } => config.input_vocab_size.unwrap_or(config.vocab_size),
            };
            if table < need {
                return Err(Error::config(
                    &path,
                    format!(
                        "token_offset {token_offset} + {vocab} tokenizer ids do not fit the \
                         {table}-token input table of stage {}",
                        stage.level
                    ),
                ));
            }
        }
        Ok(Some(this))
    }

    /// Encodes a prompt: collapses runs of whitespace (and control characters) to one space,
    /// trims it, lowercases it unless the tokenizer's normalizer does, and returns the ids —
    /// with special tokens only where the tokenizer's post-processor adds them — and the
    /// words it does not know. An empty prompt gives no ids (unless the post-processor adds
    /// special tokens).
    pub fn encode(&self, prompt: &str) -> Result<Encoded> {
        let (text, spans) = normalise(prompt, self.lowercase);
        let encoding = self.tokenizer.encode(text.as_str(), true).map_err(|e| {
            Error::Input(format!(
                "cannot tokenize the prompt with {}: {e}",
                self.path.display()
            ))
        })?;
        let ids = encoding.get_ids().to_vec();
        let mut unknown: Vec<(Range<usize>, String)> = Vec::new();
        if let Some(unk) = self.unk_id {
            let special = encoding.get_special_tokens_mask();
            let words = encoding.get_word_ids();
            let offsets = encoding.get_offsets();
            for (i, &id) in ids.iter().enumerate() {
                if id != unk || special.get(i).is_some_and(|&s| s != 0) {
                    continue;
                }
                // Underline the whole word the unknown piece belongs to.
                let (a, b) = words
                    .get(i)
                    .copied()
                    .flatten()
                    .and_then(|w| encoding.word_to_chars(w, 0))
                    .or_else(|| offsets.get(i).copied())
                    .unwrap_or((0, 0));
                let Some(range) = to_prompt_range(&spans, a, b, prompt) else {
                    continue;
                };
                match unknown.last_mut() {
                    Some((last, _)) if range.start < last.end => {
                        last.end = last.end.max(range.end);
                    }
                    _ => unknown.push((range, String::new())),
                }
            }
            for (range, word) in &mut unknown {
                *word = prompt.get(range.clone()).unwrap_or_default().to_string();
            }
        }
        Ok(Encoded { ids, unknown })
    }

    /// Number of ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of `token`, if the tokenizer has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The underlying Hugging Face tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The file the tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Trains a small word-level tokenizer from captions: words are NFKC-normalised, lowercased
/// and split at whitespace and punctuation (`\w+|[^\w\s]+`); the vocabulary is `[PAD]`
/// (id 0), `[UNK]` (id 1), then every word seen at least `min_count` times, most frequent
/// first (ties alphabetically, so the result does not depend on hashing). Returns the
/// tokenizer, ready to save as `tokenizer.json`.
pub fn train_word_level(captions: &[String], min_count: usize) -> Result<Tokenizer> {
    let normalizer: NormalizerWrapper = Sequence::new(vec![NFKC.into(), Lowercase.into()]).into();
    let pre_tokenizer = Whitespace;
    let training = |e: tokenizers::Error| Error::Input(format!("word-level training: {e}"));

    let mut counts: HashMap<String, usize> = HashMap::new();
    for caption in captions {
        let mut split = PreTokenizedString::from(caption.as_str());
        split
            .normalize(|n| normalizer.normalize(n))
            .map_err(training)?;
        pre_tokenizer.pre_tokenize(&mut split).map_err(training)?;
        for (word, _, _) in split.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            if !word.is_empty() && word != PAD_TOKEN && word != UNK_TOKEN {
                *counts.entry(word.to_string()).or_default() += 1;
            }
        }
    }
    let mut words: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(_, n)| *n >= min_count)
        .collect();
    words.sort_by(|(wa, na), (wb, nb)| nb.cmp(na).then_with(|| wa.cmp(wb)));

    let mut vocab = Vec::with_capacity(words.len() + 2);
    for (i, word) in [PAD_TOKEN.to_string(), UNK_TOKEN.to_string()]
        .into_iter()
        .chain(words.into_iter().map(|(w, _)| w))
        .enumerate()
    {
        let id = u32::try_from(i)
            .map_err(|_| Error::Input("word-level training: too many words for u32 ids".into()))?;
        vocab.push((word, id));
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK_TOKEN.into())
        .build()
        .map_err(training)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(training)?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    Ok(tokenizer)
}

/// The id of the model's unknown token, if it has one in its vocabulary.
fn unk_id(tokenizer: &Tokenizer) -> Option<u32> {
    let token = match tokenizer.get_model() {
        ModelWrapper::BPE(m) => m.unk_token.clone()?,
        ModelWrapper::WordPiece(m) => m.unk_token.clone(),
        ModelWrapper::WordLevel(m) => m.unk_token.clone(),
        // Unigram keeps its unk id private; its serialised form carries it.
        ModelWrapper::Unigram(m) => {
            let id = serde_json::to_value(m).ok()?.get("unk_id")?.as_u64()?;
            return u32::try_from(id).ok();
        }
    };
    tokenizer.token_to_id(&token)
}

/// Whether the normalizer lowercases its input.
fn normalizer_lowercases(normalizer: Option<&NormalizerWrapper>) -> bool {
    match normalizer {
        Some(NormalizerWrapper::Lowercase(_)) => true,
        Some(NormalizerWrapper::BertNormalizer(b)) => b.lowercase,
        Some(NormalizerWrapper::Sequence(s)) => {
            s.as_ref().iter().any(|n| normalizer_lowercases(Some(n)))
        }
        _ => false,
    }
}

/// Collapses whitespace and control characters to single spaces, trims, and lowercases when
/// asked. Returns the text and, for each of its bytes, the byte range of the prompt character
/// it came from.
fn normalise(prompt: &str, lowercase: bool) -> (String, Vec<(usize, usize)>) {
    let mut text = String::with_capacity(prompt.len());
    let mut spans = Vec::with_capacity(prompt.len());
    let mut gap: Option<(usize, usize)> = None;
    for (i, c) in prompt.char_indices() {
        let span = (i, i + c.len_utf8());
        if c.is_whitespace() || c.is_control() {
            gap.get_or_insert(span);
            continue;
        }
        if let Some(g) = gap.take()
            && !text.is_empty()
        {
            text.push(' ');
            spans.push(g);
        }
        let mut push = |c: char| {
            text.push(c);
            spans.extend(std::iter::repeat_n(span, c.len_utf8()));
        };
        if lowercase {
            c.to_lowercase().for_each(&mut push);
        } else {
            push(c);
        }
    }
    (text, spans)
}

/// Maps the byte range `a..b` of the normalised text back onto the prompt, without leading or
/// trailing whitespace; `None` if nothing is left.
fn to_prompt_range(
    spans: &[(usize, usize)],
    a: usize,
    b: usize,
    prompt: &str,
) -> Option<Range<usize>> {
    if a >= b {
        return None;
    }
    let start = spans.get(a)?.0;
    let end = spans.get(b - 1)?.1;
    let slice = prompt.get(start..end)?;
    let start = start + (slice.len() - slice.trim_start().len());
    let end = end - (slice.len() - slice.trim_end().len());
    (start < end).then_some(start..end)
}
