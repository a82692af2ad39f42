//! Tessera's model card: the small JSON file that describes a model folder — architecture of
//! every stage, schedule, conditioning, token ids, provenance and license. Official releases
//! are described by the same structure, built from their YAML configs, so everything after
//! loading treats both alike.

use serde::{Deserialize, Serialize};

use crate::gpt::GptConfig;
use crate::recognizer::RecognizerCard;
use crate::sampler::LevelParams;
use crate::schedule::Schedule;
use crate::vqgan::VqganConfig;
use crate::xtransformer::XTransformerConfig;

/// The `format` string written into every card.
pub const CARD_FORMAT: &str = "tessera-imagebart/1";
/// File name of the card inside a model folder.
pub const CARD_FILE: &str = "model.json";
/// File name of the VQGAN weights inside a model folder.
pub const VQGAN_FILE: &str = "vqgan.safetensors";
/// Largest size [`ModelCard::validate`] accepts for any dimension, vocabulary, length or count
/// of a card (and for a stage's parameter count in units of 2¹⁶): 2²⁰, far above every released
/// model, and small enough that products of a few such sizes cannot overflow.
pub const MAX_CARD_SIZE: usize = 1 << 20;

/// Describes one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Always [`CARD_FORMAT`].
    pub format: String,
    /// Short human-readable name.
    pub name: String,
    /// Longer description.
    #[serde(default)]
    pub description: String,
    /// The first stage; `n_embed` entries of which `n_tokens` are used.
    pub vqgan: VqganConfig,
    /// K: size of the remapped vocabulary the stages read and write.
    pub n_tokens: usize,
    /// The stages, level 1 first (`stages[t-1]` undoes level t).
    pub stages: Vec<StageCard>,
    /// The diffusion schedule, T + 1 entries.
    pub schedule: Schedule,
    /// What the prefix after the scale token holds.
    pub conditioning: Conditioning,
    /// Storage type of the transformer weights (`f32`, `f16`, `bf16`).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Where the weights come from.
    #[serde(default)]
    pub provenance: String,
    /// License of the weights.
    #[serde(default)]
    pub license: String,
    /// Sampling settings its authors recommend for every level, the default of the editor,
    /// the command line and `tessera eval`; absent = the network's own distribution (as the
    /// official releases are sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<LevelParams>,
    /// Classifier-free guidance scale its authors recommend (measured by `tessera eval`): the
    /// default of the editor and the command line; absent = 1 (no guidance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
    /// Inpainting chain passes per level (index t − 1) its authors recommend (measured by
    /// `tessera eval`): the default of the editor, the command line and `tessera eval`;
    /// absent = the official script's counts ([`crate::pipeline::default_chains`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chains: Option<Vec<usize>>,
    /// The concept recognizer that ranks a request's candidates
    /// ([`crate::recognizer`]); absent = candidates ranked by the stages' own likelihoods
    /// ([`crate::fit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recognizer: Option<RecognizerCard>,
}

fn default_dtype() -> String {
    "f32".into()
}

/// One stage of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCard {
    /// The level t this stage undoes (1-based; also its scale token).
    pub level: usize,
    /// Its network.
    pub network: Network,
    /// Weights file inside the model folder (empty for official releases).
    #[serde(default)]
    pub weights: String,
    /// Number of parameters, for `tessera info`.
    #[serde(default)]
    pub parameters: usize,
}

/// The network of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Network {
    /// Encoder–decoder stage (t < T); `residual_scaled` selects `ResidualScaledXTransformer`.
    XTransformer {
        /// The official `transformer_config.params`.
        config: XTransformerConfig,
        /// Whether the stage adds the residual logit term and learned logit scales.
        residual_scaled: bool,
    },
    /// Decoder-only last stage (t = T).
    Gpt {
        /// The official `transformer_config.params`.
        config: GptConfig,
    },
}

/// What follows the scale token in every stage's conditioning prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conditioning {
    /// Nothing: the prefix is `[t]`.
    None,
    /// One class id, embedded with the token table: the prefix is `[t, class]`.
    Class {
        /// Valid class ids are `0..n_classes`.
        n_classes: usize,
        /// Optional display names, `class_names[i]` for id i.
        #[serde(default)]
        class_names: Vec<String>,
        /// Id of the "no class" token, for models trained with the condition dropped
        /// (unconditional sampling and classifier-free guidance); none in official releases.
        #[serde(default)]
        null_class: Option<usize>,
    },
    /// Text tokens from a tokenizer shipped with the model: the prefix is `[t, tokens…]`.
    Text {
        /// `tokenizer.json` inside the model folder.
        tokenizer: String,
        /// Number of text tokens (padded / truncated).
        context_len: usize,
        /// Added to tokenizer ids to place them in the token table.
        token_offset: usize,
        /// Id (before the offset) used for padding and for the empty condition.
        pad_id: usize,
        /// Categories the model also takes, each as a leading word of the prompt
        /// ([`class_word`]); empty for plain text models.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        class_names: Vec<String>,
    },
}

