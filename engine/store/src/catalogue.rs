//! The catalogue of official ImageBART releases (`reference/imagebart.md` §2 and §7): what each
//! one is, the zip that holds its stage checkpoints, where the official README says to get it,
//! and the sampling manifest and stage configs that the zip does not contain (they live in the
//! official repository; copies are built in from `releases/`).
//!
//! Only the stage zip is needed: every stage checkpoint carries the VQGAN as
//! `first_stage_model.*`, with the remap table as `quantize.used`, so `vqgan.zip` would add a
//! second copy of the same weights.
//!
//! A catalogue file (JSON, a list of [`Release`]s; `TESSERA_CATALOGUE` or `--catalogue`) adds
//! releases or replaces built-in ones, e.g. a lab's own mirror or a test server's release.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera_engine::{Error, Result};

/// Where the official README points for every zip.
pub const OFFICIAL_BASE: &str = "https://ommer-lab.com/files/";
/// Environment variable naming another base URL for the official zips (a mirror).
pub const MIRROR_ENV: &str = "TESSERA_MIRROR";
/// Environment variable naming a catalogue file that extends the built-in one.
pub const CATALOGUE_ENV: &str = "TESSERA_CATALOGUE";

/// One release: a chain of stage checkpoints in one zip, with its manifest and configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Short name, also the installed model's folder name (`cin_4_scales_geometric`).
    pub name: String,
    /// What the editor shows (`ImageNet, 4 levels (geometric)`).
    pub title: String,
    /// Training data.
    pub dataset: String,
    /// Image side in pixels.
    pub resolution: u32,
    /// Number of levels (stages) T.
    pub levels: usize,
    /// Schedule of the forward diffusion (`geometric`, `custom`).
    pub schedule: String,
    /// `unconditional` or `class-conditional (1000 ImageNet classes)`.
    pub conditioning: String,
    /// One or two sentences for the editor.
    pub description: String,
    /// File name of the zip.
    pub zip: String,
    /// Where to download it.
    pub url: String,
    /// Download size in bytes, when known (recorded at the first download otherwise).
    #[serde(default)]
    pub size: Option<u64>,
    /// SHA-256 of the zip, when known.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The sampling manifest (YAML): checkpoint and config paths relative to the release root.
    pub manifest: String,
    /// Config files by their path relative to the release root.
    pub configs: BTreeMap<String, String>,
}

impl Release {
    /// The manifest's checkpoint paths, stage 1 first (`models/<name>/scale1.ckpt`).
    pub fn checkpoints(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Manifest {
            checkpoints: Vec<String>,
        }
        let m: Manifest = serde_yaml::from_str(&self.manifest).map_err(|e| {
            Error::Input(format!("release {}: unreadable manifest: {e}", self.name))
        })?;
        Ok(m.checkpoints)
    }
}

/// Built-in manifests and configs, by path under `releases/`.
macro_rules! files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../releases/", $path)))),*]
    };
}

const FILES: &[(&str, &str)] = files![
    "configs/sampling/ffhq/ffhq_4_scales_geometric.yaml",
    "configs/sampling/ffhq/ffhq_2_scales_custom.yaml",
    "configs/sampling/lsun/churches_3_scales.yaml",
    "configs/sampling/lsun/beds_3_scales.yaml",
    "configs/sampling/lsun/cats_3_scales.yaml",
    "configs/sampling/imagenet/imagenet_5_scales_custom.yaml",
    "configs/sampling/imagenet/imagenet_4_scales_geometric.yaml",
    "configs/ffhq/4_scales/ffhq-geometric-scale1.yaml",
    "configs/ffhq/4_scales/ffhq-geometric-scale2.yaml",
    "configs/ffhq/4_scales/ffhq-geometric-scale3.yaml",
    "configs/ffhq/4_scales/ffhq-geometric-scale4.yaml",
    "configs/ffhq/2_scales/ffhq-custom-scale1.yaml",
    "configs/ffhq/2_scales/ffhq-custom-scale2.yaml",
    "configs/lsun-churches/lsun-churches-scale1.yaml",
    "configs/lsun-churches/lsun-churches-scale2.yaml",
    "configs/lsun-churches/lsun-churches-scale3.yaml",
    "configs/lsun-beds/lsun-beds-scale1.yaml",
    "configs/lsun-beds/lsun-beds-scale2.yaml",
    "configs/lsun-beds/lsun-beds-scale3.yaml",
    "configs/lsun-cats/lsun-cats-scale1.yaml",
    "configs/lsun-cats/lsun-cats-scale2.yaml",
    "configs/lsun-cats/lsun-cats-scale3.yaml",
    "configs/imagenet/5_scales/imagenet-custom-scale1.yaml",
    "configs/imagenet/5_scales/imagenet-custom-scale2.yaml",
    "configs/imagenet/5_scales/imagenet-custom-scale3.yaml",
    "configs/imagenet/5_scales/imagenet-custom-scale4.yaml",
    "configs/imagenet/5_scales/imagenet-custom-scale5.yaml",
    "configs/imagenet/4_scales/imagenet_geometric_scale1.yaml",
    "configs/imagenet/4_scales/imagenet_geometric_scale2.yaml",
    "configs/imagenet/4_scales/imagenet_geometric_scale3.yaml",
    "configs/imagenet/4_scales/imagenet_geometric_scale4.yaml",
];

