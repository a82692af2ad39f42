//! The canvas without wgpu (no render state, e.g. kittest without a renderer): the same
//! layers drawn with egui textures and shapes. Dirty rectangles go through
//! `TextureHandle::set_partial`; the mask is an alpha texture tinted at paint time, so
//! changing its colour or opacity uploads nothing.

use std::sync::Arc;

use egui::{
    Color32, ColorImage, Painter, Pos2, Rect, Stroke, TextureHandle, TextureOptions, Vec2, pos2,
};
use image::RgbImage;

use super::CanvasSettings;
use super::view::View;
use crate::editor::document::{Document, PixelRect};
use crate::editor::mask_ops;

/// Image pixels are sharp when magnified and filtered when reduced.
const PIXELS: TextureOptions = TextureOptions {
    magnification: egui::TextureFilter::Nearest,
    minification: egui::TextureFilter::Linear,
    wrap_mode: egui::TextureWrapMode::ClampToEdge,
    mipmap_mode: None,
};

struct Tile {
    rect: PixelRect,
    image: TextureHandle,
    mask: TextureHandle,
}

/// Egui-texture copy of the document.
pub struct EguiCanvas {
    tile_side: u32,
    size: (u32, u32),
    tiles: Vec<Tile>,
    overlay: Option<(Arc<RgbImage>, TextureHandle)>,
    checker: Option<TextureHandle>,
}

impl EguiCanvas {
    /// No textures yet; tiles at most `tile_side` pixels wide.
    pub fn new(tile_side: u32) -> Self {
        Self {
            tile_side: tile_side.max(1),
            size: (0, 0),
            tiles: Vec::new(),
            overlay: None,
            checker: None,
        }
    }

    /// Limits the tile side (tests).
    pub fn limit_tile_side(&mut self, side: u32) {
        self.tile_side = self.tile_side.min(side.max(1));
        self.size = (0, 0);
    }

    /// Uploads what changed in `doc` and clears `doc.dirty`.
    pub fn sync(&mut self, ctx: &egui::Context, doc: &mut Document) {
        let (w, h) = doc.size();
        let side = self
            .tile_side
            .min(ctx.input(|i| i.max_texture_side) as u32)
            .max(1);
        if self.size != (w, h) || self.tiles.first().is_some_and(|t| t.rect.w > side) {
            self.size = (w, h);
            self.tiles.clear();
            for y in (0..h).step_by(side as usize) {
                for x in (0..w).step_by(side as usize) {
                    let rect = PixelRect {
                        x,
                        y,
                        w: side.min(w - x),
                        h: side.min(h - y),
                    };
                    self.tiles.push(Tile {
                        rect,
                        image: ctx.load_texture("canvas_image", image_part(doc, rect), PIXELS),
                        mask: ctx.load_texture("canvas_mask", mask_part(doc, rect), PIXELS),
                    });
                }
            }
            doc.dirty = Default::default();
        }
        let dirty = std::mem::take(&mut doc.dirty);
        for tile in &mut self.tiles {
            if let Some(r) = intersect(dirty.image.clip(w, h), tile.rect) {
                let pos = [(r.x - tile.rect.x) as usize, (r.y - tile.rect.y) as usize];
                tile.image.set_partial(pos, image_part(doc, r), PIXELS);
            }
            if let Some(r) = intersect(dirty.mask.clip(w, h), tile.rect) {
                let pos = [(r.x - tile.rect.x) as usize, (r.y - tile.rect.y) as usize];
                tile.mask.set_partial(pos, mask_part(doc, r), PIXELS);
            }
        }
        let wanted = doc.overlay.as_ref().map(|o| &o.pixels);
        let same = match (&self.overlay, wanted) {
            (Some((have, _)), Some(want)) => Arc::ptr_eq(have, want),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.overlay = wanted.map(|p| {
                let size = [p.width() as usize, p.height() as usize];
                let img = ColorImage::from_rgb(size, p.as_raw());
                (
                    Arc::clone(p),
                    ctx.load_texture("canvas_overlay", img, PIXELS),
                )
            });
        }
        if self.checker.is_none() {
            let (a, b) = (Color32::from_gray(204), Color32::from_gray(158));
            let img = ColorImage::new([2, 2], vec![a, b, b, a]);
            self.checker =
                Some(ctx.load_texture("canvas_checker", img, TextureOptions::NEAREST_REPEAT));
        }
    }

