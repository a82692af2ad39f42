//! The Select object tool's side of the editor: its keys while it has points, applying the
//! selection to the mask, and its options in the tool panel.

use tessera_engine::segment::{WEIGHTS_FILE, WEIGHTS_SOURCE};

use super::EditorApp;
use crate::editor::files::Purpose;
use crate::editor::keymap::Action;
use crate::editor::mask_ops::PaintMode;
use crate::editor::segment::*;
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
            Action::Accept => apply(app),
            _ => app.select.clear(),
        }
    }
}

/// Applies the selection to the document's mask (undoable).
pub fn apply(app: &mut EditorApp) {
    if let Some(doc) = &mut app.doc {
        app.select.apply(doc, &mut app.history);
    }
}

/// The tool options: weights, mode, points, Apply and Clear.
pub(crate) fn options_ui(app: &mut EditorApp, ui: &mut egui::Ui) {
    let s = &app.select;
    match &s.weights {
        Weights::NotLoaded => {
            ui.label("SAM weights: not loaded");
            ui.small(format!(
                "Get {WEIGHTS_FILE} from {WEIGHTS_SOURCE} and put it in assets/sam/ \
                 (or set {WEIGHTS_ENV} to its path), or load it here."
            ));
        }
        Weights::Loading(_) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("SAM weights: loading…");
            });
        }
        Weights::Loaded(p) => {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            ui.label(format!("SAM weights: {name}"))
                .on_hover_text(p.display().to_string());
        }
        Weights::Failed(p, e) => {
            ui.colored_label(ui.visuals().error_fg_color, "SAM weights: failed to load")
                .on_hover_text(format!("{}: {e}", p.display()));
            ui.small(format!("Expected {WEIGHTS_FILE} from {WEIGHTS_SOURCE}."));
        }
    }
    if ui.button("Load weights…").clicked() {
        app.ask(Purpose::OpenSegmentWeights);
    }
    let s = &mut app.select;
    ui.horizontal(|ui| {
        ui.selectable_value(&mut s.mode, PaintMode::Add, "Add")
            .on_hover_text("Apply adds the object to the mask");
        ui.selectable_value(&mut s.mode, PaintMode::Subtract, "Subtract")
            .on_hover_text("Apply removes the object from the mask");
    });
    if s.ready() {
        let working = s.busy();
        ui.horizontal(|ui| {
            if working {
                ui.spinner();
            }
            let n = s.points.len();
            ui.label(match n {
                0 => "Click an object".to_string(),
                1 => "1 point".to_string(),
                _ => format!("{n} points"),
            });
        });
        if let Some(st) = &s.status {
            ui.small(st.clone());
        }
    }
    let has_points = !app.select.points.is_empty();
    let (accept, cancel) = (
        app.config.hotkeys.text(Action::Accept),
        app.config.hotkeys.text(Action::Cancel),
    );
    ui.horizontal(|ui| {
        if ui
            .add_enabled(has_points, egui::Button::new("Apply"))
            .on_hover_text(accept)
            .clicked()
        {
            apply(app);
        }
        if ui
            .add_enabled(has_points, egui::Button::new("Clear"))
            .on_hover_text(cancel)
            .clicked()
        {
            app.select.clear();
        }
    });
}
