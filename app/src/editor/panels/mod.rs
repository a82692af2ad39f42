//! The panels around the canvas: menu bar, status bar, tools, model, guidance, results,
//! history, and the windows (errors, confirmations, hotkey sheet).

mod guidance;
mod help;
mod library;
mod model;
mod results;
mod select;

use std::collections::HashMap;

use egui::{Panel, RichText, ScrollArea};
use tessera_engine::text::Encoded;

use super::canvas::CanvasSettings;
use super::command::Command;
use super::document::Document;
use super::files::Purpose;
use super::history::History;
use super::jobs::Jobs;
use super::keymap::Action;
use super::library::Library;
use super::mask_ops::GlobalOp;
use super::project::GenRecord;
use super::segment::SelectState;
use super::settings::{Config, GenSettings};
use super::state::{Confirm, Message, ModelState};
use super::tools::ToolState;

pub use help::FIXED_SHORTCUTS;
pub(crate) use help::{capture as help_capture, capturing};

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

/// The editor as the panels see it: what they show, the settings their widgets edit in place,
/// and the commands they send for everything else (carried out by the app once the
/// panel has drawn).
pub struct Panels<'a> {
    /// The open document.
    pub doc: Option<&'a Document>,
    /// Undo/redo.
    pub history: &'a History,
    /// The model (the panel edits only the import's weights choice).
    pub model: &'a mut ModelState,
    /// Jobs and results.
    pub jobs: &'a Jobs,
    /// Accepted generations.
    pub generations: &'a [GenRecord],
    /// Messages.
    pub messages: &'a [Message],
    /// Generation settings.
    pub settings: &'a mut GenSettings,
    /// Canvas display settings.
    pub canvas_settings: &'a mut CanvasSettings,
    /// Preferences (hotkeys, mask colour, load options).
    pub config: &'a mut Config,
    /// Mask tools.
    pub tools: &'a mut ToolState,
    /// The Select object tool.
    pub select: &'a mut SelectState,
    /// The question the app waits on.
    pub confirm: &'a mut Option<Confirm>,
    /// Whether the hotkey sheet is open.
    pub show_help: &'a mut bool,
    /// Masked tokens and sampled tokens of the next generation (the cost preflight).
    pub preflight: Option<(usize, usize)>,
    pub(crate) thumbs: &'a mut Thumbs,
    pub(crate) class_filter: &'a mut String,
    pub(crate) prompt_check: &'a mut Option<(String, Encoded)>,
    pub(crate) negative_check: &'a mut Option<(String, Encoded)>,
    /// The models folder and the Models window.
    pub library: &'a mut Library,
    pub(crate) out: Vec<Command>,
}

impl Panels<'_> {
    /// Asks the editor to do something (after the panel has drawn).
    pub fn send(&mut self, c: Command) {
        self.out.push(c);
    }

    /// What a hotkey action does.
    pub fn run(&mut self, a: Action) {
        self.send(Command::Run(a));
    }
}

