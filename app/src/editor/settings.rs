//! Generation settings (what the guidance panel edits and a job is built from) and the editor's
//! small persistent configuration (recent files, overlay colour, hotkeys).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keymap::Keymap;
use tessera_engine::inpaint::WindowOptions;
use tessera_engine::loader::card::{Condition, Conditioning, ModelCard, class_prompt};
use tessera_engine::pipeline::{ChainRequest, default_chains};
use tessera_engine::sampler::LevelParams;
use tessera_engine::text::PromptTokenizer;

/// How the seed changes between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedMode {
    /// The same seed every run.
    Fixed,
    /// A new random seed every run.
    Random,
    /// Seed + 1 after every run.
    Increment,
}

/// Sampling settings of one level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSetting {
    /// Softmax temperature.
    pub temperature: f32,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Top-p (1 = off).
    pub top_p: f32,
    /// Chain passes of this level's stage.
    pub chains: usize,
}

/// Named per-level presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Temperature 1, no truncation, the default chain counts ([`default_chains`]).
    Default,
    /// Cooler sampling with top-k: closer to the surroundings.
    Conservative,
    /// Hotter at the coarse levels: more varied results.
    Creative,
    /// The official sampler: temperature only at the GPT stage, one pass per level.
    Fast,
}

impl Preset {
    /// All presets, for menus.
    pub const ALL: [Preset; 4] = [
        Preset::Default,
        Preset::Conservative,
        Preset::Creative,
        Preset::Fast,
    ];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Default => "Default",
            Preset::Conservative => "Conservative",
            Preset::Creative => "Creative",
            Preset::Fast => "Fast (1 pass)",
        }
    }
}

/// Everything a generation depends on besides the document and the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenSettings {
    /// Prompt (text-conditional models).
    pub prompt: String,
    /// Class id (class-conditional models); `None` = no class (needs a null class).
    pub class: Option<usize>,
    /// Seed of the next run.
    pub seed: u64,
    /// How the seed changes after a run.
    pub seed_mode: SeedMode,
    /// Number of candidates.
    pub candidates: usize,
    /// Classifier-free guidance scale (1 = off).
    pub guidance_scale: f32,
    /// Negative prompt (text models): what guidance steers away from; used only with a
    /// guidance scale ≠ 1. Empty = the empty prompt (plain classifier-free guidance).
    #[serde(default)]
    pub negative_prompt: String,
    /// Negative class (class models): what guidance steers away from; used only with a
    /// guidance scale ≠ 1. `None` = no class (needs a null class).
    #[serde(default)]
    pub negative_class: Option<usize>,
    /// Strength of inpainting as levels to redo: `Some(k)` starts the chain at level k from
    /// the noised current content (k = 1: fine detail only); `None` = all T levels (new
    /// content). Not used when sampling whole images.
    #[serde(default)]
    pub strength: Option<usize>,
    /// Per level, `levels[t-1]` for level t.
    pub levels: Vec<LevelSetting>,
    /// Context around the mask, as a fraction of its bounding box.
    pub padding: f32,
    /// Feather width in pixels.
    pub feather_px: u32,
    /// Use the whole image as context.
    pub whole_image: bool,
    /// Fraction of a token's patch that must be masked for it to be regenerated.
    pub token_threshold: f32,
    /// Match the fill's colours to the surroundings before compositing (off by default).
    #[serde(default)]
    pub colour_match: bool,
}

impl Default for GenSettings {
    fn default() -> Self {
        let w = WindowOptions::default();
        Self {
            prompt: String::new(),
            class: None,
            seed: 0,
            seed_mode: SeedMode::Increment,
            candidates: tessera_engine::pipeline::DEFAULT_CANDIDATES,
            guidance_scale: 1.0,
            negative_prompt: String::new(),
            negative_class: None,
            strength: None,
            levels: Vec::new(),
            padding: w.padding,
            feather_px: w.feather_px,
            whole_image: false,
            token_threshold: w.token_threshold,
            colour_match: w.colour_match,
        }
    }
}

