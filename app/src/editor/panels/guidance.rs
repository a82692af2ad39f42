//! Guidance and sampling settings: prompt (unknown words underlined), class picker, seed,
//! candidates, guidance scale, per-level schedules with presets, context window.

use egui::text::{LayoutJob, TextFormat};
use egui::{Color32, DragValue, RichText, Slider, Stroke};
use std::ops::Range;

use tessera_engine::loader::card::{Conditioning, ModelCard};
use tessera_engine::pipeline::MAX_CANDIDATES;

use super::Panels;
use crate::editor::settings::{Preset, SeedMode, level_name, random_seed};

pub(super) fn ui(p: &mut Panels, ui: &mut egui::Ui) {
    let Some(card) = p.model.card.clone() else {
        ui.label("Load a model to set up generation.");
        return;
    };
    // Class models without a null class can still guide away from a negative class.
    let guidance_possible = !matches!(card.conditioning, Conditioning::None);
    match &card.conditioning {
        Conditioning::None => {
            ui.label("Condition: none (unconditional model)");
        }
        Conditioning::Class {
            n_classes,
            class_names,
            null_class,
        } => class_picker(p, ui, *n_classes, class_names, null_class.is_some()),
        Conditioning::Text {
            context_len,
            class_names,
            ..
        } => {
            prompt_box(p, ui, *context_len);
            if !class_names.is_empty() {
                class_picker(p, ui, class_names.len(), class_names, true);
            }
        }
    }
    ui.separator();
    let s = &mut *p.settings;
    ui.horizontal(|ui| {
        ui.label("Seed");
        ui.add(DragValue::new(&mut s.seed));
        if ui
            .button("random")
            .on_hover_text("new random seed")
            .clicked()
        {
            s.seed = random_seed();
        }
        egui::ComboBox::from_id_salt("seed_mode")
            .selected_text(format!("{:?}", s.seed_mode).to_lowercase())
            .show_ui(ui, |ui| {
                for m in [SeedMode::Fixed, SeedMode::Random, SeedMode::Increment] {
                    ui.selectable_value(&mut s.seed_mode, m, format!("{m:?}").to_lowercase());
                }
            });
    });
    ui.add(Slider::new(&mut s.candidates, 1..=MAX_CANDIDATES.min(16)).text("candidates"));
    ui.add_enabled(
        guidance_possible,
        Slider::new(&mut s.guidance_scale, 0.0..=10.0).text("guidance scale"),
    )
    .on_disabled_hover_text("this model was not trained with a dropped condition");
    negative_ui(p, ui, &card);
    strength_ui(p, ui, card.levels());
    let s = &mut *p.settings;
    ui.horizontal(|ui| {
        ui.label("Preset");
        for p in Preset::ALL {
            if ui.small_button(p.name()).clicked() {
                s.apply_preset(p, &card);
            }
        }
    });
    egui::Grid::new("levels")
        .num_columns(5)
        .striped(true)
        .show(ui, |ui| {
            ui.label("level");
            ui.label("temp");
            ui.label("top-k");
            ui.label("top-p");
            ui.label("chains");
            ui.end_row();
            let t = s.levels.len();
            for (i, l) in s.levels.iter_mut().enumerate().rev() {
                ui.label(format!("{} {}", i + 1, level_name(i + 1, t)));
                ui.add(
                    DragValue::new(&mut l.temperature)
                        .range(0.05..=3.0)
                        .speed(0.01),
                );
                ui.add(DragValue::new(&mut l.top_k).range(0..=card.n_tokens));
                ui.add(DragValue::new(&mut l.top_p).range(0.01..=1.0).speed(0.01));
                ui.add(DragValue::new(&mut l.chains).range(1..=20));
                ui.end_row();
            }
        });
    ui.collapsing("Context window", |ui| {
        ui.checkbox(&mut s.whole_image, "whole image as context");
        ui.add_enabled(
            !s.whole_image,
            Slider::new(&mut s.padding, 0.0..=3.0).text("context padding"),
        );
        ui.add(Slider::new(&mut s.feather_px, 0..=64).text("feather px"));
        ui.add(Slider::new(&mut s.token_threshold, 0.0..=1.0).text("token threshold"));
        ui.checkbox(&mut s.colour_match, "Colour match")
            .on_hover_text("Match the fill's colours to the pixels around the mask");
    });
}

