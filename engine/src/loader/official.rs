//! Official ImageBART releases: a sampling manifest (`checkpoints`, `configs`, stage 1 first),
//! one YAML config per stage, and one Lightning checkpoint per stage. Opening a release reads
//! only the YAMLs and the first checkpoint's tensor table; stage weights are read when a stage is
//! loaded, one checkpoint at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::card::{CARD_FORMAT, Conditioning, ModelCard, Network, StageCard};
use super::pth::Checkpoint;
use crate::schedule::Schedule;
use crate::vqgan::VqganConfig;
use crate::{Error, Result};

#[derive(Deserialize)]
struct Manifest {
    checkpoints: Vec<String>,
    configs: Vec<String>,
}

#[derive(Deserialize)]
struct StageYaml {
    model: ModelYaml,
}

#[derive(Deserialize)]
struct ModelYaml {
    target: String,
    params: ParamsYaml,
}

#[derive(Deserialize)]
struct ParamsYaml {
    n_scales: usize,
    single_scale: usize,
    #[serde(default)]
    redraw_prob: Option<serde_yaml::Value>,
    transformer_config: Targeted<serde_yaml::Value>,
    first_stage_config: Targeted<VqganConfig>,
    #[serde(default)]
    conditioner_config: Option<Targeted<serde_yaml::Value>>,
}

#[derive(Deserialize)]
struct Targeted<P> {
    target: String,
    params: P,
}

/// An opened official release.
#[derive(Debug, Clone)]
pub struct Release {
    /// The manifest file.
    pub manifest: PathBuf,
    /// The card built from the configs and checkpoint buffers.
    pub card: ModelCard,
    /// Stage checkpoints, level 1 first.
    pub checkpoints: Vec<PathBuf>,
    /// Things that look off but do not stop loading (e.g. a config schedule that disagrees
    /// with the checkpoint buffers).
    pub warnings: Vec<String>,
}

/// Resolves a manifest entry: absolute as is; relative against the manifest's folder, then
/// each ancestor (a real release's manifest sits three folders below the repository root).
fn resolve(manifest: &Path, entry: &str) -> Result<PathBuf> {
    let p = Path::new(entry);
    if p.is_absolute() {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::config(manifest, format!("`{entry}` does not exist")))
        };
    }
    let mut dir = manifest.parent();
    while let Some(d) = dir {
        let candidate = d.join(p);
        if candidate.exists() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(Error::config(
        manifest,
        format!("`{entry}` was found neither beside the manifest nor in any folder above it"),
    ))
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_yaml::from_str(&text).map_err(|e| Error::config(path, e))
}

/// What one official stage config says.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// `single_scale`: the level t this stage undoes.
    pub level: usize,
    /// `n_scales`: T.
    pub levels: usize,
    /// The network and its parameters.
    pub network: Network,
    /// `first_stage_config.params`.
    pub vqgan: VqganConfig,
    /// Whether a `ClassProvider` conditioner is configured.
    pub class_conditional: bool,
    /// `redraw_prob` as text, if given.
    pub redraw_prob: Option<String>,
}