impl GenSettings {
    /// Defaults for a model: its levels with the default chain counts, its recommended
    /// guidance.
    pub fn for_card(card: &ModelCard) -> Self {
        let mut s = Self::default();
        s.fit_card(card);
        s.guidance_scale = card.guidance_scale.unwrap_or(1.0);
        s
    }

    /// Makes the per-level list match the card (keeps what fits) and drops a class the card
    /// does not have.
    pub fn fit_card(&mut self, card: &ModelCard) {
        let chains = default_chains(card);
        if self.levels.len() != card.levels() {
            let rec = recommended(card);
            self.levels = chains
                .iter()
                .map(|&chains| LevelSetting {
                    chains,
                    ..rec.clone()
                })
                .collect();
        }
        if self.strength.is_some_and(|k| k == 0 || k >= card.levels()) {
            self.strength = None;
        }
        match &card.conditioning {
            Conditioning::Class { n_classes, .. } => {
                if self.negative_class.is_some_and(|c| c >= *n_classes) {
                    self.negative_class = None;
                }
                if self.class.is_some_and(|c| c >= *n_classes) {
                    self.class = None;
                }
                if self.class.is_none() {
                    self.class = Some(0);
                }
            }
            Conditioning::Text { class_names, .. } => {
                if self.class.is_some_and(|c| c >= class_names.len()) {
                    self.class = None;
                }
            }
            _ => self.class = None,
        }
    }

    /// Applies a preset to every level; Default is the card's recommended sampling, if any.
    pub fn apply_preset(&mut self, preset: Preset, card: &ModelCard) {
        let t = card.levels();
        let chains = default_chains(card);
        self.levels = (1..=t)
            .map(|level| {
                // 0 = finest (level 1) … 1 = coarsest (level T).
                let coarse = if t > 1 {
                    (level - 1) as f32 / (t - 1) as f32
                } else {
                    1.0
                };
                let (temperature, top_k, top_p, chains) = match preset {
                    Preset::Default => {
                        let r = recommended(card);
                        (r.temperature, r.top_k, r.top_p, chains[level - 1])
                    }
                    Preset::Conservative => (0.85, 100, 1.0, chains[level - 1]),
                    Preset::Creative => (1.0 + 0.2 * coarse, 0, 0.95, chains[level - 1]),
                    Preset::Fast => (1.0, 0, 1.0, 1),
                };
                LevelSetting {
                    temperature,
                    top_k,
                    top_p,
                    chains,
                }
            })
            .collect();
        if matches!(preset, Preset::Default) {
            self.guidance_scale = card.guidance_scale.unwrap_or(1.0);
        }
    }

    /// The context window options.
    pub fn window_options(&self) -> WindowOptions {
        WindowOptions {
            whole_image: self.whole_image,
            padding: self.padding,
            feather_px: self.feather_px,
            token_threshold: self.token_threshold,
            colour_match: self.colour_match,
            ..WindowOptions::default()
        }
    }

    /// The condition for `card`; text prompts go through `tokenizer`.
    pub fn condition(
        &self,
        card: &ModelCard,
        tokenizer: Option<&PromptTokenizer>,
    ) -> Result<Condition, String> {
        match &card.conditioning {
            Conditioning::None => Ok(Condition::None),
            Conditioning::Class { .. } => Ok(self.class.map_or(Condition::None, Condition::Class)),
            Conditioning::Text { class_names, .. } => {
                // A text model with class words takes the category as the prompt's first word.
                let class = self
                    .class
                    .and_then(|c| class_names.get(c))
                    .map(String::as_str);
                let prompt = class_prompt(class, &self.prompt);
                if prompt.is_empty() {
                    return Ok(Condition::None);
                }
                let tok = tokenizer.ok_or("the model's tokenizer is not loaded")?;
                let enc = tok.encode(&prompt).map_err(|e| e.to_string())?;
                Ok(Condition::Text(enc.ids))
            }
        }
    }