/// The menu bar.
pub(crate) fn menu_bar(p: &mut Panels, ui: &mut egui::Ui) {
    Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open image or project…  Ctrl+O").clicked() {
                    p.run(Action::Open);
                }
                ui.menu_button("Open recent", |ui| {
                    if p.config.recent.is_empty() {
                        ui.label("(none)");
                    }
                    for path in p.config.recent.clone() {
                        if ui.button(path.display().to_string()).clicked() {
                            p.send(Command::OpenPath(path));
                        }
                    }
                });
                ui.separator();
                let has_doc = p.doc.is_some();
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save project  Ctrl+S"))
                    .clicked()
                {
                    p.run(Action::SaveProject);
                }
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save project as…"))
                    .clicked()
                {
                    p.send(Command::Ask(Purpose::SaveProject));
                }
                if ui
                    .add_enabled(has_doc, egui::Button::new("Export image…  Ctrl+Shift+S"))
                    .clicked()
                {
                    p.run(Action::ExportImage);
                }
                ui.separator();
                if ui
                    .add_enabled(has_doc, egui::Button::new("Load mask…"))
                    .clicked()
                {
                    p.send(Command::Ask(Purpose::OpenMask));
                }
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save mask…"))
                    .clicked()
                {
                    p.send(Command::Ask(Purpose::SaveMask));
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("Edit", |ui| {
                let label = p
                    .history
                    .undo_label()
                    .map(|l| format!("Undo {l}  Ctrl+Z"))
                    .unwrap_or("Undo  Ctrl+Z".into());
                if ui
                    .add_enabled(p.history.can_undo(), egui::Button::new(label))
                    .clicked()
                {
                    p.run(Action::Undo);
                }
                if ui
                    .add_enabled(
                        p.history.can_redo(),
                        egui::Button::new("Redo  Ctrl+Shift+Z"),
                    )
                    .clicked()
                {
                    p.run(Action::Redo);
                }
            });
            ui.menu_button("Mask", |ui| mask_menu(p, ui));
            ui.menu_button("View", |ui| {
                let zooms = [
                    ("Fit", Action::ZoomFit),
                    ("100 %", Action::Zoom100),
                    ("200 %", Action::Zoom200),
                    ("400 %", Action::Zoom400),
                    ("800 %", Action::Zoom800),
                ];
                for (label, action) in zooms {
                    let text = format!("{label}  {}", p.config.hotkeys.text(action));
                    if ui.button(text.trim_end()).clicked() {
                        p.run(action);
                    }
                }
                ui.checkbox(&mut p.canvas_settings.show_token_grid, "Token grid");
                ui.checkbox(&mut p.canvas_settings.show_confidence, "Confidence")
                    .on_hover_text("Tint each generated token by how sure the model was of it");
                ui.horizontal(|ui| {
                    ui.label("Mask colour");
                    if ui
                        .color_edit_button_srgba(&mut p.canvas_settings.mask_colour)
                        .changed()
                    {
                        let c = p.canvas_settings.mask_colour;
                        p.config.mask_colour = [c.r(), c.g(), c.b()];
                    }
                });
                if ui
                    .add(
                        egui::Slider::new(&mut p.canvas_settings.mask_opacity, 0.0..=1.0)
                            .text("opacity"),
                    )
                    .changed()
                {
                    p.config.mask_opacity = p.canvas_settings.mask_opacity;
                }
            });
            ui.menu_button("Model", |ui| {
                if ui.button("Models…").clicked() {
                    p.send(Command::ShowModels(true));
                }
                if ui.button("Open model folder…").clicked() {
                    p.send(Command::Ask(Purpose::OpenModelFolder));
                }
                if ui.button("Open official manifest…").clicked() {
                    p.send(Command::Ask(Purpose::OpenManifest));
                }
            });
            ui.menu_button("Help", |ui| {
                if ui.button("Keyboard shortcuts  F1").clicked() {
                    *p.show_help = true;
                }
            });
        });
    });
}

fn mask_menu(p: &mut Panels, ui: &mut egui::Ui) {
    let enabled = p.doc.is_some();
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
            p.send(Command::MaskOp(op));
        }
    }
    let reuse = enabled && p.jobs.last_mask.is_some();
    if ui
        .add_enabled(reuse, egui::Button::new("Reuse last mask  Ctrl+M"))
        .clicked()
    {
        p.run(Action::ReuseMask);
    }
}

/// The status bar.
pub(crate) fn status_bar(p: &mut Panels, ui: &mut egui::Ui, hover: Option<(u32, u32)>, zoom: f32) {
    Panel::bottom("status").show(ui, |ui| {
        ui.horizontal(|ui| {
            if let Some(doc) = p.doc {
                let (w, h) = doc.size();
                ui.label(format!("{w}×{h}"));
                ui.label(format!("{:.0} %", zoom * 100.0));
                if let Some((x, y)) = hover {
                    ui.label(format!("x {x} y {y}"));
                }
                ui.separator();
            }
            if let Some(m) = p.messages.iter().rev().find(|m| !m.error) {
                ui.label(&m.text);
            }
        });
    });
}

