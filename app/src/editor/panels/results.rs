//! Generate button with the cost preflight, progress, candidates with the level scrubber,
//! accept / discard, and the history of accepted generations.

use std::sync::Arc;

use egui::{ProgressBar, RichText};
use image::RgbImage;

use super::Thumbs;
use crate::editor::app::EditorApp;
use crate::editor::jobs::format_secs;
use crate::editor::settings::level_name;

/// Tokens above which the preflight warns.
const EXPENSIVE_TOKENS: usize = 20_000;

pub(super) fn generate_ui(app: &mut EditorApp, ui: &mut egui::Ui) {
    let busy = app.jobs.busy();
    let has_model = app.model.card.is_some();
    ui.horizontal(|ui| {
        let label = if app.doc.is_some() {
            "Generate  Ctrl+Enter"
        } else {
            "Sample new image"
        };
        if ui
            .add_enabled(
                has_model && !busy,
                egui::Button::new(RichText::new(label).strong()),
            )
            .clicked()
        {
            app.generate();
        }
        if busy && ui.button("Cancel  Esc").clicked() {
            app.cancel();
        }
    });
    if let Some((masked, tokens)) = app.preflight()
        && app.model.card.is_some()
    {
        let levels = app.settings.levels.len();
        let eta = app
            .jobs
            .secs_per_token
            .map(|s| {
                format!(
                    ", ≈ {}",
                    format_secs(s * tokens as f64 / app.settings.candidates.max(1) as f64)
                )
            })
            .unwrap_or_default();
        let text = format!(
            "cost: {masked} masked tokens × {levels} levels ({} passes) × {} candidates = {tokens} token steps{eta}",
            app.settings.passes(),
            app.settings.candidates
        );
        if tokens > EXPENSIVE_TOKENS {
            ui.label(RichText::new(text).color(ui.visuals().warn_fg_color));
        } else {
            ui.small(text);
        }
    }
    if let Some(r) = &app.jobs.running {
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

pub(super) fn results_ui(app: &mut EditorApp, ui: &mut egui::Ui) {
    let Some(res) = &app.jobs.results else {
        return;
    };
    let ctx = ui.ctx().clone();
    let n = res.levels.len();
    let selected = res.selected;
    let mut select = None;
    ui.label(RichText::new("Candidates").strong());
    ui.horizontal_wrapped(|ui| {
        for i in 0..n {
            // The thumbnail's version: the final image, else the number of levels so far. The
            // image behind it is only cropped when the cached thumbnail is older.
            let version = match &res.finals[i] {
                Some(_) => Some(usize::MAX),
                None => (!res.levels[i].is_empty()).then_some(res.levels[i].len()),
            };
            let cached = version.and_then(|v| {
                app.thumbs
                    .map
                    .get(&i)
                    .filter(|(cv, _)| *cv == v)
                    .map(|(_, t)| t.clone())
            });
            let tex = cached.or_else(|| {
                let img: Arc<RgbImage> = match &res.finals[i] {
                    Some(f) => res.levels[i]
                        .last()
                        .map(|p| {
                            // Thumbnail of the final image's window region.
                            let (x, y) = p.overlay.origin;
                            let (w, h) = p.overlay.pixels.dimensions();
                            let w = w.min(f.width().saturating_sub(x));
                            let h = h.min(f.height().saturating_sub(y));
                            Arc::new(image::imageops::crop_imm(&**f, x, y, w, h).to_image())
                        })
                        .unwrap_or_else(|| f.clone()),
                    None => res.levels[i].last()?.overlay.pixels.clone(),
                };
                let version = version?;
                (img.width() > 0 && img.height() > 0)
                    .then(|| thumb(&mut app.thumbs, &ctx, i, version, &img))
            });
            let resp = match tex {
                Some(tex) => ui.add(
                    egui::Button::image(egui::Image::new(&tex).max_size(egui::vec2(72.0, 72.0)))
                        .selected(i == selected),
                ),
                _ => ui.add(egui::Button::new(format!("#{i}")).selected(i == selected)),
            };
            if resp.on_hover_text(format!("candidate {i}")).clicked() {
                select = Some(i);
            }
        }
    });
    // Level scrubber for the selected candidate.
    let levels: Vec<usize> = res
        .levels
        .get(selected)
        .map(|l| l.iter().map(|p| p.level).collect())
        .unwrap_or_default();
    let model_levels = app.settings.levels.len();
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
    if let Some(i) = select {
        app.select_candidate(i);
    }
    if let Some(v) = view_to {
        app.view_level(v);
    }
    if accept {
        app.accept(selected);
    } else if discard {
        app.discard();
    }
}

pub(super) fn history_ui(app: &mut EditorApp, ui: &mut egui::Ui) {
    if app.generations.is_empty() {
        ui.label("Accepted results appear here.");
        return;
    }
    let mut again = None;
    for (i, g) in app.generations.iter().enumerate().rev() {
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
        app.run_again(i);
    }
}