    /// The negative condition for `card` ([`ChainRequest::negative`]): the negative class or
    /// prompt when the guidance scale is not 1, otherwise none (the setting is kept but unused).
    pub fn negative_condition(
        &self,
        card: &ModelCard,
        tokenizer: Option<&PromptTokenizer>,
    ) -> Result<Condition, String> {
        if self.guidance_scale == 1.0 {
            return Ok(Condition::None);
        }
        match &card.conditioning {
            Conditioning::None => Ok(Condition::None),
            Conditioning::Class { .. } => Ok(self
                .negative_class
                .map_or(Condition::None, Condition::Class)),
            Conditioning::Text { .. } => {
                let prompt = self.negative_prompt.trim();
                if prompt.is_empty() {
                    return Ok(Condition::None);
                }
                let tok = tokenizer.ok_or("the model's tokenizer is not loaded")?;
                let enc = tok.encode(prompt).map_err(|e| e.to_string())?;
                Ok(Condition::Text(enc.ids))
            }
        }
    }

    /// Levels an inpainting run redoes (k of T): the strength, or all T.
    pub fn redo_levels(&self, levels: usize) -> usize {
        self.strength.map_or(levels, |k| k.clamp(1, levels.max(1)))
    }

    /// The strength to put in an inpainting job (`JobKind::Inpaint::start_level`): `None` for
    /// the full chain.
    pub fn start_level(&self, levels: usize) -> Option<usize> {
        let k = self.redo_levels(levels);
        (k < levels).then_some(k)
    }

    /// The engine request for one run with `seed`.
    pub fn chain_request(
        &self,
        card: &ModelCard,
        tokenizer: Option<&PromptTokenizer>,
        seed: u64,
    ) -> Result<ChainRequest, String> {
        let mut req = ChainRequest::new(card);
        req.condition = self.condition(card, tokenizer)?;
        req.guidance_scale = self.guidance_scale;
        req.negative = self.negative_condition(card, tokenizer)?;
        req.contrast =
            tessera_engine::fit::vocabulary(card, tokenizer).map_err(|e| e.to_string())?;
        req.concept = tessera_engine::recognizer::request_concept(card, self.class, &self.prompt);
        req.candidates = self.candidates;
        req.seed = seed;
        if self.levels.len() != card.levels() {
            return Err("the level settings do not match the model".into());
        }
        req.levels = self
            .levels
            .iter()
            .map(|l| LevelParams {
                temperature: l.temperature,
                top_k: (l.top_k > 0).then_some(l.top_k),
                top_p: (l.top_p < 1.0).then_some(l.top_p),
            })
            .collect();
        req.chains = self.levels.iter().map(|l| l.chains).collect();
        req.validate(card).map_err(|e| e.to_string())?;
        Ok(req)
    }

    /// The seed to use for this run; advances the stored seed as the mode says.
    pub fn take_seed(&mut self) -> u64 {
        let seed = match self.seed_mode {
            SeedMode::Random => random_seed(),
            _ => self.seed,
        };
        match self.seed_mode {
            SeedMode::Fixed => {}
            SeedMode::Random => self.seed = seed,
            SeedMode::Increment => self.seed = seed.wrapping_add(1),
        }
        seed
    }

    /// Chain passes per candidate summed over the levels (the preflight's cost per token).
    pub fn passes(&self) -> usize {
        self.levels.iter().map(|l| l.chains).sum()
    }

    /// Chain passes per candidate summed over the levels an inpainting run redoes (levels
    /// 1..=k with the strength k): the inpainting preflight's cost per token.
    pub fn inpaint_passes(&self) -> usize {
        let k = self.redo_levels(self.levels.len());
        self.levels.iter().take(k).map(|l| l.chains).sum()
    }
}

