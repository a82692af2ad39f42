//! Tessera's own model format: a folder with `model.json` (the [`ModelCard`]), `vqgan.safetensors`
//! and one `stage{t}.safetensors` per level, memory-mapped when loaded (or, for quantized
//! weights, one `stage{t}.gguf`; see [`super::gguf`]). Tensor names are the
//! official parameter names (dotted module paths), without checkpoint prefixes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Part;
use super::backend::Source;
use super::card::{CARD_FILE, CARD_FORMAT, ModelCard, VQGAN_FILE};
use super::gguf::GgufWeights;
use crate::{Error, Result};

/// An opened model folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The folder.
    pub dir: PathBuf,
    /// Its card.
    pub card: ModelCard,
}

impl Folder {
    /// Reads and validates the card; weight files are mapped when a part is loaded.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let card_path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&card_path).map_err(|e| Error::io(&card_path, e))?;
        let card: ModelCard =
            serde_json::from_str(&text).map_err(|e| Error::config(&card_path, e))?;
        if card.format != CARD_FORMAT {
            return Err(Error::config(
                &card_path,
                format!("format `{}` is not `{CARD_FORMAT}`", card.format),
            ));
        }
        card.validate().map_err(|e| Error::config(&card_path, e))?;
        for stage in &card.stages {
            if stage.weights.is_empty() || stage.weights.contains(['/', '\\']) {
                return Err(Error::config(
                    &card_path,
                    format!(
                        "stage {}: weights must be a file name in the folder",
                        stage.level
                    ),
                ));
            }
        }
        Ok(Self { dir, card })
    }

    /// Path of a part's weights.
    pub fn weights_path(&self, part: Part) -> Result<PathBuf> {
        Ok(match part {
            Part::Vqgan => self.dir.join(VQGAN_FILE),
            Part::Stage(t) => {
                let stage = self
                    .card
                    .stages
                    .get(t.wrapping_sub(1))
                    .ok_or_else(|| Error::Input(format!("the model has no stage {t}")))?;
                self.dir.join(&stage.weights)
            }
        })
    }

    pub(crate) fn source(&self, part: Part) -> Result<Source> {
        let path = self.weights_path(part)?;
        if is_gguf(&path) {
            return Ok(Source::Gguf(Arc::new(GgufWeights::open(path)?)));
        }
        Source::safetensors(path)
    }
}

/// Whether a weights file is GGUF (quantized stages) rather than safetensors.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
