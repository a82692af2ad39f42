//! The "Select object" tool: click on an object and MobileSAM (the engine's
//! [`tessera_engine::segment`]) proposes its mask. Left click adds an include point, right
//! click (or Alt+click) an exclude point; every click asks the segmentation worker for a new
//! mask, shown as a tinted preview over the canvas. Enter merges the preview into the
//! document mask as one undoable edit (adding or subtracting), Esc drops the points.
//!
//! The image encoder runs once per image (per [`Document::image_id`], so mask edits do not
//! re-embed), on the worker thread; the UI never waits on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Color32, Key, PointerButton, Pos2, Rect, Stroke};
use image::GrayImage;
use tessera_engine::segment::{Point, SegmentEvent, SegmentWorker, WEIGHTS_FILE};

use super::canvas::Canvas;
use super::document::{Document, MaskEdit, PixelRect};
use super::history::{Change, History};
use super::mask_ops::{self, PaintMode};
use super::tools::{Tool, ToolState};

/// Environment variable naming the weights file to load at start.
pub const WEIGHTS_ENV: &str = "TESSERA_SAM_WEIGHTS";

/// Largest side of the preview texture (larger masks are shown downscaled).
const PREVIEW_MAX_SIDE: u32 = 2048;

/// The weights file loaded at start: [`WEIGHTS_ENV`] when set, else
/// `assets/sam/mobile_sam-tiny-vitt.safetensors` (beside the working directory or the build
/// tree) when it exists.
pub fn default_weights() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(WEIGHTS_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    [
        Some(PathBuf::from("assets/sam")),
        exe_dir.map(|d| d.join("../../assets/sam")),
    ]
    .into_iter()
    .flatten()
    .map(|d| d.join(WEIGHTS_FILE))
    .find(|p| p.is_file())
}

/// Where the segmentation weights stand.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// None asked for.
    NotLoaded,
    /// Loading this file.
    Loading(PathBuf),
    /// Loaded from this file.
    Loaded(PathBuf),
    /// This file failed to load, for this reason.
    Failed(PathBuf, String),
}

/// The mask the worker proposed for the current points.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The image it was computed on.
    pub image_id: u64,
    /// The prompt it answers.
    pub points: Vec<Point>,
    /// 255 = object, image size.
    pub mask: Arc<GrayImage>,
}

/// The tool's state: worker, weights, points and the pending preview.
pub struct SelectState {
    worker: SegmentWorker,
    /// The weights.
    pub weights: Weights,
    /// Image the worker holds the embedding of (once it said so).
    embedded: Option<u64>,
    /// Image last sent for embedding.
    embedding: Option<u64>,
    /// Image whose embedding failed (not retried until the weights change).
    embed_failed: Option<u64>,
    /// A mask for the current points is being computed (or waits for the embedding).
    waiting: bool,
    /// Prompt points (image pixels, `true` = include), on image `points_image`.
    pub points: Vec<Point>,
    points_image: u64,
    /// The latest proposed mask.
    pub preview: Option<Preview>,
    texture: Option<(u64, usize, egui::TextureHandle)>,
    /// Whether Apply merges the selection into the mask or removes it from the mask.
    pub mode: PaintMode,
    /// Enter was pressed while the mask for the current points was still being computed.
    apply_when_ready: bool,
    /// Last problem or timing, for the tool options.
    pub status: Option<String>,
}

impl SelectState {
    /// Starts the worker (it wakes `ctx` on every event) and loads `weights` if given.
    pub fn new(ctx: egui::Context, weights: Option<PathBuf>) -> Self {
        let worker = SegmentWorker::spawn_with_waker(move || ctx.request_repaint());
        let mut s = Self {
            worker,
            weights: Weights::NotLoaded,
            embedded: None,
            embedding: None,
            embed_failed: None,
            waiting: false,
            points: Vec::new(),
            points_image: 0,
            preview: None,
            texture: None,
            mode: PaintMode::Add,
            apply_when_ready: false,
            status: None,
        };
        if let Some(p) = weights {
            s.load(&p);
        }
        s
    }

    /// Loads a weights file (off the UI thread).
    pub fn load(&mut self, path: &Path) {
        self.worker.load(path);
        self.weights = Weights::Loading(path.to_path_buf());
    }

    /// Whether weights are loaded.
    pub fn ready(&self) -> bool {
        matches!(self.weights, Weights::Loaded(_))
    }

    /// Whether the worker is loading, embedding or segmenting.
    pub fn busy(&self) -> bool {
        matches!(self.weights, Weights::Loading(_))
            || (self.embedding.is_some()
                && self.embedding != self.embedded
                && self.embedding != self.embed_failed)
            || self.waiting
    }

    /// Whether the preview answers the current points.
    pub fn preview_is_current(&self) -> bool {
        self.preview
            .as_ref()
            .is_some_and(|p| p.image_id == self.points_image && p.points == self.points)
    }