/// The word that stands for a category at the start of a prompt of a text model with
/// `class_names`: `class_` and the name in lower case, every run of other characters an `_`
/// (one word for the tokenizer: "Food & Drink" → `class_food_drink`).
pub fn class_word(name: &str) -> String {
    let mut word = String::from("class");
    let mut gap = true;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if gap {
                word.push('_');
            }
            word.push(c);
            gap = false;
        } else {
            gap = true;
        }
    }
    word
}

/// The prompt a text model with class words is given: the category's word, then the prompt.
pub fn class_prompt(class_name: Option<&str>, prompt: &str) -> String {
    match class_name {
        Some(name) => format!("{} {}", class_word(name), prompt.trim())
            .trim()
            .to_string(),
        None => prompt.trim().to_string(),
    }
}

impl Conditioning {
    /// Number of prefix tokens after the scale token.
    pub fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Class { .. } => 1,
            Self::Text { context_len, .. } => *context_len,
        }
    }

    /// Whether the prefix carries no condition.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The conditioning prefix of stage `t` of a `levels`-stage chain: `[t, (class | text
    /// tokens)]`, as token ids of the stage's input table (the scale token and the condition
    /// share it with the image codes).
    pub fn prefix(
        &self,
        t: usize,
        levels: usize,
        condition: &Condition,
    ) -> Result<Vec<u32>, String> {
        if t == 0 || t > levels {
            return Err(format!("level {t} is not in 1..={levels}"));
        }
        let mut prefix = vec![t as u32];
        match (self, condition) {
            (Conditioning::None, Condition::None) => {}
            (Conditioning::None, _) => {
                return Err("this model is unconditional; it takes no class or prompt".into());
            }
            (Conditioning::Class { n_classes, .. }, Condition::Class(c)) => {
                if c >= n_classes {
                    return Err(format!("class {c} is not in 0..{n_classes}"));
                }
                prefix.push(*c as u32);
            }
            (Conditioning::Class { null_class, .. }, Condition::None) => match null_class {
                Some(n) => prefix.push(*n as u32),
                None => {
                    return Err(
                        "this model is class-conditional and was not trained without a class; \
                         pick a class"
                            .into(),
                    );
                }
            },
            (Conditioning::Class { .. }, Condition::Text(_)) => {
                return Err("this model takes a class, not a prompt".into());
            }
            (
                Conditioning::Text {
                    context_len,
                    token_offset,
                    pad_id,
                    ..
                },
                cond,
            ) => {
                let ids: &[u32] = match cond {
                    Condition::Text(ids) => ids,
                    Condition::None => &[],
                    Condition::Class(_) => {
                        return Err("this model takes a prompt, not a class".into());
                    }
                };
                let offset = *token_offset as u32;
                prefix.extend(
                    ids.iter()
                        .copied()
                        .chain(std::iter::repeat(*pad_id as u32))
                        .take(*context_len)
                        .map(|id| id + offset),
                );
            }
        }
        Ok(prefix)
    }
}

/// What one request conditions on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No condition (or the empty condition of a model trained with dropped conditions).
    None,
    /// A class id.
    Class(usize),
    /// Tokenizer ids of a prompt (before the card's offset).
    Text(Vec<u32>),
}

impl ModelCard {
    /// The conditioning prefix of stage `t`: `[t, (class | text tokens)]`, as token ids of the
    /// stage's input table (scale token and condition share it with the image codes).
    pub fn prefix(&self, t: usize, condition: &Condition) -> Result<Vec<u32>, String> {
        self.conditioning.prefix(t, self.levels(), condition)
    }

    /// Names of the categories the model takes: a class model's classes, or a text model's
    /// class words; empty when it takes none.
    pub fn class_names(&self) -> &[String] {
        match &self.conditioning {
            Conditioning::Class { class_names, .. } | Conditioning::Text { class_names, .. } => {
                class_names
            }
            Conditioning::None => &[],
        }
    }

    /// Number of levels T.
    pub fn levels(&self) -> usize {
        self.stages.len()
    }

