//! The Select object tool's options in the tool panel: weights, mode, points, Apply and Clear.

use tessera_engine::segment::{WEIGHTS_FILE, WEIGHTS_SOURCE};

use super::Panels;
use crate::editor::command::Command;
use crate::editor::files::Purpose;
use crate::editor::keymap::Action;
use crate::editor::mask_ops::PaintMode;
use crate::editor::segment::{WEIGHTS_ENV, Weights};

/// The tool options: weights, mode, points, Apply and Clear.
pub(super) fn options_ui(p: &mut Panels, ui: &mut egui::Ui) {
    let s = &*p.select;
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
        p.send(Command::Ask(Purpose::OpenSegmentWeights));
    }
    let s = &mut *p.select;
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
    let has_points = !p.select.points.is_empty();
    let (accept, cancel) = (
        p.config.hotkeys.text(Action::Accept),
        p.config.hotkeys.text(Action::Cancel),
    );
    ui.horizontal(|ui| {
        if ui
            .add_enabled(has_points, egui::Button::new("Apply"))
            .on_hover_text(accept)
            .clicked()
        {
            p.send(Command::ApplySelection);
        }
        if ui
            .add_enabled(has_points, egui::Button::new("Clear"))
            .on_hover_text(cancel)
            .clicked()
        {
            p.select.clear();
        }
    });
}