    /// Drops the points and the preview.
    pub fn clear(&mut self) {
        self.points.clear();
        self.preview = None;
        self.apply_when_ready = false;
        self.waiting = false;
    }

    /// Adds a point at image pixel `(x, y)` and asks for the new mask.
    pub fn add_point(&mut self, doc: &Document, x: f32, y: f32, include: bool) {
        if doc.image_id != self.points_image {
            self.clear();
            self.points_image = doc.image_id;
        }
        self.points.push((x, y, include));
        self.apply_when_ready = false;
        self.waiting = self.ready() && doc.image_id != self.embed_failed.unwrap_or(0);
        self.request();
    }

    /// Sends the current points when the worker holds the embedding of their image (else
    /// they are sent once it does).
    fn request(&mut self) {
        if !self.points.is_empty() && self.embedded == Some(self.points_image) {
            self.worker.segment(self.points_image, self.points.clone());
        }
    }

    /// Handles the worker's events; applies a preview Enter was waiting for. Returns
    /// messages for the status bar (`true` = error).
    pub fn poll(
        &mut self,
        mut doc: Option<&mut Document>,
        history: &mut History,
    ) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        while let Some(event) = self.worker.try_recv() {
            match event {
                SegmentEvent::Loaded(p) => {
                    out.push((
                        format!("segmentation weights loaded from {}", p.display()),
                        false,
                    ));
                    self.weights = Weights::Loaded(p);
                    self.embedded = None;
                    self.embedding = None;
                    self.embed_failed = None;
                    self.status = None;
                }
                SegmentEvent::LoadFailed { path, error } => {
                    out.push((
                        format!("cannot load the segmentation weights: {error}"),
                        true,
                    ));
                    // The previous weights, if any, stay loaded on the worker.
                    if !self.ready() {
                        self.weights = Weights::Failed(path, error);
                    }
                }
                SegmentEvent::Embedded { image_id, secs } => {
                    self.embedded = Some(image_id);
                    self.status = Some(format!("image analysed in {secs:.1} s"));
                    if image_id == self.points_image {
                        self.request();
                    }
                }
                SegmentEvent::Mask {
                    image_id,
                    points,
                    mask,
                } => {
                    if image_id == self.points_image && points == self.points {
                        self.waiting = false;
                        self.preview = Some(Preview {
                            image_id,
                            points,
                            mask,
                        });
                        if self.apply_when_ready
                            && let Some(d) = doc.as_deref_mut()
                        {
                            self.apply(d, history);
                        }
                    }
                }
                SegmentEvent::Failed { image_id, error } => {
                    if image_id.is_some() && image_id == self.embedding && image_id != self.embedded
                    {
                        self.embed_failed = image_id;
                    }
                    self.status = Some(error.clone());
                    self.apply_when_ready = false;
                    self.waiting = false;
                    out.push((format!("select object: {error}"), true));
                }
            }
        }
        out
    }

    /// Sends the image for embedding when the tool is active, weights are loaded and the
    /// worker does not hold (or compute) this image's embedding yet.
    pub fn tick(&mut self, doc: &Document, active: bool) {
        if !active || !self.ready() || self.embedding == Some(doc.image_id) {
            return;
        }
        if doc.image_id != self.points_image {
            self.clear();
            self.points_image = doc.image_id;
        }
        let rgb = image::DynamicImage::ImageRgba8(doc.image.clone()).to_rgb8();
        self.worker.embed(doc.image_id, Arc::new(rgb));
        self.embedding = Some(doc.image_id);
    }

    /// Merges the preview into the document mask as one undoable edit; without a current
    /// preview, merges it once it arrives. Returns whether the mask changed now.
    pub fn apply(&mut self, doc: &mut Document, history: &mut History) -> bool {
        if self.points.is_empty() {
            return false;
        }
        if !self.preview_is_current() || self.points_image != doc.image_id {
            self.apply_when_ready = true;
            return false;
        }
        let edit = self
            .preview
            .as_ref()
            .and_then(|p| merge(doc, &p.mask, self.mode));
        self.clear();
        match edit {
            Some(e) => {
                history.push(Change::Mask(e));
                true
            }
            None => false,
        }
    }
}