/// The negative prompt (text models) or negative class (class models), enabled with a
/// guidance scale ≠ 1.
fn negative_ui(p: &mut Panels, ui: &mut egui::Ui, card: &ModelCard) {
    let enabled = p.settings.guidance_scale != 1.0;
    let hint = "used with guidance ≠ 1";
    match &card.conditioning {
        Conditioning::None => {}
        Conditioning::Text { .. } => {
            ui.label("Negative").on_hover_text(
                "what guidance steers away from (empty = the empty prompt); used with guidance ≠ 1",
            );
            // Re-encode only when the negative prompt changed.
            let stale = p
                .negative_check
                .as_ref()
                .is_none_or(|(text, _)| *text != p.settings.negative_prompt);
            if stale && let Some(tok) = &p.model.tokenizer {
                let enc = tok.encode(&p.settings.negative_prompt).unwrap_or_default();
                *p.negative_check = Some((p.settings.negative_prompt.clone(), enc));
            }
            let unknown: Vec<Range<usize>> = match &*p.negative_check {
                Some((_, e)) if enabled => e.unknown.iter().map(|(r, _)| r.clone()).collect(),
                _ => Vec::new(),
            };
            let mut layouter = |ui: &egui::Ui, text: &dyn egui::TextBuffer, wrap: f32| {
                layout_underlined(ui, text.as_str(), wrap, &unknown)
            };
            ui.add_enabled(
                enabled,
                egui::TextEdit::singleline(&mut p.settings.negative_prompt)
                    .desired_width(f32::INFINITY)
                    .hint_text(hint)
                    .layouter(&mut layouter),
            )
            .on_disabled_hover_text(hint);
        }
        Conditioning::Class {
            n_classes,
            class_names,
            null_class,
        } => {
            let name = |c: Option<usize>| match c {
                Some(c) => class_names
                    .get(c)
                    .map(|n| format!("{c}: {n}"))
                    .unwrap_or_else(|| format!("class {c}")),
                None if null_class.is_some() => "none (no class)".into(),
                None => "none (pick one: no null class)".into(),
            };
            ui.add_enabled_ui(enabled, |ui| {
                ui.horizontal(|ui| {
                    ui.label("Negative class");
                    egui::ComboBox::from_id_salt("negative_class")
                        .selected_text(name(p.settings.negative_class))
                        .show_ui(ui, |ui| {
                            ui.selectable_value(&mut p.settings.negative_class, None, name(None));
                            for c in 0..*n_classes {
                                ui.selectable_value(
                                    &mut p.settings.negative_class,
                                    Some(c),
                                    name(Some(c)),
                                );
                            }
                        });
                })
                .response
                .on_disabled_hover_text(hint);
            });
            if !enabled {
                ui.small(hint);
            }
        }
    }
}

/// Strength: how many of the T levels an inpainting run redoes.
fn strength_ui(p: &mut Panels, ui: &mut egui::Ui, levels: usize) {
    if levels < 2 {
        return;
    }
    let mut k = p.settings.redo_levels(levels);
    let what = if k == levels {
        "new content"
    } else if k == 1 {
        "fine detail only"
    } else {
        "keeps the coarse structure"
    };
    let label = format!("strength: redo levels {k} of {levels} ({what})");
    ui.add(Slider::new(&mut k, 1..=levels).text(label))
        .on_hover_text(
            "inpainting: T = generate the masked area anew; fewer levels start from the current \
         content noised to that level (coarse → fine) and keep its structure",
        );
    p.settings.strength = (k < levels).then_some(k);
}

/// Lays out `text` with the byte ranges `unknown` underlined in red (unknown prompt words).
fn layout_underlined(
    ui: &egui::Ui,
    text: &str,
    wrap: f32,
    unknown: &[Range<usize>],
) -> std::sync::Arc<egui::Galley> {
    let font = egui::TextStyle::Body.resolve(ui.style());
    let normal = TextFormat::simple(font.clone(), ui.visuals().text_color());
    let bad = TextFormat {
        underline: Stroke::new(1.5, Color32::from_rgb(230, 60, 60)),
        color: Color32::from_rgb(230, 90, 90),
        ..TextFormat::simple(font, ui.visuals().text_color())
    };
    let mut job = LayoutJob::default();
    let mut at = 0;
    for r in unknown {
        if r.start < at
            || r.end > text.len()
            || !text.is_char_boundary(r.start)
            || !text.is_char_boundary(r.end)
        {
            continue;
        }
        job.append(&text[at..r.start], 0.0, normal.clone());
        job.append(&text[r.clone()], 0.0, bad.clone());
        at = r.end;
    }
    job.append(&text[at..], 0.0, normal);
    job.wrap.max_width = wrap;
    ui.painter().layout_job(job)
}

