//! The Models window (Model → Models…): installed models with size and origin (Use, Remove),
//! the official releases (Download with progress, speed and ETA; Cancel), and an import of a
//! release zip or checkpoint from disk.

use egui::{ProgressBar, RichText, ScrollArea};
use tessera_store::download::human_bytes;

use super::Panels;
use crate::editor::command::Command;
use crate::editor::files::Purpose;

/// Draws the window when it is open.
pub(super) fn window(p: &mut Panels, ctx: &egui::Context) {
    let mut open = p.library.open;
    egui::Window::new("Models")
        .open(&mut open)
        .max_width(760.0)
        .default_width(620.0)
        .default_height(520.0)
        .show(ctx, |ui| body(p, ui));
    p.library.open = open;
}

fn body(p: &mut Panels, ui: &mut egui::Ui) {
    let lib = &mut *p.library;
    match &lib.folder {
        Ok(f) => {
            ui.horizontal(|ui| {
                ui.label("Models folder:");
                ui.monospace(f.root().display().to_string());
            });
            if let Some(q) = f.quota() {
                ui.label(format!(
                    "Quota {} ({} left)",
                    human_bytes(q),
                    human_bytes(f.room().unwrap_or(0))
                ));
            }
        }
        Err(e) => {
            ui.colored_label(
                ui.visuals().error_fg_color,
                format!("No models folder: {e}"),
            );
        }
    }
    if let Some(e) = &lib.catalogue_error {
        ui.colored_label(ui.visuals().error_fg_color, format!("Catalogue file: {e}"));
    }
    let busy = lib.busy();
    let mut send = Vec::new();
    ScrollArea::vertical().max_height(420.0).show(ui, |ui| {
        ui.heading("Installed");
        if lib.installed.is_empty() {
            ui.label("None yet: download a release below, or import a zip from disk.");
        }
        let active = p.model.card.as_ref().map(|c| c.name.clone());
        for m in &lib.installed {
            ui.horizontal(|ui| {
                ui.label(RichText::new(&m.name).strong());
                ui.label(format!(
                    "{} · {} levels · {} · {}",
                    m.card.name,
                    m.card.levels(),
                    m.card.dtype,
                    human_bytes(m.bytes)
                ));
                if ui.button("Use").clicked() {
                    send.push(Command::LoadModel(m.path.clone()));
                }
                if ui.add_enabled(!busy, egui::Button::new("Remove")).clicked() {
                    send.push(Command::RemoveModel(m.name.clone()));
                }
                if active.as_deref() == Some(m.card.name.as_str()) {
                    ui.label("(in use)");
                }
            });
            let origin = match &m.origin {
                Some(o) => match &o.url {
                    Some(url) => format!("downloaded from {url}"),
                    None => format!("imported from {}", o.source),
                },
                None => "copied into the folder by hand".into(),
            };
            ui.small(origin);
            if let Some(sha) = m.origin.as_ref().and_then(|o| o.sha256.as_deref()) {
                ui.small(format!("sha256 {sha}"));
            }
        }
        ui.separator();
        ui.heading("Official releases");
        let records = lib.folder.as_ref().map(|f| f.records()).unwrap_or_default();
        for r in lib.catalogue.releases() {
            let installed = lib.installed.iter().any(|m| m.name == r.name);
            ui.horizontal(|ui| {
                ui.label(RichText::new(&r.title).strong());
                let size = r
                    .size
                    .or(records.get(&r.url).map(|x| x.bytes))
                    .map(human_bytes)
                    .unwrap_or_else(|| "size unknown".into());
                ui.label(format!("{} levels · {} · {size}", r.levels, r.conditioning));
                let running = lib.task.as_ref().is_some_and(|t| t.name == r.name);
                if installed {
                    ui.label("installed");
                } else if running {
                    if ui.button("Cancel").clicked() {
                        send.push(Command::CancelModelTask);
                    }
                } else if ui
                    .add_enabled(!busy, egui::Button::new(format!("Download {}", r.name)))
                    .on_hover_text(&r.description)
                    .clicked()
                {
                    send.push(Command::DownloadModel(r.name.clone()));
                }
            })
            .response
            .on_hover_text(&r.description);
        }
    });
    ui.separator();
    if let Some(t) = &lib.task {
        let fraction = t.total.map(|n| t.done as f32 / n.max(1) as f32);
        let text = match t.total {
            Some(n) => format!(
                "{}: {} of {} · {}/s{}",
                t.name,
                human_bytes(t.done),
                human_bytes(n),
                human_bytes(t.speed as u64),
                t.eta_s()
                    .map(|s| format!(" · {:.0} s left", s))
                    .unwrap_or_default()
            ),
            None => format!("{}: {:.0} s", t.name, t.elapsed_s()),
        };
        ui.add(ProgressBar::new(fraction.unwrap_or(0.0)).text(text));
        if ui.button("Cancel").clicked() {
            send.push(Command::CancelModelTask);
        }
        ui.add(egui::Label::new(&t.step).wrap());
    }
    if let Some((text, error)) = &lib.last {
        if *error {
            ui.colored_label(ui.visuals().error_fg_color, text);
        } else {
            ui.label(text);
        }
    }
    ui.horizontal(|ui| {
        ui.label("Store weights as");
        egui::ComboBox::from_id_salt("library-dtype")
            .selected_text(lib.dtype.clone())
            .show_ui(ui, |ui| {
                for d in ["f16", "f32", "q8_0", "q4k"] {
                    ui.selectable_value(&mut lib.dtype, d.to_string(), d);
                }
            });
        ui.checkbox(&mut lib.keep_zip, "Keep downloaded zips");
    });
    if ui
        .add_enabled(!busy, egui::Button::new("Import zip/ckpt from disk…"))
        .clicked()
    {
        send.push(Command::Ask(Purpose::ImportRelease));
    }
    for c in send {
        p.send(c);
    }
}