fn file(path: &str) -> &'static str {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
        .unwrap_or_default()
}

/// One built-in release from its manifest; the configs are those the manifest lists.
fn official(
    name: &str,
    manifest: &str,
    (title, dataset, levels, schedule, class): (&str, &str, usize, &str, bool),
    description: &str,
) -> Release {
    // Only keys and list items: the official ImageNet 5-level manifest ends with a stray `>`
    // line that YAML readers refuse.
    let manifest_text: String = file(manifest)
        .lines()
        .filter(|l| l.trim().starts_with("- ") || l.trim_end().ends_with(':'))
        .map(|l| format!("{l}\n"))
        .collect();
    let configs = manifest_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|p| p.trim().trim_matches('"'))
        .filter(|p| p.starts_with("configs/"))
        .map(|p| (p.to_string(), file(p).to_string()))
        .collect();
    let zip = format!("{name}.zip");
    Release {
        name: name.into(),
        title: title.into(),
        dataset: dataset.into(),
        resolution: 256,
        levels,
        schedule: schedule.into(),
        conditioning: if class {
            "class-conditional (1000 ImageNet classes)".into()
        } else {
            "unconditional".into()
        },
        description: description.into(),
        url: format!("{OFFICIAL_BASE}{zip}"),
        zip,
        size: None,
        sha256: None,
        manifest: manifest_text,
        configs,
    }
}

/// The seven official releases.
fn builtin_releases() -> Vec<Release> {
    vec![
        official(
            "ffhq_4_scales_geometric",
            "configs/sampling/ffhq/ffhq_4_scales_geometric.yaml",
            ("Faces (FFHQ), 4 levels", "FFHQ", 4, "geometric", false),
            "Human faces at 256², four levels of 0.2 B parameters each: the smallest official \
             release (about 0.8 B parameters).",
        ),
        official(
            "ffhq_2_scales_custom",
            "configs/sampling/ffhq/ffhq_2_scales_custom.yaml",
            ("Faces (FFHQ), 2 levels", "FFHQ", 2, "custom", false),
            "Human faces at 256² in two large levels (1.3 B parameters).",
        ),
        official(
            "churches_3_scales",
            "configs/sampling/lsun/churches_3_scales.yaml",
            ("Churches (LSUN)", "LSUN churches", 3, "custom", false),
            "Church exteriors at 256², three levels (1.9 B parameters).",
        ),
        official(
            "bedrooms_3_scales",
            "configs/sampling/lsun/beds_3_scales.yaml",
            ("Bedrooms (LSUN)", "LSUN bedrooms", 3, "custom", false),
            "Bedroom interiors at 256², three levels (1.9 B parameters).",
        ),
        official(
            "cats_3_scales",
            "configs/sampling/lsun/cats_3_scales.yaml",
            ("Cats (LSUN)", "LSUN cats", 3, "custom", false),
            "Cats at 256², three levels (1.9 B parameters).",
        ),
        official(
            "cin_5_scales_custom",
            "configs/sampling/imagenet/imagenet_5_scales_custom.yaml",
            ("ImageNet classes, 5 levels", "ImageNet", 5, "custom", true),
            "Any of the 1000 ImageNet classes at 256², five levels (3.1 B parameters); a prompt \
             picks the class it names.",
        ),
        official(
            "cin_4_scales_geometric",
            "configs/sampling/imagenet/imagenet_4_scales_geometric.yaml",
            (
                "ImageNet classes, 4 levels",
                "ImageNet",
                4,
                "geometric",
                true,
            ),
            "Any of the 1000 ImageNet classes at 256², four levels (2.5 B parameters); a prompt \
             picks the class it names.",
        ),
    ]
}