fn class_picker(
    p: &mut Panels,
    ui: &mut egui::Ui,
    n_classes: usize,
    names: &[String],
    allows_none: bool,
) {
    let current = match p.settings.class {
        Some(c) => names
            .get(c)
            .map(|n| format!("{c}: {n}"))
            .unwrap_or_else(|| format!("class {c}")),
        None => "no class".into(),
    };
    ui.label(format!("Class: {current}"));
    if names.is_empty() {
        let mut c = p.settings.class.unwrap_or(0);
        if ui
            .add(DragValue::new(&mut c).range(0..=n_classes.saturating_sub(1)))
            .changed()
        {
            p.settings.class = Some(c);
        }
    } else {
        // Typing a description picks the class it names best (by the class names and their
        // synonyms); the other candidates are listed first, one click away.
        let typed = ui
            .horizontal(|ui| {
                let label = ui.label("Describe:");
                ui.add(
                    egui::TextEdit::singleline(p.class_filter)
                        .hint_text("a red fox in the snow, or a name"),
                )
                .labelled_by(label.id)
                .changed()
            })
            .inner;
        let text = p.class_filter.trim().to_string();
        let ranked = if text.is_empty() {
            Vec::new()
        } else {
            tessera_engine::imagenet::match_classes(names.iter().map(String::as_str), &text, 8)
        };
        if typed && let Some(best) = ranked.first() {
            p.settings.class = Some(best.id);
        }
        let unknown = if text.is_empty() {
            Vec::new()
        } else {
            tessera_engine::imagenet::unknown_words(&text)
        };
        if !unknown.is_empty() {
            ui.label(
                RichText::new(format!("no class has: {}", unknown.join(", ")))
                    .small()
                    .color(ui.visuals().warn_fg_color),
            );
        }
        let needle = text.to_lowercase();
        egui::ScrollArea::vertical()
            .id_salt("classes")
            .max_height(140.0)
            .show(ui, |ui| {
                let listed: Vec<usize> = ranked.iter().map(|m| m.id).collect();
                let rest = (0..names.len()).filter(|i| {
                    !listed.contains(i)
                        && (needle.is_empty()
                            || names[*i].to_lowercase().contains(&needle)
                            || i.to_string() == needle)
                });
                for i in listed.iter().copied().chain(rest) {
                    if ui
                        .selectable_label(p.settings.class == Some(i), format!("{i}: {}", names[i]))
                        .clicked()
                    {
                        p.settings.class = Some(i);
                    }
                }
            });
    }
    if allows_none
        && ui
            .selectable_label(p.settings.class.is_none(), "no class (unconditional)")
            .clicked()
    {
        p.settings.class = None;
    }
}

fn prompt_box(p: &mut Panels, ui: &mut egui::Ui, context_len: usize) {
    ui.label("Prompt");
    // Re-encode only when the prompt changed.
    let stale = p
        .prompt_check
        .as_ref()
        .is_none_or(|(text, _)| *text != p.settings.prompt);
    if stale && let Some(tok) = &p.model.tokenizer {
        let enc = tok.encode(&p.settings.prompt).unwrap_or_default();
        *p.prompt_check = Some((p.settings.prompt.clone(), enc));
    }
    let unknown: Vec<std::ops::Range<usize>> = p
        .prompt_check
        .as_ref()
        .map(|(_, e)| e.unknown.iter().map(|(r, _)| r.clone()).collect())
        .unwrap_or_default();
    let mut layouter = |ui: &egui::Ui, text: &dyn egui::TextBuffer, wrap: f32| {
        layout_underlined(ui, text.as_str(), wrap, &unknown)
    };
    ui.add(
        egui::TextEdit::multiline(&mut p.settings.prompt)
            .desired_rows(2)
            .desired_width(f32::INFINITY)
            .hint_text("describe what to paint (empty = no condition)")
            .layouter(&mut layouter),
    );
    if p.model.tokenizer.is_none() {
        ui.label(
            RichText::new("the model's tokenizer did not load").color(ui.visuals().warn_fg_color),
        );
    }
    if let Some((_, enc)) = &*p.prompt_check {
        if !enc.unknown.is_empty() {
            let words: Vec<&str> = enc.unknown.iter().map(|(_, w)| w.as_str()).collect();
            ui.label(
                RichText::new(format!("unknown words: {}", words.join(", ")))
                    .color(Color32::from_rgb(230, 90, 90)),
            );
        }
        if enc.truncated(context_len) {
            ui.label(
                RichText::new(format!(
                    "longer than {context_len} tokens: the end is ignored"
                ))
                .color(ui.visuals().warn_fg_color),
            );
        }
    }
}