/// A seed from the clock (no extra dependency; splitmix64 of the nanoseconds).
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 1_000_000_000
}

/// Display names of a level: level T is the coarsest.
pub fn level_name(level: usize, levels: usize) -> &'static str {
    if level >= levels {
        "coarse"
    } else if level <= 1 {
        "fine"
    } else {
        "middle"
    }
}

/// How the editor loads a model's transformer weights: a standing preference, kept in the
/// config, applied at every load (a model stored quantized loads as stored whatever it says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadWeights {
    /// The weights as the model stores them.
    #[default]
    AsStored,
    /// Linear layers quantized to 8-bit blocks as they load: about a quarter of the memory,
    /// faster per token, logits within ~1e-4 bits of KL.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit k-quant blocks where a layer's width allows, 8-bit elsewhere.
    #[serde(rename = "q4k")]
    Q4K,
}

impl LoadWeights {
    /// Every choice, in menu order.
    pub const ALL: [Self; 3] = [Self::AsStored, Self::Q8_0, Self::Q4K];

    /// What the menu shows.
    pub fn label(self) -> &'static str {
        match self {
            Self::AsStored => "as stored",
            Self::Q8_0 => "q8_0 — quantize at load",
            Self::Q4K => "q4k — quantize at load",
        }
    }

    /// The engine's quantization for this choice.
    pub fn quantization(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType;
        match self {
            Self::AsStored => None,
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4K => Some(GgmlDType::Q4K),
        }
    }
}

/// The editor's persistent preferences, `config.json` in the config folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Most recent first.
    pub recent: Vec<PathBuf>,
    /// Mask overlay colour (RGB).
    pub mask_colour: [u8; 3],
    /// Mask overlay opacity 0..1.
    pub mask_opacity: f32,
    /// Last model opened.
    pub last_model: Option<PathBuf>,
    /// Hotkeys: action name → `"Ctrl+Shift+Z"`-style keys (one string or a list). Missing
    /// actions keep their defaults; bad entries are skipped (see
    /// [`Keymap::take_problems`]).
    pub hotkeys: Keymap,
    /// How models' transformer weights are loaded.
    pub load_weights: LoadWeights,
    /// Keep only the running stage resident (released-size models on machines with little
    /// memory; each level then loads its stage).
    pub low_memory: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            recent: Vec::new(),
            mask_colour: [255, 40, 80],
            mask_opacity: 0.45,
            last_model: None,
            hotkeys: Keymap::default(),
            load_weights: LoadWeights::AsStored,
            low_memory: false,
        }
    }
}

/// Most entries kept in the recent-files list.
pub const MAX_RECENT: usize = 10;

