//! Generate button with the cost preflight, progress, candidates with the level scrubber,
//! accept / discard, and the history of accepted generations.

use std::sync::Arc;

use egui::{ProgressBar, RichText};
use image::RgbImage;

use super::{Panels, Thumbs};
use crate::editor::command::Command;
use crate::editor::jobs::format_secs;
use crate::editor::keymap::Action;
use crate::editor::settings::level_name;

/// Tokens above which the preflight warns.
const EXPENSIVE_TOKENS: usize = 20_000;

pub(super) fn generate_ui(p: &mut Panels, ui: &mut egui::Ui) {
    let busy = p.jobs.busy();
    let has_model = p.model.card.is_some();
    ui.horizontal(|ui| {
        let label = if p.doc.is_some() {
            "Generate  Ctrl+Enter"
        } else {
            "Sample new image"
        };
        let label = if busy { "Queue  Ctrl+Enter" } else { label };
        if ui
            .add_enabled(has_model, egui::Button::new(RichText::new(label).strong()))
            .on_hover_text("While a job runs, Generate adds the request to the queue")
            .clicked()
        {
            p.run(Action::Generate);
        }
        if busy && ui.button("Cancel  Esc").clicked() {
            p.run(Action::Cancel);
        }
        if busy
            && !p.jobs.queue.is_empty()
            && ui
                .button("Cancel all")
                .on_hover_text("Cancel the running job and empty the queue")
                .clicked()
        {
            p.send(Command::CancelAll);
        }
    });
    queue_ui(p, ui);
    if let Some((masked, tokens)) = p.preflight
        && p.model.card.is_some()
    {
        let levels = p.settings.redo_levels(p.settings.levels.len());
        let eta = p
            .jobs
            .secs_per_token
            .map(|s| {
                format!(
                    ", ≈ {}",
                    format_secs(s * tokens as f64 / p.settings.candidates.max(1) as f64)
                )
            })
            .unwrap_or_default();
        let text = format!(
            "cost: {masked} masked tokens × {levels} levels ({} passes) × {} candidates = {tokens} token steps{eta}",
            p.settings.inpaint_passes(),
            p.settings.candidates
        );
        if tokens > EXPENSIVE_TOKENS {
            ui.label(RichText::new(text).color(ui.visuals().warn_fg_color));
        } else {
            ui.small(text);
        }
    }
    if let Some(r) = &p.jobs.running {
        let eta = r
            .eta_secs()
            .map(|s| format!(" · ETA {}", format_secs(s)))
            .unwrap_or_default();
        let text = if r.cancelling {
            "cancelling…".to_string()
        } else {
            format!("{} · {}/{} tokens{eta}", r.level_label(), r.done, r.total)
        };
        ui.add(ProgressBar::new(r.fraction()).text(text).animate(true));
    }
}

/// The queued requests ("2 queued"), each removable, and results waiting their turn.
fn queue_ui(p: &mut Panels, ui: &mut egui::Ui) {
    let waiting = p.jobs.waiting.len();
    if waiting > 0 {
        ui.small(format!(
            "{waiting} more result set{} after these (accept or discard to see them)",
            if waiting == 1 { "" } else { "s" }
        ));
    }
    if p.jobs.queue.is_empty() {
        return;
    }
    let mut remove = None;
    let mut clear = false;
    ui.horizontal(|ui| {
        ui.label(format!("{} queued", p.jobs.queue.len()));
        if ui.small_button("clear queue").clicked() {
            clear = true;
        }
    });
    for (i, q) in p.jobs.queue.iter().enumerate() {
        ui.horizontal(|ui| {
            if ui.small_button("remove").clicked() {
                remove = Some(i);
            }
            let s = &q.record.settings;
            let what = match (&q.record.class_name, s.prompt.trim()) {
                (Some(c), _) => format!("class “{c}”"),
                (None, "") => "unconditional".to_string(),
                (None, p) => format!("“{p}”"),
            };
            ui.small(format!("{}. {what}, seed {}", i + 1, s.seed));
        });
    }
    if clear {
        p.send(Command::ClearQueue);
    } else if let Some(i) = remove {
        p.send(Command::RemoveQueued(i));
    }
}

