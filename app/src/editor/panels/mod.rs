//! The panels around the canvas: menu bar, status bar, tools, model, guidance, results,
//! history, and the windows (errors, confirmations, hotkey sheet).

mod guidance;
mod help;
mod model;
mod results;

use std::collections::HashMap;

use egui::{Panel, RichText, ScrollArea};

use super::app::{Confirm, EditorApp};
use super::files::Purpose;
use super::keymap::Action;
use super::mask_ops::GlobalOp;

pub use help::FIXED_SHORTCUTS;
pub(crate) use help::{capturing, shortcuts};

/// Candidate thumbnails, keyed by candidate, rebuilt when a new level arrives.
#[derive(Default)]
pub struct Thumbs {
    map: HashMap<usize, (usize, egui::TextureHandle)>,
}

impl Thumbs {
    /// Forgets every thumbnail.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// The menu bar.
pub(crate) fn menu_bar(app: &mut EditorApp, ui: &mut egui::Ui) {
    Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open image or project…  Ctrl+O").clicked() {
                    app.ask(Purpose::OpenImage);
                }
                ui.menu_button("Open recent", |ui| {
                    if app.config.recent.is_empty() {
                        ui.label("(none)");
                    }
                    for p in app.config.recent.clone() {
                        if ui.button(p.display().to_string()).clicked() {
                            app.open_path(&p);
                        }
                    }
                });
                ui.separator();
                let has_doc = app.doc.is_some();
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save project  Ctrl+S"))
                    .clicked()
                {
                    match app.project_path.clone() {
                        Some(p) => app.act(Purpose::SaveProject, p),
                        None => app.ask(Purpose::SaveProject),
                    }
                }
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save project as…"))
                    .clicked()
                {
                    app.ask(Purpose::SaveProject);
                }
                if ui
                    .add_enabled(has_doc, egui::Button::new("Export image…  Ctrl+Shift+S"))
                    .clicked()
                {
                    app.ask(Purpose::SaveImage);
                }
                ui.separator();
                if ui
                    .add_enabled(has_doc, egui::Button::new("Load mask…"))
                    .clicked()
                {
                    app.ask(Purpose::OpenMask);
                }
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save mask…"))
                    .clicked()
                {
                    app.ask(Purpose::SaveMask);
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("Edit", |ui| {
                let label = app
                    .history
                    .undo_label()
                    .map(|l| format!("Undo {l}  Ctrl+Z"))
                    .unwrap_or("Undo  Ctrl+Z".into());
                if ui
                    .add_enabled(app.history.can_undo(), egui::Button::new(label))
                    .clicked()
                {
                    app.undo();
                }
                if ui
                    .add_enabled(
                        app.history.can_redo(),
                        egui::Button::new("Redo  Ctrl+Shift+Z"),
                    )
                    .clicked()
                {
                    app.redo();
                }
            });
            ui.menu_button("Mask", |ui| mask_menu(app, ui));
            ui.menu_button("View", |ui| {
                let zooms = [
                    ("Fit", Action::ZoomFit),
                    ("100 %", Action::Zoom100),
                    ("200 %", Action::Zoom200),
                    ("400 %", Action::Zoom400),
                    ("800 %", Action::Zoom800),
                ];
                for (label, action) in zooms {
                    let text = format!("{label}  {}", app.config.hotkeys.text(action));
                    if ui.button(text.trim_end()).clicked() {
                        app.canvas.zoom_action(action);
                    }
                }
                ui.checkbox(&mut app.canvas_settings.show_token_grid, "Token grid");
                ui.checkbox(&mut app.canvas_settings.show_confidence, "Confidence")
                    .on_hover_text("Tint each generated token by how sure the model was of it");
                ui.horizontal(|ui| {
                    ui.label("Mask colour");
                    if ui
                        .color_edit_button_srgba(&mut app.canvas_settings.mask_colour)
                        .changed()
                    {
                        let c = app.canvas_settings.mask_colour;
                        app.config.mask_colour = [c.r(), c.g(), c.b()];
                    }
                });
                if ui
                    .add(
                        egui::Slider::new(&mut app.canvas_settings.mask_opacity, 0.0..=1.0)
                            .text("opacity"),
                    )
                    .changed()
                {
                    app.config.mask_opacity = app.canvas_settings.mask_opacity;
                }
            });
            ui.menu_button("Model", |ui| {
                if ui.button("Open model folder…").clicked() {
                    app.ask(Purpose::OpenModelFolder);
                }
                if ui.button("Open official manifest…").clicked() {
                    app.ask(Purpose::OpenManifest);
                }
            });
            ui.menu_button("Help", |ui| {
                if ui.button("Keyboard shortcuts  F1").clicked() {
                    app.show_help = true;
                }
            });
        });
    });
}

