//! The model panel: what is loaded, how to open another, and the model card.

use egui::RichText;
use tessera_engine::loader::card::{Conditioning, Network};

use super::Panels;
use crate::editor::command::Command;
use crate::editor::files::{ImportWeights, Purpose};
use crate::editor::settings::LoadWeights;

/// "12.3 M".
fn count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1} M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1} k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

pub(super) fn ui(p: &mut Panels, ui: &mut egui::Ui) {
    if let Some(path) = &p.model.loading {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!("loading {}", path.display()));
        });
    }
    if let Some(out) = &p.model.importing {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!("importing into {}", out.display()));
        });
    }
    ui.horizontal_wrapped(|ui| {
        if ui.button("Open model folder…").clicked() {
            p.send(Command::Ask(Purpose::OpenModelFolder));
        }
        if ui.button("Open official manifest…").clicked() {
            p.send(Command::Ask(Purpose::OpenManifest));
        }
    });
    if let Some(e) = &p.model.error {
        ui.label(RichText::new(format!("Load failed: {e}")).color(ui.visuals().error_fg_color));
    }
    let Some(card) = p.model.card.clone() else {
        if p.model.loading.is_none() {
            ui.label(
                RichText::new("No model — open a model folder or an official release manifest")
                    .strong(),
            );
        }
        return;
    };
    ui.label(RichText::new(&card.name).heading());
    if !card.description.is_empty() {
        ui.label(&card.description);
    }
    let conditioning = match &card.conditioning {
        Conditioning::None => "unconditional".to_string(),
        Conditioning::Class {
            n_classes,
            null_class,
            ..
        } => format!(
            "class ({n_classes} classes{})",
            if null_class.is_some() {
                ", guidance possible"
            } else {
                ""
            }
        ),
        Conditioning::Text { context_len, .. } => format!("text ({context_len} tokens)"),
    };
    egui::Grid::new("model_info").num_columns(2).show(ui, |ui| {
        let mut row = |k: &str, v: String| {
            ui.label(k);
            ui.add(egui::Label::new(v).truncate());
            ui.end_row();
        };
        row("levels", card.levels().to_string());
        row(
            "tokens",
            format!(
                "{} codes, {}×{} grid, {} px",
                card.n_tokens,
                card.grid_side(),
                card.grid_side(),
                card.resolution()
            ),
        );
        row("conditioning", conditioning);
        row(
            "weights",
            p.model
                .weights
                .clone()
                .unwrap_or_else(|| card.dtype.clone()),
        );
        row(
            "parameters",
            count(card.transformer_parameters()) + " (transformers)",
        );
        for s in &card.stages {
            let kind = match &s.network {
                Network::XTransformer { .. } => "encoder–decoder",
                Network::Gpt { .. } => "GPT",
            };
            row(
                &format!("  stage {}", s.level),
                format!("{kind}, {}", count(s.parameters)),
            );
        }
        row(
            "license",
            if card.license.is_empty() {
                "(not stated)".into()
            } else {
                card.license.clone()
            },
        );
        row(
            "provenance",
            if card.provenance.is_empty() {
                "(not stated)".into()
            } else {
                card.provenance.clone()
            },
        );
    });
    if let Some(path) = &p.model.path {
        ui.add(egui::Label::new(RichText::new(path.display().to_string()).small()).truncate());
    }
    for w in &p.model.warnings {
        ui.label(RichText::new(format!("warning: {w}")).color(ui.visuals().warn_fg_color));
    }
    if p.model.is_official() && p.model.importing.is_none() {
        ui.label("This is an official release. Import it into Tessera's format (faster to load, optionally smaller)?");
        egui::ComboBox::from_label("import weights")
            .selected_text(p.model.import_weights.label())
            .show_ui(ui, |ui| {
                for w in ImportWeights::ALL {
                    ui.selectable_value(&mut p.model.import_weights, w, w.label());
                }
            });
        if ui.button("Import into Tessera format…").clicked()
            && let Some(path) = p.model.path.clone()
        {
            p.send(Command::Ask(Purpose::ImportTo(path)));
        }
    }
    load_preferences(p, ui);
}

/// How models load (kept in the config); a change reloads the open model with it.
fn load_preferences(p: &mut Panels, ui: &mut egui::Ui) {
    let before = (p.config.load_weights, p.config.low_memory);
    egui::ComboBox::from_label("weights at load")
        .selected_text(p.config.load_weights.label())
        .show_ui(ui, |ui| {
            for w in LoadWeights::ALL {
                ui.selectable_value(&mut p.config.load_weights, w, w.label());
            }
        })
        .response
        .on_hover_text(
            "Quantize the transformers' linear layers as a model loads: less memory and faster \
             steps, logits within a small KL of the stored weights. A model stored quantized \
             loads as stored.",
        );
    ui.checkbox(&mut p.config.low_memory, "low memory (one stage resident)")
        .on_hover_text("Load each level's stage when the chain reaches it and release it after");
    if (p.config.load_weights, p.config.low_memory) != before {
        p.send(Command::SaveConfig);
        if p.model.loading.is_none()
            && let Some(path) = p.model.path.clone()
        {
            p.send(Command::LoadModel(path));
        }
    }
}