/// The releases Tessera can download.
#[derive(Debug, Clone)]
pub struct Catalogue {
    releases: Vec<Release>,
}

impl Catalogue {
    /// The official releases, with `TESSERA_MIRROR` (if set) in place of the official host.
    pub fn builtin() -> Self {
        let mut releases = builtin_releases();
        if let Some(base) = std::env::var(MIRROR_ENV).ok().filter(|b| !b.is_empty()) {
            let base = if base.ends_with('/') {
                base
            } else {
                format!("{base}/")
            };
            for r in &mut releases {
                r.url = format!("{base}{}", r.zip);
            }
        }
        Self { releases }
    }

    /// The built-in catalogue extended by `file`, or by the file `TESSERA_CATALOGUE` names.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut cat = Self::builtin();
        let env = std::env::var_os(CATALOGUE_ENV).filter(|v| !v.is_empty());
        if let Some(path) = file.map(Path::to_path_buf).or(env.map(Into::into)) {
            cat.extend_from(&path)?;
        }
        Ok(cat)
    }

    /// Adds the releases of a catalogue file; one with a built-in name replaces it.
    pub fn extend_from(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let extra: Vec<Release> = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not a list of releases: {e}")))?;
        for r in extra {
            if !valid_name(&r.name) {
                return Err(Error::config(
                    path,
                    format!(
                        "release name `{}` must be letters, digits, `_`, `-` or `.`",
                        r.name
                    ),
                ));
            }
            r.checkpoints()
                .map_err(|e| Error::config(path, e.to_string()))?;
            self.releases.retain(|b| b.name != r.name);
            self.releases.push(r);
        }
        Ok(())
    }

    /// Every release, official ones first.
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// The release called `name`.
    pub fn get(&self, name: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.name == name)
    }

    /// The release called `name`, or an error listing the names there are.
    pub fn require(&self, name: &str) -> Result<&Release> {
        self.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.releases.iter().map(|r| r.name.as_str()).collect();
            Error::Input(format!(
                "no release called `{name}`; the catalogue has: {}",
                names.join(", ")
            ))
        })
    }

    /// The release whose zip file name is `zip_name`.
    pub fn by_zip(&self, zip_name: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.zip == zip_name)
    }
}

/// Whether `name` can be a folder name in the models folder (no separators, not hidden).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_official_release_is_complete() {
        let cat = Catalogue::builtin();
        assert_eq!(cat.releases().len(), 7);
        for r in cat.releases() {
            let ckpts = r.checkpoints().unwrap();
            assert_eq!(ckpts.len(), r.levels, "{}", r.name);
            assert_eq!(r.configs.len(), r.levels, "{}", r.name);
            for (path, text) in &r.configs {
                assert!(text.contains("transformer_config"), "{} {path}", r.name);
            }
            for c in &ckpts {
                assert!(c.starts_with(&format!("models/{}/scale", r.name)), "{c}");
            }
            assert!(r.url.ends_with(&r.zip) && r.zip == format!("{}.zip", r.name));
        }
        let cin = cat.require("cin_4_scales_geometric").unwrap();
        assert!(cin.conditioning.starts_with("class-conditional"));
        assert!(
            cat.require("nope")
                .unwrap_err()
                .to_string()
                .contains("ffhq_2_scales_custom")
        );
    }

    #[test]
    fn names_cannot_leave_the_models_folder() {
        assert!(valid_name("cin_4_scales_geometric"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\\b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
