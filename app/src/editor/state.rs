//! State the panels show and the app keeps, in its own module so that both can name it
//! without importing each other: the loaded model as the UI knows it, messages, and the
//! question the app waits on.

use std::path::PathBuf;

use tessera_engine::loader::card::ModelCard;
use tessera_engine::text::PromptTokenizer;

use super::files::Purpose;

/// The loaded model, as the UI knows it.
#[derive(Default)]
pub struct ModelState {
    /// Where it was loaded from.
    pub path: Option<PathBuf>,
    /// Its card, once loaded.
    pub card: Option<ModelCard>,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
    /// A load in progress.
    pub loading: Option<PathBuf>,
    /// Tokenizer of a text-conditional model.
    pub tokenizer: Option<PromptTokenizer>,
    /// Why the last load failed.
    pub error: Option<String>,
    /// An import in progress (output folder).
    pub importing: Option<PathBuf>,
    /// How an import stores the stage weights.
    pub import_weights: crate::editor::files::ImportWeights,
    /// How the loaded model holds its transformer weights (from the engine).
    pub weights: Option<String>,
}

impl ModelState {
    /// Whether the model path is an official manifest (can be imported).
    pub fn is_official(&self) -> bool {
        self.path.as_deref().is_some_and(|p| {
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                || p.join("sampling.yaml").is_file()
        })
    }
}

/// A message in the status bar / error list.
#[derive(Debug, Clone)]
pub struct Message {
    /// Text.
    pub text: String,
    /// Whether it is an error (stays until dismissed).
    pub error: bool,
}

/// A question the app waits on.
#[derive(Debug, Clone)]
pub enum Confirm {
    /// The save target exists.
    Overwrite(Purpose, PathBuf),
    /// A recovery project from a crashed session exists.
    Restore(PathBuf),
    /// Removing an installed model (its name) frees its disk space for good.
    RemoveModel(String),
}
