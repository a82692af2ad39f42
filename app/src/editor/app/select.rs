//! The Select object tool's keys while it has points: accept applies the selection to the
//! mask, cancel drops the points.

use super::EditorApp;
use crate::editor::keymap::Action;
use crate::editor::tools::Tool;

/// The accept keys (Enter) apply and the cancel keys (Esc) drop the points while the tool
/// has points (before the app's own accept/cancel shortcuts).
pub(crate) fn keys(app: &mut EditorApp, ctx: &egui::Context) {
    if app.tools.tool != Tool::Select
        || app.select.points.is_empty()
        || app.confirm.is_some()
        || ctx.egui_wants_keyboard_input()
        || crate::editor::panels::capturing(ctx)
    {
        return;
    }
    let actions = ctx.input_mut(|i| {
        app.config
            .hotkeys
            .consume(i, false, |a| matches!(a, Action::Accept | Action::Cancel))
    });
    for action in actions {
        match action {
            Action::Accept => app.apply(crate::editor::command::Command::ApplySelection),
            _ => app.select.clear(),
        }
    }
}