/// Reads and checks one official stage config (`configs/<dataset>/…-scale<t>.yaml`).
pub fn read_stage_config(path: &Path) -> Result<StageConfig> {
    let y: StageYaml = read_yaml(path)?;
    let p = y.model.params;
    let (t, levels) = (p.single_scale, p.n_scales);
    if t == 0 || t > levels {
        return Err(Error::config(
            path,
            format!("single_scale = {t} is not a level of n_scales = {levels}"),
        ));
    }
    let target = p.transformer_config.target.rsplit('.').next().unwrap_or("");
    let network = match target {
        "XTransformer" | "ResidualScaledXTransformer" => Network::XTransformer {
            config: serde_yaml::from_value(p.transformer_config.params)
                .map_err(|e| Error::config(path, format!("transformer_config: {e}")))?,
            residual_scaled: target == "ResidualScaledXTransformer",
        },
        "GPT" => Network::Gpt {
            config: serde_yaml::from_value(p.transformer_config.params)
                .map_err(|e| Error::config(path, format!("transformer_config: {e}")))?,
        },
        other => {
            return Err(Error::config(
                path,
                format!("unknown transformer target `{other}`"),
            ));
        }
    };
    let model_kind = y.model.target.rsplit('.').next().unwrap_or("");
    let expected_kind = if t == levels {
        "DecoderOnlyDenoiser"
    } else {
        "DenoisingXTransformer"
    };
    if model_kind != expected_kind {
        return Err(Error::config(
            path,
            format!("stage {t} of {levels} must be a {expected_kind}, found `{model_kind}`"),
        ));
    }
    if let Network::XTransformer {
        config,
        residual_scaled: true,
    } = &network
        && config.n_scales.is_some_and(|n| n < levels)
    {
        return Err(Error::config(
            path,
            "log_scalors has fewer entries than levels",
        ));
    }
    let class_conditional = match p.conditioner_config {
        None => false,
        Some(c) => {
            let kind = c.target.rsplit('.').next().unwrap_or("");
            if kind != "ClassProvider" {
                return Err(Error::config(
                    path,
                    format!(
                        "conditioner `{kind}` is not supported (class-conditional releases use \
                         ClassProvider; no text-conditional release exists)"
                    ),
                ));
            }
            true
        }
    };
    let redraw_prob = p.redraw_prob.and_then(|v| match v {
        serde_yaml::Value::String(s) => Some(s),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    Ok(StageConfig {
        level: t,
        levels,
        network,
        vqgan: p.first_stage_config.params,
        class_conditional,
        redraw_prob,
    })
}

/// Number of parameters implied by a stage's config.
pub fn count_params(network: &Network) -> usize {
    match network {
        Network::XTransformer {
            config: c,
            residual_scaled,
        } => {
            let d = c.dim;
            let ln = 2 * d;
            let attn = |heads: usize| 4 * d * heads * c.dim_head + d;
            let ff = 8 * d * d + 5 * d;
            // Embeddings, blocks, final norm and `to_logits` (the encoder's is stored though unused).
            let enc = (c.enc_num_tokens + c.enc_max_seq_len) * d
                + c.enc_depth * (2 * ln + attn(c.enc_heads) + ff)
                + ln
                + c.enc_num_tokens * (d + 1);
            let dec = (c.dec_num_tokens + c.dec_max_seq_len) * d
                + c.dec_depth * (3 * ln + 2 * attn(c.dec_heads) + ff)
                + ln
                + c.dec_num_tokens * (d + 1);
            enc + dec
                + if *residual_scaled {
                    c.n_scales.unwrap_or(0)
                } else {
                    0
                }
        }
        Network::Gpt { config: c } => {
            let n = c.n_embd;
            let vin = c.input_vocab_size.unwrap_or(c.vocab_size);
            vin * n
                + c.block_size * n
                + c.n_layer * (4 * (n * n + n) + 2 * (4 * n * n) + 5 * n + 4 * n)
                + 2 * n
                + c.vocab_size * n
        }
    }
}

impl Release {
    /// Opens the release described by a sampling manifest.
    pub fn open(manifest: impl AsRef<Path>) -> Result<Self> {
        let manifest = manifest.as_ref().to_path_buf();
        let m: Manifest = read_yaml(&manifest)?;
        if m.checkpoints.is_empty() || m.checkpoints.len() != m.configs.len() {
            return Err(Error::config(
                &manifest,
                format!(
                    "needs as many checkpoints as configs (≥ 1); found {} and {}",
                    m.checkpoints.len(),
                    m.configs.len()
                ),
            ));
        }
        let checkpoints = m
            .checkpoints
            .iter()
            .map(|c| resolve(&manifest, c))
            .collect::<Result<Vec<_>>>()?;
        let config_paths = m
            .configs
            .iter()
            .map(|c| resolve(&manifest, c))
            .collect::<Result<Vec<_>>>()?;
        let levels = checkpoints.len();
        let mut warnings = Vec::new();
        let mut stages = Vec::with_capacity(levels);
        let mut vqgan: Option<VqganConfig> = None;
        let mut conditioning = Conditioning::None;
        let mut redraw_probs = Vec::with_capacity(levels);
        for (i, path) in config_paths.iter().enumerate() {
            let t = i + 1;
            let c = read_stage_config(path)?;
            if c.level != t || c.levels != levels {
                return Err(Error::config(
                    path,
                    format!(
                        "is stage {} of {} (single_scale / n_scales), but the manifest lists it \
                         as stage {t} of {levels}",
                        c.level, c.levels
                    ),
                ));
            }
            let parameters = count_params(&c.network);
            stages.push(StageCard {
                level: t,
                network: c.network,
                weights: String::new(),
                parameters,
            });
            match &vqgan {
                None => vqgan = Some(c.vqgan),
                Some(v) if *v != c.vqgan => warnings.push(format!(
                    "{}: first_stage_config differs from stage 1's; stage 1's VQGAN is used",
                    path.display()
                )),
                Some(_) => {}
            }
            if c.class_conditional {
                conditioning = Conditioning::Class {
                    n_classes: 0,
                    class_names: Vec::new(),
                    null_class: None,
                };
            }
            redraw_probs.push(c.redraw_prob);
        }
        let vqgan = vqgan.ok_or_else(|| Error::config(&manifest, "no stages"))?;

        // The first checkpoint gives K (the remap table) and the schedule buffers.
        let first = Checkpoint::open(&checkpoints[0])?;
        let n_tokens = match first.info("first_stage_model.quantize.used") {
            Some((shape, _)) if shape.len() == 1 => shape[0],
            Some((shape, _)) => {
                return Err(Error::ShapeMismatch {
                    path: checkpoints[0].clone(),
                    key: "first_stage_model.quantize.used".into(),
                    expected: vec![0],
                    found: shape.to_vec(),
                });
            }
            None => {
                return Err(Error::MissingKey {
                    path: checkpoints[0].clone(),
                    key: "first_stage_model.quantize.used".into(),
                });
            }
        };
        let buffers = read_schedule(&first)?;
        let schedule = resolve_schedule(buffers, &redraw_probs, &config_paths, &mut warnings)?;
        drop(first);

        if let Conditioning::Class {
            n_classes,
            class_names,
            ..
        } = &mut conditioning
        {
            // Class ids share the token table with codes and scale tokens, so the smallest
            // input table bounds them.
            *n_classes = stages
                .iter()
                .map(|s| match &s.network {
                    Network::XTransformer { config, .. } => config.enc_num_tokens,
                    Network::Gpt { config } => config.input_vocab_size.unwrap_or(config.vocab_size),
                })
                .min()
                .unwrap_or(0);
            if *n_classes == crate::imagenet::N_CLASSES {
                *class_names = crate::imagenet::class_names();
            }
        }
        // `sampling.yaml` says nothing; its folder does (golden cases, unpacked releases).
        let stem = manifest
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let name = match stem.as_deref() {
            Some("sampling") | None => manifest
                .parent()
                .and_then(|p| p.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "release".into()),
            Some(s) => s.to_owned(),
        };
        let card = ModelCard {
            format: CARD_FORMAT.into(),
            name,
            description: "Official ImageBART release (CompVis/imagebart)".into(),
            vqgan,
            n_tokens,
            stages,
            schedule,
            conditioning,
            dtype: "f32".into(),
            provenance: format!("official release, manifest {}", manifest.display()),
            license: "see the official release".into(),
            sampling: None,
            guidance_scale: None,
            chains: None,
            recognizer: None,
        };
        card.validate().map_err(|e| Error::config(&manifest, e))?;
        Ok(Self {
            manifest,
            card,
            checkpoints,
            warnings,
        })
    }

    /// Opens the checkpoint of level `t` (1-based).
    pub fn checkpoint(&self, t: usize) -> Result<Arc<Checkpoint>> {
        let path = self
            .checkpoints
            .get(t.wrapping_sub(1))
            .ok_or_else(|| Error::Input(format!("no stage {t}")))?;
        Ok(Arc::new(Checkpoint::open(path)?))
    }
}

/// "stage 2" or "stages 1–5" / "stages 1, 3" (1-based levels).
fn stage_list(levels: &[usize]) -> String {
    match levels {
        [one] => format!("stage {one}"),
        [first, .., last] if last - first + 1 == levels.len() => {
            format!("stages {first}–{last}")
        }
        _ => {
            let list: Vec<String> = levels.iter().map(|l| l.to_string()).collect();
            format!("stages {}", list.join(", "))
        }
    }
}

/// The schedule a release runs with. The official sampler uses the checkpoints' `alphats` /
/// `alphacum` buffers whatever the configs say, and so does Tessera; each distinct
/// `redraw_prob` among the stage configs is read too, and one that gives a different schedule
/// (or does not parse) becomes one warning naming its stages, both schedules and the one used.
/// Without buffers, the configs decide and must agree.
fn resolve_schedule(
    buffers: Option<Schedule>,
    redraw_probs: &[Option<String>],
    config_paths: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<Schedule> {
    let levels = redraw_probs.len();
    // Distinct redraw_prob texts, in stage order, with the levels that give each.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, r) in redraw_probs.iter().enumerate() {
        let Some(r) = r.as_deref() else { continue };
        match groups.iter_mut().find(|(text, _)| *text == r) {
            Some((_, stages)) => stages.push(i + 1),
            None => groups.push((r, vec![i + 1])),
        }
    }
    let config_name = |stages: &[usize]| match stages {
        [one] => format!(
            "{} ({})",
            config_paths[one - 1]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stage_list(stages)
        ),
        _ => format!("the configs of {}", stage_list(stages)),
    };
    let Some(buffers) = buffers else {
        let mut parsed: Option<Schedule> = None;
        for (text, stages) in &groups {
            let path = &config_paths[stages[0] - 1];
            let s = Schedule::from_redraw_prob(text, levels).map_err(|e| {
                Error::config(
                    path,
                    format!("{e} (and the checkpoint has no `alphats`/`alphacum` buffers)"),
                )
            })?;
            match &parsed {
                Some(p) if p.max_abs_diff(&s).is_none_or(|d| d > SCHEDULE_TOLERANCE) => {
                    return Err(Error::config(
                        path,
                        format!(
                            "redraw_prob `{text}` gives {}, other stages' configs give {}, and the \
                             checkpoint has no `alphats`/`alphacum` buffers to settle it",
                            s.describe(),
                            p.describe()
                        ),
                    ));
                }
                Some(_) => {}
                None => parsed = Some(s),
            }
        }
        return parsed.ok_or_else(|| {
            Error::config(
                &config_paths[0],
                "no schedule: neither `alphats`/`alphacum` buffers nor redraw_prob",
            )
        });
    };
    let buffer_names = "the checkpoint's `alphats`/`alphacum` buffers";
    for (text, stages) in &groups {
        match Schedule::from_redraw_prob(text, levels) {
            Ok(c)
                if buffers
                    .max_abs_diff(&c)
                    .is_some_and(|d| d <= SCHEDULE_TOLERANCE) => {}
            Ok(c) => warnings.push(format!(
                "schedule in {}: redraw_prob `{text}` gives {}, but {buffer_names} hold {}; \
                 Tessera uses the buffers, as the official sampler does",
                config_name(stages),
                c.describe(),
                buffers.describe()
            )),
            Err(e) => warnings.push(format!(
                "schedule in {}: {e}; Tessera uses {buffer_names} ({}), as the official sampler \
                 does",
                config_name(stages),
                buffers.describe()
            )),
        }
    }
    Ok(buffers)
}

/// Schedules closer than this agree (float32 rounding of the same formula).
const SCHEDULE_TOLERANCE: f32 = 1e-6;

/// Reads the `alphats` / `alphacum` buffers, if the checkpoint has them.
fn read_schedule(ckpt: &Checkpoint) -> Result<Option<Schedule>> {
    if !(ckpt.contains("alphats") && ckpt.contains("alphacum")) {
        return Ok(None);
    }
    let read = |k: &str| -> Result<Vec<f32>> {
        Ok(ckpt
            .get(k)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let s = Schedule {
        alphats: read("alphats")?,
        alphacum: read("alphacum")?,
    };
    s.validate().map_err(|e| Error::bad_file(ckpt.path(), e))?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(n: usize) -> Vec<PathBuf> {
        (1..=n)
            .map(|t| PathBuf::from(format!("c-scale{t}.yaml")))
            .collect()
    }

    fn some(texts: &[&str]) -> Vec<Option<String>> {
        texts.iter().map(|t| Some(t.to_string())).collect()
    }

    #[test]
    fn stage_lists() {
        assert_eq!(stage_list(&[2]), "stage 2");
        assert_eq!(stage_list(&[1, 2, 3]), "stages 1–3");
        assert_eq!(stage_list(&[1, 3]), "stages 1, 3");
    }

    #[test]
    fn without_buffers_the_configs_decide_and_must_agree() {
        let mut w = Vec::new();
        let s = resolve_schedule(None, &some(&["geometric"; 3]), &paths(3), &mut w).unwrap();
        assert_eq!(s, Schedule::geometric(3));
        let s = resolve_schedule(
            None,
            &[None, Some("alphacum:1,0.5,0".into())],
            &paths(2),
            &mut w,
        )
        .unwrap();
        assert_eq!(s.alphacum, vec![1.0, 0.5, 0.0]);
        assert!(w.is_empty(), "{w:?}");

        let e = resolve_schedule(
            None,
            &some(&["geometric", "alphacum:1,0.7,0"]),
            &paths(2),
            &mut w,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("c-scale2.yaml") && e.contains("ᾱ = [1, 0.7, 0]"),
            "{e}"
        );
        let e = resolve_schedule(None, &some(&["alphacum:0.5,0"; 2]), &paths(2), &mut w)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`alphacum:1,0.5,0`") && e.contains("no `alphats`"),
            "{e}"
        );
        assert!(resolve_schedule(None, &[None, None], &paths(2), &mut w).is_err());
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn buffers_win_and_each_disagreeing_text_is_one_warning() {
        let buffers = Schedule::from_redraw_prob("alphacum:1,0.5,0.25,0", 3).unwrap();
        let mut w = Vec::new();
        let s = resolve_schedule(
            Some(buffers.clone()),
            &some(&["geometric", "nonsense", "geometric"]),
            &paths(3),
            &mut w,
        )
        .unwrap();
        assert_eq!(s, buffers);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("stages 1, 3") && w[0].contains("`geometric`"),
            "{}",
            w[0]
        );
        assert!(w[1].contains("c-scale2.yaml (stage 2)"), "{}", w[1]);
        assert!(
            w.iter().all(|m| m.contains("ᾱ = [1, 0.5, 0.25, 0]")),
            "{w:?}"
        );
        w.clear();
        resolve_schedule(
            Some(buffers),
            &some(&["alphacum:1.0,0.5,0.25,0.0"; 3]),
            &paths(3),
            &mut w,
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
    }
}
