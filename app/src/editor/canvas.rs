//! The canvas widget: shows the document and edits its mask with the active tool.
//!
//! Drawing goes through `shaders/canvas.wgsl` when a wgpu render state exists ([`gpu`]),
//! otherwise through egui textures ([`fallback`]); input handling is shared.
//!
//! Navigation: wheel zooms at the pointer (Ctrl+wheel and pinch too), touchpad two-finger
//! scroll pans, Space+drag and middle-drag pan, Ctrl+0 fits, Ctrl+1/2/3/4 zoom to
//! 100/200/400/800 % about the view centre (keys from the [`Keymap`]).
//! Tools: left drag paints with the active tool, right drag does the opposite (erases with
//! the brush, removes a rectangle/lasso/fill region), Escape cancels the current stroke.
//! Every finished stroke or shape is returned as one [`MaskEdit`].

mod fallback;
mod gpu;
mod unsure;
mod view;

use egui::{
    Color32, CursorIcon, Event, Key, Modifiers, MouseWheelSource, MouseWheelUnit, PointerButton,
    Pos2, Rect, Sense, Stroke,
};

pub use view::{View, ZOOM_RANGE};

use super::document::{Document, MaskEdit, PixelRect};
use super::keymap::{Action, Keymap};
use super::mask_ops::{self, Brush, FillRule, PaintMode, StrokeRecorder};
use super::tools::{Tool, ToolState};

/// How the canvas shows the document.
#[derive(Debug, Clone, PartialEq)]
pub struct CanvasSettings {
    /// Tint of masked pixels.
    pub mask_colour: Color32,
    /// Opacity of the tint at mask value 255 (0..=1).
    pub mask_opacity: f32,
    /// Draw the model's token grid over the context window.
    pub show_token_grid: bool,
    /// Hide the job overlay and the mask ("hold a key to see the original").
    pub show_original: bool,
    /// Tint every generated token's cell by how sure the sampler was of it (red unsure, green
    /// sure) at the shown level.
    pub show_confidence: bool,
    /// Outline the cells of tokens drawn with a probability below this ("Repaint unsure"
    /// takes them).
    pub unsure_below: f32,
}

impl Default for CanvasSettings {
    fn default() -> Self {
        Self {
            mask_colour: Color32::from_rgb(255, 40, 90),
            mask_opacity: 0.5,
            show_token_grid: true,
            show_original: false,
            show_confidence: false,
            unsure_below: 0.3,
        }
    }
}

/// What happened on the canvas this frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanvasOutput {
    /// Strokes and shapes finished this frame, oldest first (already applied to the mask).
    pub edits: Vec<MaskEdit>,
    /// Image pixel under the pointer.
    pub hover_px: Option<(u32, u32)>,
    /// Current zoom (1 = 100 %).
    pub zoom: f32,
}

/// A drag in progress.
enum Gesture {
    Stroke {
        rec: StrokeRecorder,
        last: Pos2,
        brush: Brush,
        mode: PaintMode,
        button: PointerButton,
    },
    Rect {
        start: Pos2,
        end: Pos2,
        mode: PaintMode,
        button: PointerButton,
    },
    Lasso {
        points: Vec<Pos2>,
        rule: FillRule,
        mode: PaintMode,
        button: PointerButton,
    },
    Pan {
        last: Pos2,
        button: PointerButton,
    },
}

impl Gesture {
    fn button(&self) -> PointerButton {
        match self {
            Self::Stroke { button, .. }
            | Self::Rect { button, .. }
            | Self::Lasso { button, .. }
            | Self::Pan { button, .. } => *button,
        }
    }
}

enum Backend {
    Gpu(Box<gpu::GpuCanvas>),
    Egui(fallback::EguiCanvas),
}

/// The canvas widget; keep one per document view across frames.
pub struct Canvas {
    view: View,
    backend: Backend,
    gesture: Option<Gesture>,
    size: (u32, u32),
    fit_pending: bool,
    last_rect: Option<(Rect, f32)>,
    /// Bindings of its zoom keys.
    keys: Keymap,
}