fn mask_menu(app: &mut EditorApp, ui: &mut egui::Ui) {
    let enabled = app.doc.is_some();
    let ops = [
        ("Clear  Ctrl+D", GlobalOp::Clear),
        ("Invert  Ctrl+I", GlobalOp::Invert),
        ("Select all", GlobalOp::SelectAll),
        ("Grow 8 px", GlobalOp::Grow(8)),
        ("Shrink 8 px", GlobalOp::Shrink(8)),
        ("Feather 4 px", GlobalOp::Feather(4.0)),
    ];
    for (label, op) in ops {
        if ui.add_enabled(enabled, egui::Button::new(label)).clicked() {
            app.mask_op(op);
        }
    }
    let reuse = enabled && app.jobs.last_mask.is_some();
    if ui
        .add_enabled(reuse, egui::Button::new("Reuse last mask  Ctrl+M"))
        .clicked()
    {
        app.reuse_last_mask();
    }
}

/// The status bar.
pub(crate) fn status_bar(
    app: &mut EditorApp,
    ui: &mut egui::Ui,
    hover: Option<(u32, u32)>,
    zoom: f32,
) {
    Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            if let Some(doc) = &app.doc {
                let (w, h) = doc.size();
                ui.label(format!("{w}×{h}"));
                ui.label(format!("{:.0} %", zoom * 100.0));
                if let Some((x, y)) = hover {
                    ui.label(format!("x {x} y {y}"));
                }
                ui.separator();
            }
            if let Some(m) = app.messages.iter().rev().find(|m| !m.error) {
                ui.label(&m.text);
            }
        });
    });
}

/// Tools and mask operations.
pub(crate) fn left_panel(app: &mut EditorApp, ui: &mut egui::Ui) {
    Panel::left("tools")
        .resizable(false)
        .default_size(150.0)
        .show(ui, |ui| {
            ui.heading("Tools");
            app.tools.ui(ui, &app.config.hotkeys);
            if app.tools.tool == crate::editor::tools::Tool::Select {
                crate::editor::app::select::options_ui(app, ui);
            }
            ui.separator();
            ui.label("Mask");
            mask_menu(app, ui);
        });
}

/// Model, guidance, generation, results and history.
pub(crate) fn right_panel(app: &mut EditorApp, ui: &mut egui::Ui) {
    Panel::right("side")
        .resizable(true)
        .default_size(340.0)
        .show(ui, |ui| {
            ScrollArea::vertical().show(ui, |ui| {
                // What changes during a job first, so it is never scrolled out of view.
                results::generate_ui(app, ui);
                results::results_ui(app, ui);
                ui.separator();
                egui::CollapsingHeader::new("Guidance & settings")
                    .default_open(true)
                    .show(ui, |ui| guidance::ui(app, ui));
                egui::CollapsingHeader::new("Model")
                    .default_open(true)
                    .show(ui, |ui| model::ui(app, ui));
                egui::CollapsingHeader::new("History")
                    .default_open(false)
                    .show(ui, |ui| results::history_ui(app, ui));
            });
        });
}

/// What the canvas area shows without a document.
pub(crate) fn welcome(app: &mut EditorApp, ui: &mut egui::Ui) {
    ui.vertical_centered(|ui| {
        ui.add_space(ui.available_height() / 3.0);
        ui.heading("Tessera");
        ui.label("Open an image (Ctrl+O), drop one here, or paste one (Ctrl+V).");
        if ui.button("Open image…").clicked() {
            app.ask(Purpose::OpenImage);
        }
        if app.model.card.is_some() {
            ui.label("Or press Generate to sample a whole new image.");
        }
    });
}

/// Floating windows: errors, confirmations, the hotkey sheet.
pub(crate) fn windows(app: &mut EditorApp, ctx: &egui::Context) {
    let errors: Vec<usize> = app
        .messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.error)
        .map(|(i, _)| i)
        .collect();
    if !errors.is_empty() {
        let mut dismiss = false;
        egui::Window::new("Problems")
            .collapsible(false)
            .anchor(egui::Align2::CENTER_TOP, [0.0, 40.0])
            .show(ctx, |ui| {
                for &i in errors.iter().rev().take(5) {
                    ui.label(
                        RichText::new(&app.messages[i].text).color(ui.visuals().error_fg_color),
                    );
                }
                if ui.button("Dismiss").clicked() {
                    dismiss = true;
                }
            });
        if dismiss {
            app.messages.retain(|m| !m.error);
        }
    }
    if let Some(c) = app.confirm.clone() {
        let modal =
            egui::Modal::new(egui::Id::unique("tessera-confirm")).show(ctx, |ui| match &c {
                Confirm::Overwrite(purpose, path) => {
                    ui.label(format!("{} exists. Replace it?", path.display()));
                    ui.horizontal(|ui| {
                        if ui.button("Replace").clicked() {
                            app.confirm = None;
                            app.act(purpose.clone(), path.clone());
                        }
                        if ui.button("Cancel").clicked() {
                            app.confirm = None;
                        }
                    });
                }
                Confirm::Restore(path) => {
                    ui.label("Tessera did not close cleanly last time.");
                    ui.label("Restore the unsaved work it kept?");
                    ui.horizontal(|ui| {
                        if ui.button("Restore").clicked() {
                            app.confirm = None;
                            app.restore(path.clone());
                        }
                        if ui.button("Discard").clicked() {
                            app.confirm = None;
                            std::fs::remove_file(path).ok();
                        }
                    });
                }
            });
        if modal.should_close() && matches!(c, Confirm::Overwrite(..)) {
            app.confirm = None;
        }
    }
    if app.show_help {
        help::window(app, ctx);
    }
}