fn thumb(
    thumbs: &mut Thumbs,
    ctx: &egui::Context,
    i: usize,
    version: usize,
    img: &Arc<RgbImage>,
) -> egui::TextureHandle {
    if let Some((v, t)) = thumbs.map.get(&i)
        && *v == version
    {
        return t.clone();
    }
    let small = image::imageops::thumbnail(&**img, 96, 96);
    let tex = ctx.load_texture(
        format!("candidate-{i}"),
        egui::ColorImage::from_rgb(
            [small.width() as usize, small.height() as usize],
            small.as_raw(),
        ),
        egui::TextureOptions::LINEAR,
    );
    thumbs.map.insert(i, (version, tex.clone()));
    tex
}

pub(super) fn results_ui(p: &mut Panels, ui: &mut egui::Ui) {
    let jobs = p.jobs;
    let Some(res) = &jobs.results else {
        return;
    };
    let ctx = ui.ctx().clone();
    let n = res.levels.len();
    let selected = res.selected;
    let mut select = None;
    ui.label(RichText::new("Candidates").strong());
    // Thumbnails come from the level previews (already display-sized by the engine; the
    // final image's window looks the same at 96 px). At most one is remade per frame, so
    // that events of many candidates arriving together do not stall a frame.
    let mut budget = 1;
    ui.horizontal_wrapped(|ui| {
        for i in 0..n {
            let version = match &res.finals[i] {
                Some(_) => Some(usize::MAX),
                None => (!res.levels[i].is_empty()).then_some(res.levels[i].len()),
            };
            let cached = p.thumbs.map.get(&i);
            let fresh = version.is_some_and(|v| cached.is_some_and(|(cv, _)| *cv == v));
            let mut tex = cached.map(|(_, t)| t.clone());
            if !fresh && budget > 0 {
                if let (Some(v), Some(prev)) = (version, res.levels[i].last()) {
                    let img = &prev.overlay.pixels;
                    if img.width() > 0 && img.height() > 0 {
                        budget -= 1;
                        tex = Some(thumb(p.thumbs, &ctx, i, v, img));
                    }
                }
            } else if !fresh && version.is_some() {
                ctx.request_repaint();
            }
            let resp = match tex {
                Some(tex) => ui.add(
                    egui::Button::image(egui::Image::new(&tex).max_size(egui::vec2(72.0, 72.0)))
                        .selected(i == selected),
                ),
                _ => ui.add(egui::Button::new(format!("#{i}")).selected(i == selected)),
            };
            let hover = match res.fit[i] {
                Some(f) => format!(
                    "candidate {i}: fits the request {:.0}% (the model's own judgement \
                     against the other concepts it knows)",
                    100.0 * f
                ),
                None => format!("candidate {i}"),
            };
            if resp.on_hover_text(hover).clicked() {
                select = Some(i);
            }
        }
    });
    if let Some(f) = res.fit.get(selected).copied().flatten() {
        let best = res.fit.iter().all(|g| g.is_none_or(|g| g <= f));
        let note = if best && !res.picked {
            "shown first: it fits the request best"
        } else {
            "fit to the request"
        };
        ui.label(RichText::new(format!("#{selected}: {:.0}% — {note}", 100.0 * f)).small())
            .on_hover_text(
                "How sure the model is that this fill shows what was asked for rather than one of \
             the other concepts it knows.",
            );
    }
    // Level scrubber for the selected candidate.
    let levels: Vec<usize> = res
        .levels
        .get(selected)
        .map(|l| l.iter().map(|p| p.level).collect())
        .unwrap_or_default();
    let model_levels = p.settings.levels.len();
    let view = res.view_level;
    let ready = res.ready(selected);
    let finished = res.finished;
    let mut view_to = None;
    ui.horizontal_wrapped(|ui| {
        ui.label("view:");
        for &l in &levels {
            if ui
                .selectable_label(
                    view == Some(l),
                    format!("L{l} {}", level_name(l, model_levels)),
                )
                .clicked()
            {
                view_to = Some(Some(l));
            }
        }
        if ui
            .selectable_label(view.is_none(), if ready { "final" } else { "latest" })
            .clicked()
        {
            view_to = Some(None);
        }
    });
    let mut accept = false;
    let mut discard = false;
    ui.horizontal(|ui| {
        if ui
            .add_enabled(
                ready,
                egui::Button::new(format!("Accept #{selected}  Enter")),
            )
            .clicked()
        {
            accept = true;
        }
        if ui.button("Discard").clicked() {
            discard = true;
        }
        if finished && !ready {
            ui.small("cancelled: only previews");
        }
    });
    let mut repaint = false;
    if let Some(conf) = res.final_confidence(selected) {
        let mean = conf.confidence.mean_prob().unwrap_or(1.0);
        let below = conf.below(p.canvas_settings.unsure_below);
        let count = below.iter().filter(|b| **b).count();
        let sampled = conf.confidence.sampled.iter().filter(|s| **s).count();
        ui.horizontal(|ui| {
            ui.add(
                egui::Slider::new(&mut p.canvas_settings.unsure_below, 0.0..=1.0)
                    .text("unsure below")
                    .fixed_decimals(2),
            )
            .on_hover_text("Tokens drawn with less probability than this are outlined on the Confidence overlay");
            if ui
                .add_enabled(count > 0, egui::Button::new(format!("Repaint unsure ({count})")))
                .on_hover_text("Accept this candidate, then mask just the unsure tokens and generate them again")
                .clicked()
            {
                repaint = true;
            }
        });
        // Its own line: beside the slider it wrapped in a narrow panel.
        ui.horizontal(|ui| {
            ui.small(format!(
                "mean confidence {:.0}% · {count} of {sampled} tokens unsure",
                100.0 * mean
            ));
            let label = if p.canvas_settings.show_confidence {
                "hide confidence"
            } else {
                "show confidence"
            };
            if ui.small_button(label).clicked() {
                p.canvas_settings.show_confidence = !p.canvas_settings.show_confidence;
            }
        });
    }
    if repaint {
        let t = p.canvas_settings.unsure_below;
        return p.send(Command::RepaintUnsure(selected, t));
    }
    if let Some(i) = select {
        p.send(Command::SelectCandidate(i));
    }
    if let Some(v) = view_to {
        p.send(Command::ViewLevel(v));
    }
    if accept {
        p.send(Command::Accept(selected));
    } else if discard {
        p.send(Command::Discard);
    }
}