/// Tools and mask operations.
pub(crate) fn left_panel(p: &mut Panels, ui: &mut egui::Ui) {
    Panel::left("tools")
        .resizable(false)
        .default_size(150.0)
        .show(ui, |ui| {
            ui.heading("Tools");
            p.tools.ui(ui, &p.config.hotkeys);
            if p.tools.tool == crate::editor::tools::Tool::Select {
                select::options_ui(p, ui);
            }
            ui.separator();
            ui.label("Mask");
            mask_menu(p, ui);
        });
}

/// Model, guidance, generation, results and history.
pub(crate) fn right_panel(p: &mut Panels, ui: &mut egui::Ui) {
    Panel::right("side")
        .resizable(true)
        .default_size(340.0)
        .show(ui, |ui| {
            ScrollArea::vertical().show(ui, |ui| {
                // What changes during a job first, so it is never scrolled out of view.
                results::generate_ui(p, ui);
                results::results_ui(p, ui);
                ui.separator();
                egui::CollapsingHeader::new("Guidance & settings")
                    .default_open(true)
                    .show(ui, |ui| guidance::ui(p, ui));
                egui::CollapsingHeader::new("Model")
                    .default_open(true)
                    .show(ui, |ui| model::ui(p, ui));
                egui::CollapsingHeader::new("History")
                    .default_open(false)
                    .show(ui, |ui| results::history_ui(p, ui));
            });
        });
}

/// What the canvas area shows without a document.
pub(crate) fn welcome(p: &mut Panels, ui: &mut egui::Ui) {
    ui.vertical_centered(|ui| {
        ui.add_space(ui.available_height() / 3.0);
        ui.heading("Tessera");
        ui.label("Open an image (Ctrl+O), drop one here, or paste one (Ctrl+V).");
        if ui.button("Open image…").clicked() {
            p.run(Action::Open);
        }
        if p.model.card.is_some() {
            ui.label("Or press Generate to sample a whole new image.");
        }
    });
}

/// Floating windows: errors, confirmations, the hotkey sheet.
pub(crate) fn windows(p: &mut Panels, ctx: &egui::Context) {
    let errors: Vec<usize> = p
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
                    ui.label(RichText::new(&p.messages[i].text).color(ui.visuals().error_fg_color));
                }
                if ui.button("Dismiss").clicked() {
                    dismiss = true;
                }
            });
        if dismiss {
            p.send(Command::DismissErrors);
        }
    }
    if let Some(c) = p.confirm.clone() {
        let modal =
            egui::Modal::new(egui::Id::unique("tessera-confirm")).show(ctx, |ui| match &c {
                Confirm::Overwrite(purpose, path) => {
                    ui.label(format!("{} exists. Replace it?", path.display()));
                    ui.horizontal(|ui| {
                        if ui.button("Replace").clicked() {
                            *p.confirm = None;
                            p.send(Command::Act(purpose.clone(), path.clone()));
                        }
                        if ui.button("Cancel").clicked() {
                            *p.confirm = None;
                        }
                    });
                }
                Confirm::RemoveModel(name) => {
                    ui.label(format!("Remove the model “{name}” from the models folder?"));
                    ui.label("Its files are deleted; downloading it again takes as long as the first time.");
                    ui.horizontal(|ui| {
                        if ui.button("Delete its files").clicked() {
                            *p.confirm = None;
                            p.send(Command::RemoveModelConfirmed(name.clone()));
                        }
                        if ui.button("Cancel").clicked() {
                            *p.confirm = None;
                        }
                    });
                }
                Confirm::Restore(path) => {
                    ui.label("Tessera did not close cleanly last time.");
                    ui.label("Restore the unsaved work it kept?");
                    ui.horizontal(|ui| {
                        let enter = ui.input(|i| i.key_pressed(egui::Key::Enter));
                        if ui.button("Restore (Enter)").clicked() || enter {
                            *p.confirm = None;
                            p.send(Command::Restore(path.clone()));
                        }
                        if ui.button("Discard").clicked() {
                            *p.confirm = None;
                            p.send(Command::DiscardRecovery(path.clone()));
                        }
                    });
                }
            });
        if modal.should_close() && matches!(c, Confirm::Overwrite(..)) {
            *p.confirm = None;
        }
    }
    if *p.show_help {
        help::window(p, ctx);
    }
    if p.library.open {
        library::window(p, ctx);
    }
}