    /// Length of the conditioning prefix (scale token included).
    pub fn prefix_len(&self) -> usize {
        1 + self.conditioning.len()
    }

    /// Side of the token grid (16 for the releases).
    pub fn grid_side(&self) -> usize {
        self.vqgan.latent_size()
    }

    /// Number of image tokens per grid.
    pub fn n_positions(&self) -> usize {
        self.grid_side() * self.grid_side()
    }

    /// Image resolution the model works at.
    pub fn resolution(&self) -> usize {
        self.vqgan.ddconfig.resolution
    }

    /// Total parameter count of the transformer stages.
    pub fn transformer_parameters(&self) -> usize {
        self.stages.iter().map(|s| s.parameters).sum()
    }

    /// Checks that the stages fit together; the message says what does not.
    pub fn validate(&self) -> Result<(), String> {
        self.check_sizes()?;
        if let Some(Err(e)) = self.sampling.map(|s| s.validate()) {
            return Err(format!("sampling: {e}"));
        }
        if let Some(g) = self
            .guidance_scale
            .filter(|g| !(g.is_finite() && *g >= 0.0))
        {
            return Err(format!(
                "guidance_scale must be a finite number ≥ 0, got {g}"
            ));
        }
        let t_max = self.levels();
        if t_max == 0 {
            return Err("the model has no stages".into());
        }
        if let Some(chains) = &self.chains {
            if chains.len() != t_max {
                return Err(format!(
                    "chains lists {} levels but there are {t_max} stages",
                    chains.len()
                ));
            }
            let max = crate::pipeline::MAX_CHAINS;
            if let Some(c) = chains.iter().find(|c| !(1..=max).contains(*c)) {
                return Err(format!("chains: passes must be 1..={max}, got {c}"));
            }
        }
        if self.schedule.levels() != t_max {
            return Err(format!(
                "schedule has {} levels but there are {t_max} stages",
                self.schedule.levels()
            ));
        }
        self.schedule.validate()?;
        if let Some(r) = &self.recognizer {
            r.validate(self.n_tokens, self.grid_side())?;
            let classes = match &self.conditioning {
                Conditioning::Class { n_classes, .. } => Some(*n_classes),
                Conditioning::Text { class_names, .. } if !class_names.is_empty() => {
                    Some(class_names.len())
                }
                _ => None,
            };
            if let Some(n) = classes.filter(|&n| n != r.concepts.len()) {
                return Err(format!(
                    "recognizer: {} concepts for a model of {n} classes",
                    r.concepts.len()
                ));
            }
        }
        let prefix = self.prefix_len();
        let positions = self.n_positions();
        for (i, stage) in self.stages.iter().enumerate() {
            let t = i + 1;
            if stage.level != t {
                return Err(format!("stage {t} is labelled level {}", stage.level));
            }
            match (&stage.network, t == t_max) {
                (Network::XTransformer { config, .. }, false) => {
                    let input_vocab = config.enc_num_tokens;
                    if config.dec_num_tokens != self.n_tokens {
                        return Err(format!(
                            "stage {t}: dec_num_tokens = {} but the VQGAN uses {} codes",
                            config.dec_num_tokens, self.n_tokens
                        ));
                    }
                    if config.enc_max_seq_len < prefix + positions {
                        return Err(format!(
                            "stage {t}: enc_max_seq_len = {} is shorter than prefix {prefix} + {positions} tokens",
                            config.enc_max_seq_len
                        ));
                    }
                    if config.dec_max_seq_len < positions {
                        return Err(format!(
                            "stage {t}: dec_max_seq_len = {} is shorter than {positions} tokens",
                            config.dec_max_seq_len
                        ));
                    }
                    self.check_input_vocab(t, input_vocab)?;
                }
                (Network::Gpt { config }, true) => {
                    if config.vocab_size != self.n_tokens {
                        return Err(format!(
                            "stage {t}: vocab_size = {} but the VQGAN uses {} codes",
                            config.vocab_size, self.n_tokens
                        ));
                    }
                    if config.block_size < prefix + positions - 1 {
                        return Err(format!(
                            "stage {t}: block_size = {} is shorter than prefix {prefix} + {} tokens",
                            config.block_size,
                            positions - 1
                        ));
                    }
                    self.check_input_vocab(
                        t,
                        config.input_vocab_size.unwrap_or(config.vocab_size),
                    )?;
                }
                (Network::Gpt { .. }, false) => {
                    return Err(format!(
                        "stage {t} is a GPT, but only the last stage (T = {t_max}) may be"
                    ));
                }
                (Network::XTransformer { .. }, true) => {
                    return Err(format!(
                        "the last stage (T = {t_max}) must be a GPT, found an XTransformer"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Bounds every size a card gives ([`MAX_CARD_SIZE`]; channel and attention widths as
    /// products too), so that the shapes and counts computed from a malformed card cannot
    /// overflow (`n_positions`, `ch * ch_mult`, weight element counts, parameter sums).
    fn check_sizes(&self) -> Result<(), String> {
        let mut sizes: Vec<(String, usize)> = vec![
            ("n_tokens".into(), self.n_tokens),
            ("stages".into(), self.stages.len()),
            ("vqgan.embed_dim".into(), self.vqgan.embed_dim),
            ("vqgan.n_embed".into(), self.vqgan.n_embed),
        ];
        let dds = std::iter::once(("ddconfig", &self.vqgan.ddconfig)).chain(
            self.vqgan
                .decoder_ddconfig
                .iter()
                .map(|d| ("decoder_ddconfig", d)),
        );
        for (name, dd) in dds {
            for (field, v) in [
                ("z_channels", dd.z_channels),
                ("resolution", dd.resolution),
                ("in_channels", dd.in_channels),
                ("out_ch", dd.out_ch),
                ("ch", dd.ch),
                ("num_res_blocks", dd.num_res_blocks),
                ("norm_groups", dd.norm_groups),
                ("ch_mult entries", dd.ch_mult.len()),
            ] {
                sizes.push((format!("vqgan.{name}.{field}"), v));
            }
            for &m in &dd.ch_mult {
                let channels = dd.ch.saturating_mul(m);
                sizes.push((format!("vqgan.{name}.ch * ch_mult"), channels));
            }
        }
        for stage in &self.stages {
            let t = stage.level;
            sizes.push((
                format!("stage {t} parameters / 2^16"),
                stage.parameters >> 16,
            ));
            let fields: Vec<(&str, usize)> = match &stage.network {
                Network::XTransformer { config: c, .. } => vec![
                    ("dim", c.dim),
                    ("enc_num_tokens", c.enc_num_tokens),
                    ("enc_depth", c.enc_depth),
                    ("enc_max_seq_len", c.enc_max_seq_len),
                    ("dec_num_tokens", c.dec_num_tokens),
                    ("dec_depth", c.dec_depth),
                    ("dec_max_seq_len", c.dec_max_seq_len),
                    (
                        "enc_heads * dim_head",
                        c.enc_heads.saturating_mul(c.dim_head),
                    ),
                    (
                        "dec_heads * dim_head",
                        c.dec_heads.saturating_mul(c.dim_head),
                    ),
                ],
                Network::Gpt { config: c } => vec![
                    ("vocab_size", c.vocab_size),
                    ("block_size", c.block_size),
                    ("n_layer", c.n_layer),
                    ("n_head", c.n_head),
                    ("n_embd", c.n_embd),
                    ("input_vocab_size", c.input_vocab_size.unwrap_or(0)),
                    ("n_unmasked", c.n_unmasked),
                ],
            };
            for (field, v) in fields {
                sizes.push((format!("stage {t} {field}"), v));
            }
        }
        match &self.conditioning {
            Conditioning::None => {}
            Conditioning::Class {
                n_classes,
                null_class,
                ..
            } => {
                sizes.push(("n_classes".into(), *n_classes));
                sizes.push(("null_class".into(), null_class.unwrap_or(0)));
            }
            Conditioning::Text {
                context_len,
                token_offset,
                pad_id,
                ..
            } => {
                sizes.push(("context_len".into(), *context_len));
                sizes.push(("token_offset".into(), *token_offset));
                sizes.push(("pad_id".into(), *pad_id));
            }
        }
        match sizes.into_iter().find(|(_, v)| *v > MAX_CARD_SIZE) {
            Some((name, v)) => Err(format!(
                "{name} = {v} is larger than a model can be (at most {MAX_CARD_SIZE})"
            )),
            None => Ok(()),
        }
    }

    fn check_input_vocab(&self, t: usize, input_vocab: usize) -> Result<(), String> {
        let need = match &self.conditioning {
            Conditioning::None => self.n_tokens.max(self.levels() + 1),
            Conditioning::Class { n_classes, .. } => (*n_classes).max(self.n_tokens),
            Conditioning::Text { .. } => self.n_tokens,
        };
        if input_vocab < need {
            return Err(format!(
                "stage {t}: input vocabulary of {input_vocab} cannot hold {need} token ids"
            ));
        }
        Ok(())
    }
}