impl Canvas {
    /// A canvas drawing with wgpu when `render_state` is given, else with egui textures.
    pub fn new(render_state: Option<&egui_wgpu::RenderState>) -> Self {
        let backend = match render_state {
            Some(rs) => Backend::Gpu(Box::new(gpu::GpuCanvas::new(rs))),
            None => Backend::Egui(fallback::EguiCanvas::new(4096)),
        };
        Self {
            view: View::default(),
            backend,
            gesture: None,
            size: (0, 0),
            fit_pending: true,
            last_rect: None,
            keys: Keymap::default(),
        }
    }

    /// Whether it draws with the wgpu shader (false: egui-texture fallback).
    pub fn uses_wgpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu(_))
    }

    /// Splits images into tiles of at most `side` pixels (normally the device limit);
    /// for tests of the tiling.
    pub fn limit_tile_side(&mut self, side: u32) {
        match &mut self.backend {
            Backend::Gpu(g) => g.limit_tile_side(side),
            Backend::Egui(e) => e.limit_tile_side(side),
        }
    }

    /// Shows the whole image.
    pub fn fit(&mut self) {
        match self.last_rect {
            Some((rect, ppp)) if self.size.0 > 0 => self.view.fit(rect, ppp, self.size),
            _ => self.fit_pending = true,
        }
    }

    /// 100 %: one image pixel per screen pixel, keeping the centre.
    pub fn actual_size(&mut self) {
        self.zoom_to(1.0);
    }

    /// Zooms to `zoom` (1 = 100 %, clamped to [`ZOOM_RANGE`]) about the view centre.
    pub fn zoom_to(&mut self, zoom: f32) {
        if zoom.is_finite() {
            self.view.zoom = zoom.clamp(ZOOM_RANGE.0, ZOOM_RANGE.1);
            self.fit_pending = false;
        }
    }

    /// Fits or zooms to a preset as `action` says; false for other actions.
    pub fn zoom_action(&mut self, action: Action) -> bool {
        match action {
            Action::ZoomFit => self.fit(),
            a => match a.zoom_level() {
                Some(z) => self.zoom_to(z),
                None => return false,
            },
        }
        true
    }

    /// Uses `keys` for its own zoom keys (fit, 100 % … 800 %) from now on.
    pub fn set_keymap(&mut self, keys: &Keymap) {
        if self.keys != *keys {
            self.keys = keys.clone();
        }
    }

    /// Current zoom (framebuffer pixels per image pixel).
    pub fn zoom(&self) -> f32 {
        self.view.zoom
    }

    /// The view transform.
    pub fn view(&self) -> View {
        self.view
    }

    /// Replaces the view transform (zoom is clamped to [`ZOOM_RANGE`]).
    pub fn set_view(&mut self, view: View) {
        self.view = View {
            zoom: view.zoom.clamp(ZOOM_RANGE.0, ZOOM_RANGE.1),
            center: view.center,
        };
        self.fit_pending = false;
    }

    /// The screen rectangle the canvas used last frame.
    pub fn rect(&self) -> Option<Rect> {
        self.last_rect.map(|(r, _)| r)
    }

    /// Screen position of image point `img` (as of the last frame).
    pub fn image_to_screen(&self, img: Pos2) -> Option<Pos2> {
        self.last_rect
            .map(|(rect, ppp)| self.view.to_screen(rect, ppp, img))
    }

    /// Image point under screen position `p` (as of the last frame).
    pub fn screen_to_image(&self, p: Pos2) -> Option<Pos2> {
        self.last_rect
            .map(|(rect, ppp)| self.view.to_image(rect, ppp, p))
    }

    /// Whether a stroke or shape is in progress.
    pub fn is_drawing(&self) -> bool {
        matches!(
            self.gesture,
            Some(Gesture::Stroke { .. } | Gesture::Rect { .. } | Gesture::Lasso { .. })
        )
    }

    /// Shows `doc` in all the available space and applies this frame's input.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        doc: &mut Document,
        tools: &mut ToolState,
        settings: &CanvasSettings,
    ) -> CanvasOutput {
        let ctx = ui.ctx().clone();
        let ppp = ctx.pixels_per_point();
        let (rect, response) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        response.widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::Canvas, ui.is_enabled(), "Canvas")
        });
        if doc.size() != self.size {
            // A different image: a stroke on the old one cannot continue.
            self.gesture = None;
            self.size = doc.size();
            self.fit_pending = true;
        }
        if self.fit_pending && rect.width() > 0.0 && rect.height() > 0.0 {
            self.view.fit(rect, ppp, self.size);
            self.fit_pending = false;
        }
        self.last_rect = Some((rect, ppp));

        let keyboard = !ctx.egui_wants_keyboard_input();
        if keyboard {
            self.shortcuts(&ctx, doc);
        }
        let space = keyboard && ctx.input(|i| i.key_down(Key::Space));
        let mut out = CanvasOutput::default();
        let latest = ctx.input(|i| i.pointer.latest_pos());
        let over = |p: Pos2| rect.contains(p) && ctx.layer_id_at(p) == Some(ui.layer_id());
        if latest.is_some_and(over) {
            self.wheel(&ctx, rect, ppp, latest.unwrap_or(rect.center()));
        }
        let events = ctx.input(|i| i.events.clone());
        for event in &events {
            match *event {
                Event::PointerButton {
                    pos,
                    button,
                    pressed: true,
                    ..
                } if self.gesture.is_none() && over(pos) && ui.is_enabled() => {
                    self.press(doc, tools, rect, ppp, pos, button, space, &mut out);
                }
                Event::PointerMoved(pos) => self.drag_to(doc, rect, ppp, pos),
                Event::PointerButton {
                    pos,
                    button,
                    pressed: false,
                    ..
                } if self.gesture.as_ref().is_some_and(|g| g.button() == button) => {
                    self.drag_to(doc, rect, ppp, pos);
                    self.release(doc, &mut out);
                }
                Event::WindowFocused(false) => self.release(doc, &mut out),
                _ => {}
            }
        }

        let hover = latest.filter(|&p| over(p) || self.gesture.is_some());
        let hover_img = hover.map(|p| self.view.to_image(rect, ppp, p));
        let (w, h) = self.size;
        out.hover_px = hover_img
            .filter(|p| p.x >= 0.0 && p.y >= 0.0 && p.x < w as f32 && p.y < h as f32)
            .map(|p| (p.x as u32, p.y as u32));
        out.zoom = self.view.zoom;
        if response.hovered() || self.gesture.is_some() {
            ctx.set_cursor_icon(match self.gesture {
                Some(Gesture::Pan { .. }) => CursorIcon::Grabbing,
                None if space => CursorIcon::Grab,
                _ => CursorIcon::Crosshair,
            });
        }
        let cursor = match (&self.gesture, hover_img) {
            (Some(Gesture::Stroke { brush, .. }), Some(p)) => Some((p, brush.size * 0.5)),
            (None, Some(p)) if tools.tool.uses_brush() && !space && response.hovered() => {
                Some((p, tools.brush().size * 0.5))
            }
            _ => None,
        };

        self.paint(ui, rect, doc, settings, cursor);
        out
    }

    fn shortcuts(&mut self, ctx: &egui::Context, doc: &mut Document) {
        let (zooms, escape) = ctx.input_mut(|i| {
            (
                self.keys.consume(i, false, Action::is_zoom),
                self.gesture.is_some() && i.consume_key(Modifiers::NONE, Key::Escape),
            )
        });
        for action in zooms {
            self.zoom_action(action);
        }
        if escape && let Some(Gesture::Stroke { rec, .. }) = self.gesture.take() {
            rec.cancel(doc);
        }
    }

    /// Wheel zooms at the pointer; touchpad scrolling pans; Ctrl+wheel and pinch arrive as
    /// egui's zoom delta.
    fn wheel(&mut self, ctx: &egui::Context, rect: Rect, ppp: f32, pointer: Pos2) {
        let (zoom, events) = ctx.input(|i| (i.zoom_delta(), i.events.clone()));
        if zoom != 1.0 {
            self.view.zoom_around(rect, ppp, pointer, zoom);
        }
        for event in events {
            let Event::MouseWheel {
                unit,
                delta,
                source,
                modifiers,
                ..
            } = event
            else {
                continue;
            };
            if modifiers.command || modifiers.ctrl {
                continue; // already in zoom_delta
            }
            let points = match unit {
                MouseWheelUnit::Point => delta,
                MouseWheelUnit::Line => delta * 40.0,
                MouseWheelUnit::Page => delta * rect.height(),
            };
            let pans = match source {
                MouseWheelSource::Trackpad | MouseWheelSource::Momentum => true,
                MouseWheelSource::Wheel => false,
                MouseWheelSource::Unknown => unit == MouseWheelUnit::Point,
            };
            if pans {
                self.view.pan(ppp, points);
            } else {
                // One notch (40 points) zooms by 1.25.
                let factor = 1.25f32.powf((points.y + points.x) / 40.0);
                self.view.zoom_around(rect, ppp, pointer, factor);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn press(
        &mut self,
        doc: &mut Document,
        tools: &ToolState,
        rect: Rect,
        ppp: f32,
        pos: Pos2,
        button: PointerButton,
        space: bool,
        out: &mut CanvasOutput,
    ) {
        let img = self.view.to_image(rect, ppp, pos);
        let secondary = match button {
            PointerButton::Middle => {
                self.gesture = Some(Gesture::Pan { last: pos, button });
                return;
            }
            PointerButton::Primary if space => {
                self.gesture = Some(Gesture::Pan { last: pos, button });
                return;
            }
            PointerButton::Primary => false,
            PointerButton::Secondary => true,
            _ => return,
        };
        let additive = (tools.tool != Tool::Eraser) != secondary;
        let mode = if additive {
            PaintMode::Add
        } else {
            PaintMode::Subtract
        };
        self.gesture = match tools.tool {
            Tool::Brush | Tool::Eraser => {
                let brush = tools.brush();
                let mut rec = StrokeRecorder::new(mask_ops::brush_label(mode));
                rec.segment(doc, (img.x, img.y), (img.x, img.y), brush, mode);
                Some(Gesture::Stroke {
                    rec,
                    last: img,
                    brush,
                    mode,
                    button,
                })
            }
            Tool::Rectangle => Some(Gesture::Rect {
                start: img,
                end: img,
                mode,
                button,
            }),
            Tool::Lasso => Some(Gesture::Lasso {
                points: vec![img],
                rule: tools.fill_rule,
                mode,
                button,
            }),
            Tool::Fill => {
                let (w, h) = doc.size();
                if img.x >= 0.0 && img.y >= 0.0 && img.x < w as f32 && img.y < h as f32 {
                    let seed = (img.x as u32, img.y as u32);
                    out.edits
                        .extend(mask_ops::flood_fill(doc, seed, tools.tolerance, mode));
                }
                None
            }
            // Clicks of the Select tool are handled by `segment::canvas_ui`.
            Tool::Select => None,
        };
    }

    fn drag_to(&mut self, doc: &mut Document, rect: Rect, ppp: f32, pos: Pos2) {
        let img = self.view.to_image(rect, ppp, pos);
        let min_step = 2.0 / self.view.scale(ppp);
        match &mut self.gesture {
            Some(Gesture::Stroke {
                rec,
                last,
                brush,
                mode,
                ..
            }) if *last != img => {
                rec.segment(doc, (last.x, last.y), (img.x, img.y), *brush, *mode);
                *last = img;
            }
            Some(Gesture::Rect { end, .. }) => *end = img,
            Some(Gesture::Lasso { points, .. })
                if points.last().is_none_or(|p| p.distance(img) >= min_step) =>
            {
                points.push(img);
            }
            Some(Gesture::Pan { last, .. }) => {
                self.view.pan(ppp, pos - *last);
                *last = pos;
            }
            _ => {}
        }
    }

    fn release(&mut self, doc: &mut Document, out: &mut CanvasOutput) {
        let edit = match self.gesture.take() {
            Some(Gesture::Stroke { rec, .. }) => rec.finish(doc),
            Some(Gesture::Rect {
                start, end, mode, ..
            }) => {
                let (w, h) = doc.size();
                let px = |v: f32, max: u32| v.round().clamp(0.0, max as f32) as u32;
                let (x0, x1) = (px(start.x.min(end.x), w), px(start.x.max(end.x), w));
                let (y0, y1) = (px(start.y.min(end.y), h), px(start.y.max(end.y), h));
                let r = PixelRect {
                    x: x0,
                    y: y0,
                    w: x1 - x0,
                    h: y1 - y0,
                };
                mask_ops::fill_rect(doc, r, mode)
            }
            Some(Gesture::Lasso {
                points, rule, mode, ..
            }) => {
                let pts: Vec<(f32, f32)> = points.iter().map(|p| (p.x, p.y)).collect();
                mask_ops::fill_polygon(doc, &pts, rule, mode)
            }
            Some(Gesture::Pan { .. }) | None => None,
        };
        out.edits.extend(edit);
    }

    fn paint(
        &mut self,
        ui: &egui::Ui,
        rect: Rect,
        doc: &mut Document,
        settings: &CanvasSettings,
        cursor: Option<(Pos2, f32)>,
    ) {
        let ctx = ui.ctx();
        let ppp = ctx.pixels_per_point();
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 0.0, ui.visuals().extreme_bg_color);
        let view = self.view.snapped(rect, ppp);
        match &mut self.backend {
            Backend::Gpu(g) => {
                g.sync(doc);
                let globals = globals(&view, rect, ppp, doc, settings, cursor, g);
                let callback = g.callback(globals);
                painter.add(egui_wgpu::Callback::new_paint_callback(rect, callback));
            }
            Backend::Egui(e) => {
                e.sync(ctx, doc);
                e.paint(&painter, rect, &view, doc, settings);
                if let Some((p, r)) = cursor {
                    let centre = view.to_screen(rect, ppp, p);
                    fallback::paint_cursor(&painter, centre, r * view.scale(ppp));
                }
            }
        }
        let to_screen = |p: Pos2| view.to_screen(rect, ppp, p);
        let outline = Stroke::new(1.5, Color32::WHITE);
        let shadow = Stroke::new(3.0, Color32::from_black_alpha(160));
        if settings.show_confidence && !settings.show_original {
            unsure::paint(
                &painter,
                doc,
                settings.unsure_below,
                &to_screen,
                outline,
                shadow,
            );
        }
        match &self.gesture {
            Some(Gesture::Rect { start, end, .. }) => {
                let r = Rect::from_two_pos(to_screen(*start), to_screen(*end));
                painter.rect_stroke(r, 0.0, shadow, egui::StrokeKind::Middle);
                painter.rect_stroke(r, 0.0, outline, egui::StrokeKind::Middle);
            }
            Some(Gesture::Lasso { points, .. }) => {
                let mut pts: Vec<Pos2> = points.iter().map(|&p| to_screen(p)).collect();
                if let Some(&first) = pts.first() {
                    pts.push(first);
                }
                painter.add(egui::Shape::line(pts.clone(), shadow));
                painter.add(egui::Shape::line(pts, outline));
            }
            _ => {}
        }
    }
}

/// The shader's uniform block for this frame (framebuffer size is filled in by `prepare`).
fn globals(
    view: &View,
    rect: Rect,
    ppp: f32,
    doc: &Document,
    settings: &CanvasSettings,
    cursor: Option<(Pos2, f32)>,
    gpu: &gpu::GpuCanvas,
) -> gpu::Globals {
    let c = rect.center().to_vec2() * ppp;
    // Bilinear taps per axis so that reduced images average every pixel they cover.
    let taps = if view.zoom >= 1.0 {
        1.0
    } else {
        (0.5 / view.zoom).ceil().clamp(1.0, 4.0)
    };
    let (w, h) = doc.size();
    let layers = !settings.show_original;
    let m = settings.mask_colour;
    let opacity = if layers {
        settings.mask_opacity.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let overlay = match &doc.overlay {
        Some(o) if layers && gpu.has_overlay_for(doc) => [
            o.origin.0 as f32,
            o.origin.1 as f32,
            o.extent.0 as f32,
            o.extent.1 as f32,
        ],
        _ => [0.0; 4],
    };
    let grid = match &doc.token_grid {
        Some(t) if settings.show_token_grid && gpu.has_cells_for(doc) => {
            [t.origin.0, t.origin.1, t.side, t.grid as f32]
        }
        _ => [0.0; 4],
    };
    let cursor = cursor.map_or([0.0; 4], |(p, r)| [p.x, p.y, r, 1.0]);
    let srgb = if gpu.srgb_target() { 1.0 } else { 0.0 };
    [
        [0.0, 0.0, ppp, srgb],
        [c.x, c.y, view.zoom, taps],
        [view.center.x, view.center.y, w as f32, h as f32],
        [
            f32::from(m.r()) / 255.0,
            f32::from(m.g()) / 255.0,
            f32::from(m.b()) / 255.0,
            opacity,
        ],
        overlay,
        grid,
        cursor,
    ]
}