impl Config {
    /// Reads `dir/config.json`; defaults when missing or unreadable.
    pub fn load(dir: &Path) -> Self {
        std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `dir/config.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        super::files::write_atomic(&dir.join("config.json"), &bytes)
    }

    /// Puts `path` at the front of the recent list.
    pub fn add_recent(&mut self, path: &Path) {
        self.recent.retain(|p| p != path);
        self.recent.insert(0, path.to_path_buf());
        self.recent.truncate(MAX_RECENT);
    }
}

/// The card's recommended sampling as a level setting (one chain; the network's own
/// distribution when the card has none).
fn recommended(card: &ModelCard) -> LevelSetting {
    let s = card.sampling.unwrap_or_default();
    LevelSetting {
        temperature: s.temperature,
        top_k: s.top_k.unwrap_or(0),
        top_p: s.top_p.unwrap_or(1.0),
        chains: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cards_recommended_sampling_is_the_default_preset() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model");
        let mut card = tessera_engine::loader::ModelSource::open(&dir)
            .unwrap()
            .card()
            .clone();
        let want = LevelParams {
            temperature: 0.9,
            top_k: Some(50),
            top_p: Some(0.8),
        };
        card.sampling = Some(want);
        card.guidance_scale = Some(2.5);
        let mut s = GenSettings::for_card(&card);
        let req = s.chain_request(&card, None, 1).unwrap();
        assert_eq!(req.levels, vec![want; card.levels()]);
        assert_eq!(s.guidance_scale, 2.5);
        s.apply_preset(Preset::Creative, &card);
        s.guidance_scale = 4.0;
        assert_ne!(s.chain_request(&card, None, 1).unwrap().levels, req.levels);
        s.apply_preset(Preset::Default, &card);
        assert_eq!(s.chain_request(&card, None, 1).unwrap().levels, req.levels);
        assert_eq!(
            s.guidance_scale, 2.5,
            "the default preset is the card's guidance too"
        );
        // Without a recommendation: the network's own distribution, no guidance.
        card.sampling = None;
        card.guidance_scale = None;
        let s = GenSettings::for_card(&card);
        let req = s.chain_request(&card, None, 1).unwrap();
        assert!(req.levels.iter().all(|l| *l == LevelParams::default()));
        assert_eq!(s.guidance_scale, 1.0);
    }

    #[test]
    fn requests_name_the_concept_the_recognizer_ranks_by() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model");
        let source = tessera_engine::loader::ModelSource::open(&dir).unwrap();
        let card = source.card().clone();
        let tok = PromptTokenizer::for_model(&dir, &card).unwrap();
        let names = card.class_names().to_vec();
        let at = |n: &str| names.iter().position(|c| c == n);
        let mut s = GenSettings::for_card(&card);
        s.prompt = "a kitten on blue".into();
        let req = s.chain_request(&card, tok.as_ref(), 1).unwrap();
        assert_eq!(req.concept, at("cat face"));
        // The class picked wins over the prompt.
        s.class = at("rocket");
        let req = s.chain_request(&card, tok.as_ref(), 1).unwrap();
        assert_eq!(req.concept, at("rocket"));
        // A prompt that names no concept: ranked by the stages' fit.
        s.class = None;
        s.prompt = "something blue".into();
        let req = s.chain_request(&card, tok.as_ref(), 1).unwrap();
        assert_eq!(req.concept, None);
    }

    #[test]
    fn seed_modes_advance() {
        let mut s = GenSettings {
            seed: 7,
            ..GenSettings::default()
        };
        s.seed_mode = SeedMode::Fixed;
        assert_eq!((s.take_seed(), s.take_seed()), (7, 7));
        s.seed_mode = SeedMode::Increment;
        assert_eq!((s.take_seed(), s.take_seed()), (7, 8));
        assert_eq!(s.seed, 9);
    }

    #[test]
    fn recent_list_is_bounded_and_unique() {
        let mut c = Config::default();
        for i in 0..15 {
            c.add_recent(Path::new(&format!("/x/{i}.png")));
        }
        c.add_recent(Path::new("/x/12.png"));
        assert_eq!(c.recent.len(), MAX_RECENT);
        assert_eq!(c.recent[0], Path::new("/x/12.png"));
        assert_eq!(c.recent.iter().filter(|p| p.ends_with("12.png")).count(), 1);
    }

    #[test]
    fn hotkeys_round_trip_through_the_config_file() {
        use crate::editor::keymap::{Action, Binding};
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.hotkeys
            .set(Action::Zoom200, 0, Binding::parse("Alt+2").unwrap())
            .unwrap();
        c.save(dir.path()).unwrap();
        let mut back = Config::load(dir.path());
        assert_eq!(back, c);
        assert!(back.hotkeys.take_problems().is_empty());
        // An old config without hotkeys gets the defaults; a bad entry keeps the rest.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"mask_opacity": 0.5, "hotkeys": {"undo": "Ctrl+Nope"}}"#,
        )
        .unwrap();
        let mut old = Config::load(dir.path());
        assert_eq!(old.mask_opacity, 0.5);
        assert!(old.hotkeys.is_default());
        assert_eq!(old.hotkeys.take_problems().len(), 1);
    }
}