/// Adds (or removes) the pixels of `selection` (≥ 128) to (from) the document mask and
/// returns the edit (trimmed to the changed pixels); `None` when nothing changed.
pub fn merge(doc: &mut Document, selection: &GrayImage, mode: PaintMode) -> Option<MaskEdit> {
    let (w, h) = doc.size();
    if selection.dimensions() != (w, h) {
        return None;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in selection.enumerate_pixels() {
        if p.0[0] >= 128 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    if x0 == u32::MAX {
        return None;
    }
    let rect = PixelRect {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    };
    let before = doc.mask_rect(rect);
    let mut after = before.clone();
    for (i, v) in after.iter_mut().enumerate() {
        let (x, y) = (x0 + i as u32 % rect.w, y0 + i as u32 / rect.w);
        if selection.get_pixel(x, y).0[0] >= 128 {
            *v = match mode {
                PaintMode::Add => 255,
                PaintMode::Subtract => 0,
            };
        }
    }
    let label = match mode {
        PaintMode::Add => "select object",
        PaintMode::Subtract => "deselect object",
    };
    let edit = mask_ops::trim(MaskEdit {
        rect,
        before,
        after,
        label,
    })?;
    doc.apply_mask_edit(&edit, true);
    Some(edit)
}

/// Canvas clicks of the Select tool (after the canvas handled the frame) and the preview
/// drawn over the canvas.
pub(crate) fn canvas_ui(
    state: &mut SelectState,
    ui: &egui::Ui,
    canvas: &Canvas,
    doc: &Document,
    tools: &ToolState,
) {
    state.tick(doc, tools.tool == Tool::Select);
    if tools.tool != Tool::Select {
        return;
    }
    let Some(rect) = canvas.rect() else { return };
    let ctx = ui.ctx();
    let space = !ctx.egui_wants_keyboard_input() && ctx.input(|i| i.key_down(Key::Space));
    let events = ctx.input(|i| i.events.clone());
    let (w, h) = doc.size();
    for event in events {
        let egui::Event::PointerButton {
            pos,
            button,
            pressed: true,
            modifiers,
        } = event
        else {
            continue;
        };
        let over = rect.contains(pos) && ctx.layer_id_at(pos) == Some(ui.layer_id());
        if !over || space || !ui.is_enabled() {
            continue;
        }
        let include = match button {
            PointerButton::Primary => !modifiers.alt,
            PointerButton::Secondary => false,
            _ => continue,
        };
        let Some(img) = canvas.screen_to_image(pos) else {
            continue;
        };
        if img.x >= 0.0 && img.y >= 0.0 && img.x < w as f32 && img.y < h as f32 {
            state.add_point(doc, img.x.floor(), img.y.floor(), include);
        }
    }
    paint(state, ui, canvas, rect, doc);
}

fn paint(state: &mut SelectState, ui: &egui::Ui, canvas: &Canvas, rect: Rect, doc: &Document) {
    let painter = ui.painter_at(rect);
    let (w, h) = doc.size();
    let (Some(a), Some(b)) = (
        canvas.image_to_screen(Pos2::ZERO),
        canvas.image_to_screen(Pos2::new(w as f32, h as f32)),
    ) else {
        return;
    };
    if let Some(p) = state
        .preview
        .as_ref()
        .filter(|p| p.image_id == doc.image_id)
    {
        let key = Arc::as_ptr(&p.mask) as usize;
        if state
            .texture
            .as_ref()
            .is_none_or(|t| (t.0, t.1) != (p.image_id, key))
        {
            let tex = preview_texture(ui.ctx(), &p.mask);
            state.texture = Some((p.image_id, key, tex));
        }
        if let Some((_, _, tex)) = &state.texture {
            let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
            painter.image(tex.id(), Rect::from_two_pos(a, b), uv, Color32::WHITE);
        }
    }
    if doc.image_id == state.points_image {
        for &(x, y, include) in &state.points {
            let Some(c) = canvas.image_to_screen(Pos2::new(x + 0.5, y + 0.5)) else {
                continue;
            };
            let fill = if include {
                Color32::from_rgb(40, 200, 90)
            } else {
                Color32::from_rgb(230, 50, 50)
            };
            painter.circle(c, 5.0, fill, Stroke::new(1.5, Color32::WHITE));
        }
    }
}

/// The selection as a translucent cyan layer (downscaled to [`PREVIEW_MAX_SIDE`]).
fn preview_texture(ctx: &egui::Context, mask: &GrayImage) -> egui::TextureHandle {
    let (w, h) = mask.dimensions();
    let scale = (PREVIEW_MAX_SIDE as f32 / w.max(h) as f32).min(1.0);
    let small;
    let m = if scale < 1.0 {
        let (sw, sh) = (
            ((w as f32 * scale) as u32).max(1),
            ((h as f32 * scale) as u32).max(1),
        );
        small = image::imageops::resize(mask, sw, sh, image::imageops::FilterType::Nearest);
        &small
    } else {
        mask
    };
    let on = Color32::from_rgba_unmultiplied(40, 220, 255, 120);
    let pixels = m
        .as_raw()
        .iter()
        .map(|&v| if v >= 128 { on } else { Color32::TRANSPARENT })
        .collect();
    let img = egui::ColorImage::new([m.width() as usize, m.height() as usize], pixels);
    ctx.load_texture("select-object-preview", img, egui::TextureOptions::NEAREST)
}
