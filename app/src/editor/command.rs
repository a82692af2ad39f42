//! What a panel, a menu, a button or a shortcut asks the editor to do. Panels read the editor's
//! state and send these instead of changing it; `EditorApp::apply` is the one place that
//! carries them out, so a test can drive the editor by commands as a user drives it by clicks.

use std::path::PathBuf;

use super::action::Action;
use super::files::Purpose;
use super::mask_ops::GlobalOp;

/// One thing the editor is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// What a hotkey does (menus and buttons with a shortcut send the same).
    Run(Action),
    /// Ask the user for a file (a dialog), then act on it.
    Ask(Purpose),
    /// Act on a file the user chose (save, export, import to …).
    Act(Purpose, PathBuf),
    /// Open an image or project.
    OpenPath(PathBuf),
    /// Restore the recovery project of a crashed session.
    Restore(PathBuf),
    /// Decline the recovery project (delete it).
    DiscardRecovery(PathBuf),
    /// Cancel the running job and everything queued.
    CancelAll,
    /// Empty the queue (the running job goes on).
    ClearQueue,
    /// Remove one queued request.
    RemoveQueued(usize),
    /// Accept candidate `i` (one undoable edit).
    Accept(usize),
    /// Discard the results.
    Discard,
    /// Run accepted generation `i` again with its settings and seed.
    RunAgain(usize),
    /// Show candidate `i`.
    SelectCandidate(usize),
    /// Show a level of the selected candidate (`None`: the result).
    ViewLevel(Option<usize>),
    /// Accept candidate `i`, mask its tokens less sure than the threshold, generate again.
    RepaintUnsure(usize, f32),
    /// A whole-mask operation.
    MaskOp(GlobalOp),
    /// Load a model folder or manifest.
    LoadModel(PathBuf),
    /// Open or close the Models window.
    ShowModels(bool),
    /// Download and install an official release (by name).
    DownloadModel(String),
    /// Stop the running download or import (a partial download is kept).
    CancelModelTask,
    /// Ask, then remove an installed model (by name).
    RemoveModel(String),
    /// Remove an installed model (confirmed).
    RemoveModelConfirmed(String),
    /// Merge the Select tool's proposal into the mask.
    ApplySelection,
    /// Write the preferences to `config.json`.
    SaveConfig,
    /// Close the error list.
    DismissErrors,
    /// A line in the status bar.
    Info(String),
    /// An error for the error list.
    Error(String),
}