pub(super) fn history_ui(p: &mut Panels, ui: &mut egui::Ui) {
    if p.doc.is_some()
        && p.jobs.last_mask.is_some()
        && ui
            .button("Reuse last mask  Ctrl+M")
            .on_hover_text("Restore the mask of the last generation (undoable)")
            .clicked()
    {
        p.run(Action::ReuseMask);
    }
    if p.generations.is_empty() {
        ui.label("Accepted results appear here.");
        return;
    }
    let mut again = None;
    for (i, g) in p.generations.iter().enumerate().rev() {
        ui.group(|ui| {
            ui.label(format!("#{} {}", i + 1, g.summary()));
            ui.small(format!(
                "{} · {} · {} candidates",
                g.model,
                format_secs(g.secs),
                g.settings.candidates
            ));
            ui.horizontal(|ui| {
                if ui.small_button("copy seed").clicked() {
                    ui.ctx().copy_text(g.settings.seed.to_string());
                }
                if !g.settings.prompt.is_empty() && ui.small_button("copy prompt").clicked() {
                    ui.ctx().copy_text(g.settings.prompt.clone());
                }
                if ui.small_button("run again").clicked() {
                    again = Some(i);
                }
            });
        });
    }
    if let Some(i) = again {
        p.send(Command::RunAgain(i));
    }
}