    /// Draws checkerboard, image, overlay, mask and token grid.
    pub fn paint(
        &self,
        painter: &Painter,
        rect: Rect,
        view: &View,
        doc: &Document,
        settings: &CanvasSettings,
    ) {
        let ppp = painter.ctx().pixels_per_point();
        let to_screen = |x: f32, y: f32| view.to_screen(rect, ppp, pos2(x, y));
        let (w, h) = doc.size();
        let image_rect = Rect::from_min_max(to_screen(0.0, 0.0), to_screen(w as f32, h as f32));
        let uv = Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0));
        if let Some(checker) = &self.checker {
            let visible = image_rect.intersect(rect);
            let square = 16.0;
            let uv = Rect::from_min_max(
                (visible.min.to_vec2() / square).to_pos2(),
                (visible.max.to_vec2() / square).to_pos2(),
            );
            painter.image(checker.id(), visible, uv, Color32::WHITE);
        }
        let tile_screen = |r: PixelRect| {
            Rect::from_min_max(
                to_screen(r.x as f32, r.y as f32),
                to_screen((r.x + r.w) as f32, (r.y + r.h) as f32),
            )
        };
        for tile in &self.tiles {
            painter.image(tile.image.id(), tile_screen(tile.rect), uv, Color32::WHITE);
        }
        let show_layers = !settings.show_original;
        if show_layers && let (Some((_, tex)), Some(o)) = (&self.overlay, &doc.overlay) {
            let (ox, oy) = (o.origin.0 as f32, o.origin.1 as f32);
            let r = Rect::from_min_max(
                to_screen(ox, oy),
                to_screen(ox + o.extent.0 as f32, oy + o.extent.1 as f32),
            );
            painter.image(tex.id(), r, uv, Color32::WHITE);
        }
        if show_layers && settings.mask_opacity > 0.0 {
            let c = settings.mask_colour;
            let alpha = (settings.mask_opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
            let tint = Color32::from_rgba_unmultiplied(c.r(), c.g(), c.b(), alpha);
            for tile in &self.tiles {
                painter.image(tile.mask.id(), tile_screen(tile.rect), uv, tint);
            }
        }
        if settings.show_token_grid
            && let Some(grid) = &doc.token_grid
            && grid.grid > 0
            && grid.touched.len() == grid.grid * grid.grid
        {
            let n = grid.grid;
            let cell = grid.side / n as f32;
            let (gx, gy) = grid.origin;
            let touched = Color32::from_rgba_unmultiplied(64, 230, 255, 102);
            for (i, _) in grid.touched.iter().enumerate().filter(|(_, t)| **t) {
                let (cx, cy) = ((i % n) as f32, (i / n) as f32);
                let r = Rect::from_min_max(
                    to_screen(gx + cx * cell, gy + cy * cell),
                    to_screen(gx + (cx + 1.0) * cell, gy + (cy + 1.0) * cell),
                );
                painter.rect_filled(r, 0.0, touched);
            }
            let line = Stroke::new(1.0, Color32::from_rgba_unmultiplied(255, 255, 255, 115));
            if cell * view.scale(ppp) >= 3.0 {
                for k in 1..n {
                    let t = k as f32 * cell;
                    let (a, b) = (to_screen(gx + t, gy), to_screen(gx + t, gy + grid.side));
                    painter.line_segment([a, b], line);
                    let (a, b) = (to_screen(gx, gy + t), to_screen(gx + grid.side, gy + t));
                    painter.line_segment([a, b], line);
                }
            }
            let window =
                Rect::from_min_max(to_screen(gx, gy), to_screen(gx + grid.side, gy + grid.side));
            painter.rect_stroke(
                window,
                0.0,
                Stroke::new(2.0, Color32::from_rgb(255, 209, 51)),
                egui::StrokeKind::Inside,
            );
        }
    }
}

/// Draws the brush outline (white inside black) at `centre` with `radius` screen points.
pub fn paint_cursor(painter: &Painter, centre: Pos2, radius: f32) {
    painter.circle_stroke(
        centre,
        radius + 1.0,
        Stroke::new(1.0, Color32::from_black_alpha(200)),
    );
    painter.circle_stroke(centre, radius, Stroke::new(1.0, Color32::WHITE));
    if radius < 3.0 {
        let d = Vec2::splat(4.0);
        painter.line_segment([centre - d, centre + d], Stroke::new(1.0, Color32::WHITE));
    }
}

fn image_part(doc: &Document, r: PixelRect) -> ColorImage {
    let w = doc.image.width() as usize;
    let raw = doc.image.as_raw();
    let mut rgba = Vec::with_capacity((r.w * r.h * 4) as usize);
    for y in r.y as usize..(r.y + r.h) as usize {
        let s = (y * w + r.x as usize) * 4;
        rgba.extend_from_slice(&raw[s..s + r.w as usize * 4]);
    }
    ColorImage::from_rgba_unmultiplied([r.w as usize, r.h as usize], &rgba)
}

fn mask_part(doc: &Document, r: PixelRect) -> ColorImage {
    let pixels = doc
        .mask_rect(r)
        .into_iter()
        .map(Color32::from_white_alpha)
        .collect();
    ColorImage::new([r.w as usize, r.h as usize], pixels)
}

/// The pixels in both rectangles, if any.
fn intersect(a: PixelRect, b: PixelRect) -> Option<PixelRect> {
    Some(mask_ops::intersect(a, b)).filter(|r| !r.is_empty())
}
