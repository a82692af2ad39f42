//! The confidence overlay: every generated token's cell tinted by how sure the sampler was of
//! it, the cells below the "repaint unsure" threshold outlined.

use egui::{Color32, Pos2, Rect, Stroke};
use tessera_engine::confidence;

use crate::editor::document::Document;

/// Paints `doc`'s confidence (if any) with `to_screen` mapping image points to the screen.
pub(super) fn paint(
    painter: &egui::Painter,
    doc: &Document,
    unsure_below: f32,
    to_screen: &dyn Fn(Pos2) -> Pos2,
    outline: Stroke,
    shadow: Stroke,
) {
    let Some(c) = &doc.confidence else { return };
    let (w, h) = doc.size();
    let conf = &c.confidence;
    for (i, (&p, &sampled)) in conf.prob.iter().zip(&conf.sampled).enumerate() {
        if !sampled {
            continue;
        }
        let Some((x0, y0, x1, y1)) = confidence::cell_rect(&c.window, c.grid, i, w, h) else {
            continue;
        };
        let r = Rect::from_min_max(
            to_screen(Pos2::new(x0 as f32, y0 as f32)),
            to_screen(Pos2::new(x1 as f32, y1 as f32)),
        );
        let [cr, cg, cb] = confidence::colour(p);
        painter.rect_filled(r, 0.0, Color32::from_rgba_unmultiplied(cr, cg, cb, 165));
        if p < unsure_below {
            let inner = r.shrink(1.0);
            painter.rect_stroke(inner, 0.0, shadow, egui::StrokeKind::Inside);
            painter.rect_stroke(inner, 0.0, outline, egui::StrokeKind::Inside);
        }
    }
}
