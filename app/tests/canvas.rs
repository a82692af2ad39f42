//! The canvas driven through egui_kittest: strokes and shapes from raw pointer events on the
//! egui-texture path, navigation, and wgpu snapshots of the shader canvas (lavapipe).

use std::sync::Arc;

use egui::{Event, Key, Modifiers, PointerButton, Pos2, Vec2, pos2};
use egui_kittest::Harness;
use image::{Rgba, RgbaImage};
use tessera::editor::canvas::{Canvas, CanvasSettings, View};
use tessera::editor::document::{Document, MaskEdit, Overlay, PixelRect, TokenGrid};
use tessera::editor::keymap::Keymap;
use tessera::editor::mask_ops::{self, Brush, GlobalOp, PaintMode};
use tessera::editor::tools::{Tool, ToolState};

/// A minimal host: one document on one canvas, collecting the edits it returns.
struct TestApp {
    doc: Document,
    canvas: Canvas,
    tools: ToolState,
    settings: CanvasSettings,
    edits: Vec<MaskEdit>,
    zooms: Vec<f32>,
}

impl TestApp {
    fn new(doc: Document, render_state: Option<&egui_wgpu::RenderState>) -> Self {
        Self {
            doc,
            canvas: Canvas::new(render_state),
            tools: ToolState::new(),
            settings: CanvasSettings::default(),
            edits: Vec::new(),
            zooms: Vec::new(),
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui) {
        self.tools.handle_keys(ui.ctx(), &Keymap::default());
        let out = self
            .canvas
            .ui(ui, &mut self.doc, &mut self.tools, &self.settings);
        self.edits.extend(out.edits);
        self.zooms.push(out.zoom);
    }
}

impl eframe::App for TestApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE)
            .show(ui, |ui| TestApp::ui(self, ui));
    }
}

/// A 200×100 grey image.
fn plain_doc() -> Document {
    Document::new(RgbaImage::from_pixel(200, 100, Rgba([120, 120, 120, 255])))
}

fn fallback_harness(doc: Document) -> Harness<'static, TestApp> {
    let mut h = Harness::builder()
        .with_size(Vec2::new(440.0, 260.0))
        .build_ui_state(|ui, app: &mut TestApp| app.ui(ui), TestApp::new(doc, None));
    h.run();
    h
}

fn screen(h: &Harness<'_, TestApp>, x: f32, y: f32) -> Pos2 {
    h.state()
        .canvas
        .image_to_screen(pos2(x, y))
        .expect("canvas was shown")
}

fn button(h: &Harness<'_, TestApp>, pos: Pos2, button: PointerButton, pressed: bool) {
    h.event(Event::PointerButton {
        pos,
        button,
        pressed,
        modifiers: Modifiers::NONE,
    });
}

/// Presses at the first point, moves through the rest (one frame each), releases.
fn drag(h: &mut Harness<'_, TestApp>, image_points: &[(f32, f32)], b: PointerButton) {
    let pts: Vec<Pos2> = image_points.iter().map(|&(x, y)| screen(h, x, y)).collect();
    h.event(Event::PointerMoved(pts[0]));
    button(h, pts[0], b, true);
    h.step();
    for &p in &pts[1..] {
        h.event(Event::PointerMoved(p));
        h.step();
    }
    button(h, pts[pts.len() - 1], b, false);
    h.run();
}

fn mask(h: &Harness<'_, TestApp>, x: u32, y: u32) -> u8 {
    h.state().doc.mask.get_pixel(x, y).0[0]
}

#[test]
fn brush_stroke_from_pointer_events_is_one_edit() {
    let mut h = fallback_harness(plain_doc());
    assert!(!h.state().canvas.uses_wgpu());
    h.state_mut().tools.set_size(12.0);
    // Only two far-apart samples in the middle: the stroke must still be continuous.
    drag(
        &mut h,
        &[(20.0, 50.0), (60.0, 52.0), (180.0, 50.0)],
        PointerButton::Primary,
    );
    for x in [20, 40, 100, 150, 179] {
        assert_eq!(mask(&h, x, 50), 255, "under the stroke at x={x}");
    }
    assert_eq!(mask(&h, 100, 10), 0);
    assert_eq!(mask(&h, 100, 90), 0);
    assert_eq!(mask(&h, 5, 50), 0);
    let app = h.state();
    assert_eq!(app.edits.len(), 1, "one stroke, one undo step");
    let edit = &app.edits[0];
    assert_eq!(edit.label, "brush");
    assert!(edit.before.iter().all(|&v| v == 0));
    assert!(edit.rect.w >= 160 && edit.rect.h <= 20);
    assert!(!app.canvas.is_drawing());

    let edit = edit.clone();
    h.state_mut().doc.apply_mask_edit(&edit, false);
    assert!(!h.state().doc.has_mask());
}

#[test]
fn right_drag_erases_and_eraser_tool_removes() {
    let mut h = fallback_harness(plain_doc());
    mask_ops::apply_global(&mut h.state_mut().doc, GlobalOp::SelectAll);
    h.state_mut().tools.set_size(10.0);
    drag(
        &mut h,
        &[(20.0, 30.0), (180.0, 30.0)],
        PointerButton::Secondary,
    );
    assert_eq!(mask(&h, 100, 30), 0);
    assert_eq!(mask(&h, 100, 70), 255);
    h.state_mut().tools.tool = Tool::Eraser;
    h.state_mut().tools.set_size(10.0);
    drag(
        &mut h,
        &[(20.0, 70.0), (180.0, 70.0)],
        PointerButton::Primary,
    );
    assert_eq!(mask(&h, 100, 70), 0);
    assert_eq!(mask(&h, 100, 50), 255);
    let labels: Vec<_> = h.state().edits.iter().map(|e| e.label).collect();
    assert_eq!(labels, ["eraser", "eraser"]);
}

#[test]
fn rectangle_lasso_and_fill_tools() {
    let mut image = RgbaImage::from_pixel(200, 100, Rgba([120, 120, 120, 255]));
    for y in 60..100 {
        for x in 150..200 {
            image.put_pixel(x, y, Rgba([10, 200, 10, 255]));
        }
    }
    let mut h = fallback_harness(Document::new(image));
    h.state_mut().tools.tool = Tool::Rectangle;
    drag(
        &mut h,
        &[(10.0, 10.0), (30.0, 20.0), (40.0, 30.0)],
        PointerButton::Primary,
    );
    assert_eq!(mask(&h, 10, 10), 255);
    assert_eq!(mask(&h, 39, 29), 255);
    assert_eq!(mask(&h, 40, 29), 0);
    assert_eq!(
        h.state().edits[0].rect,
        PixelRect {
            x: 10,
            y: 10,
            w: 30,
            h: 20
        }
    );

    h.state_mut().tools.tool = Tool::Lasso;
    drag(
        &mut h,
        &[(60.0, 10.0), (120.0, 10.0), (120.0, 50.0), (60.0, 50.0)],
        PointerButton::Primary,
    );
    assert_eq!(mask(&h, 90, 30), 255);
    assert_eq!(mask(&h, 90, 55), 0);

    h.state_mut().tools.tool = Tool::Fill;
    let p = screen(&h, 170.5, 80.5);
    h.event(Event::PointerMoved(p));
    button(&h, p, PointerButton::Primary, true);
    button(&h, p, PointerButton::Primary, false);
    h.run();
    assert_eq!(mask(&h, 150, 60), 255);
    assert_eq!(mask(&h, 199, 99), 255);
    assert_eq!(mask(&h, 149, 60), 0);
    let labels: Vec<_> = h.state().edits.iter().map(|e| e.label).collect();
    assert_eq!(labels, ["rectangle", "lasso", "fill"]);
}

#[test]
fn escape_cancels_a_stroke() {
    let mut h = fallback_harness(plain_doc());
    let (a, b) = (screen(&h, 20.0, 50.0), screen(&h, 150.0, 50.0));
    h.event(Event::PointerMoved(a));
    button(&h, a, PointerButton::Primary, true);
    h.step();
    h.event(Event::PointerMoved(b));
    h.step();
    assert!(h.state().doc.has_mask());
    h.key_press(Key::Escape);
    h.step();
    button(&h, b, PointerButton::Primary, false);
    h.run();
    assert!(!h.state().doc.has_mask());
    assert!(h.state().edits.is_empty());
}

#[test]
fn wheel_zooms_at_the_pointer_and_space_drag_pans() {
    let mut h = fallback_harness(plain_doc());
    let fitted = h.state().canvas.zoom();
    let anchor = screen(&h, 150.0, 25.0);
    h.event(Event::PointerMoved(anchor));
    h.event(Event::MouseWheel {
        unit: egui::MouseWheelUnit::Line,
        delta: Vec2::new(0.0, 2.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Wheel,
        modifiers: Modifiers::NONE,
    });
    h.run();
    let zoomed = h.state().canvas.zoom();
    assert!(
        (zoomed / fitted - 1.5625).abs() < 1e-3,
        "{fitted} -> {zoomed}"
    );
    let under = h.state().canvas.screen_to_image(anchor).expect("shown");
    assert!((under - pos2(150.0, 25.0)).length() < 1e-2, "{under:?}");

    // Touchpad scrolling pans instead.
    let centre = h.state().canvas.view().center;
    h.event(Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: Vec2::new(30.0, 0.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Trackpad,
        modifiers: Modifiers::NONE,
    });
    h.run();
    let view: View = h.state().canvas.view();
    assert_eq!(view.zoom, zoomed);
    assert!(view.center.x < centre.x);

    // Space + drag pans and paints nothing.
    let before = h.state().canvas.view().center;
    h.key_down(Key::Space);
    h.step();
    drag(
        &mut h,
        &[(50.0, 50.0), (70.0, 50.0)],
        PointerButton::Primary,
    );
    h.key_up(Key::Space);
    h.run();
    assert!(!h.state().doc.has_mask());
    let moved = h.state().canvas.view().center - before;
    assert!(
        (moved.x + 20.0).abs() < 0.5 && moved.y.abs() < 0.5,
        "{moved:?}"
    );

    h.key_press_modifiers(Modifiers::COMMAND, Key::Num1);
    h.run();
    assert_eq!(h.state().canvas.zoom(), 1.0);
    // Presets zoom about the view centre.
    let centre = h.state().canvas.view().center;
    for (key, zoom) in [(Key::Num2, 2.0), (Key::Num3, 4.0), (Key::Num4, 8.0)] {
        h.key_press_modifiers(Modifiers::COMMAND, key);
        h.run();
        assert_eq!(h.state().canvas.zoom(), zoom);
        assert!((h.state().canvas.view().center - centre).length() < 1e-3);
    }
    h.key_press_modifiers(Modifiers::COMMAND, Key::Num0);
    h.run();
    assert!((h.state().canvas.zoom() - fitted).abs() < 1e-4);
}

#[test]
fn bracket_keys_resize_the_brush() {
    let mut h = fallback_harness(plain_doc());
    let size = h.state().tools.size();
    h.key_press(Key::CloseBracket);
    h.run();
    assert!(h.state().tools.size() > size);
    h.key_press(Key::E);
    h.run();
    assert_eq!(h.state().tools.tool, Tool::Eraser);
}

/// A document with everything the canvas draws: transparency, colours, a feathered mask,
/// a job overlay and a token grid with touched cells.
fn showcase_doc() -> Document {
    let (w, h) = (160u32, 96u32);
    let image = RgbaImage::from_fn(w, h, |x, y| {
        let alpha = if x < 24 && y < 24 { 0 } else { 255 };
        Rgba([(x * 255 / w) as u8, (y * 255 / h) as u8, 160, alpha])
    });
    let mut doc = Document::new(image);
    let brush = Brush {
        size: 14.0,
        hardness: 0.4,
    };
    let mut stroke = mask_ops::StrokeRecorder::new("brush");
    stroke.segment(&mut doc, (30.0, 70.0), (90.0, 40.0), brush, PaintMode::Add);
    mask_ops::fill_rect(
        &mut doc,
        PixelRect {
            x: 110,
            y: 60,
            w: 30,
            h: 20,
        },
        PaintMode::Add,
    );
    let overlay = image::RgbImage::from_fn(32, 24, |x, y| {
        if (x / 4 + y / 4) % 2 == 0 {
            image::Rgb([250, 220, 40])
        } else {
            image::Rgb([30, 30, 30])
        }
    });
    doc.overlay = Some(Overlay::at(Arc::new(overlay), (120, 8)));
    let mut touched = vec![false; 64];
    for i in [18, 19, 26, 27, 28, 35] {
        touched[i] = true;
    }
    doc.token_grid = Some(TokenGrid {
        origin: (16.0, 0.0),
        side: 96.0,
        grid: 8,
        touched,
    });
    doc
}

fn wgpu_harness(doc: Document, fallback: bool) -> Harness<'static, TestApp> {
    Harness::builder()
        .with_size(Vec2::new(360.0, 220.0))
        .wgpu()
        .build_eframe(move |cc| {
            let rs = if fallback {
                None
            } else {
                cc.wgpu_render_state.as_ref()
            };
            let mut app = TestApp::new(doc, rs);
            // Several tiles even on this small image.
            app.canvas.limit_tile_side(64);
            app
        })
}

fn show_at_zoom(h: &mut Harness<'_, TestApp>, zoom: f32) {
    h.run();
    h.state_mut().canvas.set_view(View {
        zoom,
        center: Vec2::new(80.0, 48.0),
    });
    let cursor = screen(h, 70.0, 30.0);
    h.event(Event::PointerMoved(cursor));
    h.run();
}

#[test]
fn wgpu_canvas_snapshot() {
    let mut h = wgpu_harness(showcase_doc(), false);
    assert!(h.state().canvas.uses_wgpu());
    show_at_zoom(&mut h, 2.0);
    h.snapshot("canvas_wgpu");
}

#[test]
fn wgpu_canvas_zoomed_out_snapshot() {
    let mut h = wgpu_harness(showcase_doc(), false);
    show_at_zoom(&mut h, 0.75);
    h.state_mut().settings.mask_colour = egui::Color32::from_rgb(40, 120, 255);
    h.state_mut().settings.mask_opacity = 0.7;
    h.run();
    h.snapshot("canvas_wgpu_zoomed_out");
}

#[test]
fn fallback_canvas_snapshot() {
    let mut h = wgpu_harness(showcase_doc(), true);
    assert!(!h.state().canvas.uses_wgpu());
    show_at_zoom(&mut h, 2.0);
    h.snapshot("canvas_fallback");
}

#[test]
fn show_original_hides_mask_and_overlay() {
    let mut h = wgpu_harness(showcase_doc(), false);
    show_at_zoom(&mut h, 2.0);
    let with_layers = h.render().expect("renders");
    h.state_mut().settings.show_original = true;
    h.run();
    let original = h.render().expect("renders");
    // The overlay area (image 120..152 × 8..32) is the image again.
    let p = screen(&h, 130.5, 12.5);
    let ppp = 1.0;
    let (x, y) = ((p.x * ppp) as u32, (p.y * ppp) as u32);
    let a = with_layers.get_pixel(x, y).0;
    let b = original.get_pixel(x, y).0;
    assert_ne!(a, b);
    let expected = h.state().doc.image.get_pixel(130, 12).0;
    for c in 0..3 {
        assert!(
            b[c].abs_diff(expected[c]) <= 2,
            "{b:?} vs image {expected:?}"
        );
    }
}

/// The showcase document with a confidence overlay over its 8×8 token grid: the touched
/// cells sampled with probabilities from 0.05 to 0.95.
fn confidence_doc() -> Document {
    use tessera::editor::document::ConfidenceOverlay;
    use tessera_engine::confidence::Confidence;
    use tessera_engine::inpaint::Window;
    let mut doc = showcase_doc();
    let mut c = Confidence::certain(64);
    for (k, i) in [18, 19, 26, 27, 28, 35].into_iter().enumerate() {
        let p = 0.05 + 0.18 * k as f32;
        c.record(i, &[p, 1.0 - p], 0);
    }
    doc.confidence = Some(ConfidenceOverlay {
        window: Window {
            x: 16,
            y: 0,
            size: 96,
        },
        grid: 8,
        confidence: Arc::new(c),
    });
    doc
}

#[test]
fn confidence_overlay_snapshot() {
    let mut h = wgpu_harness(confidence_doc(), false);
    h.state_mut().settings.show_confidence = true;
    h.state_mut().settings.unsure_below = 0.3;
    show_at_zoom(&mut h, 2.0);
    h.snapshot("canvas_confidence");
    // Cell 18 (image 40..52 × 24..36, p = 0.05) is tinted red; off, the tint is gone; a known
    // cell (0: image 16..28 × 0..12) is never tinted.
    let at = |h: &mut Harness<'_, TestApp>, x: f32, y: f32| {
        let p = screen(h, x, y);
        h.render()
            .expect("renders")
            .get_pixel(p.x as u32, p.y as u32)
            .0
    };
    let on = at(&mut h, 46.5, 30.5);
    let known_on = at(&mut h, 20.5, 4.5);
    h.state_mut().settings.show_confidence = false;
    h.run();
    let off = at(&mut h, 46.5, 30.5);
    let known_off = at(&mut h, 20.5, 4.5);
    assert!(
        on[0] > off[0] && on[1] < off[1],
        "red tint: {on:?} vs {off:?}"
    );
    assert_eq!(known_on, known_off);
}

#[test]
fn painting_uploads_on_the_gpu_path() {
    let mut h = wgpu_harness(plain_doc(), false);
    h.run();
    drag(
        &mut h,
        &[(20.0, 50.0), (180.0, 50.0)],
        PointerButton::Primary,
    );
    assert_eq!(h.state().edits.len(), 1);
    assert_eq!(mask(&h, 100, 50), 255);
    assert!(h.state().doc.dirty.mask.is_empty(), "uploaded and cleared");
    let img = h.render().expect("renders");
    let p = screen(&h, 100.5, 50.5);
    let tinted = img.get_pixel(p.x as u32, p.y as u32).0;
    let q = screen(&h, 100.5, 90.5);
    let plain = img.get_pixel(q.x as u32, q.y as u32).0;
    assert!(tinted[0] > plain[0] + 40, "{tinted:?} vs {plain:?}");
}

/// Frame times while painting on big images, and global mask commands on them. A benchmark,
/// not a test: `cargo test --release -p tessera --test canvas -- --ignored --nocapture bench`.
#[test]
#[ignore = "benchmark; run in release with --nocapture"]
fn bench_canvas_frames() {
    use std::time::Instant;
    fn pct(mut v: Vec<f64>, p: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    for side in [4096u32, 8192] {
        let image = RgbaImage::from_fn(side, side, |x, y| {
            Rgba([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8, 255])
        });
        let t = Instant::now();
        let mut h = Harness::builder()
            .with_size(Vec2::new(1280.0, 800.0))
            .wgpu()
            .build_eframe(move |cc| {
                TestApp::new(Document::new(image), cc.wgpu_render_state.as_ref())
            });
        h.run();
        let first = t.elapsed().as_secs_f64() * 1e3;
        h.state_mut().tools.set_size(60.0);
        let (mut logic, mut render) = (Vec::new(), Vec::new());
        let n = 60;
        let start = screen(&h, side as f32 * 0.2, side as f32 * 0.5);
        h.event(Event::PointerMoved(start));
        button(&h, start, PointerButton::Primary, true);
        h.step();
        for i in 0..n {
            let f = i as f32 / n as f32;
            let p = screen(
                &h,
                side as f32 * (0.2 + 0.6 * f),
                side as f32 * (0.5 + 0.2 * (f * 12.0).sin()),
            );
            h.event(Event::PointerMoved(p));
            let t = Instant::now();
            h.step();
            logic.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            h.render().expect("renders");
            render.push(t.elapsed().as_secs_f64() * 1e3);
        }
        button(&h, start, PointerButton::Primary, false);
        h.run();
        assert_eq!(h.state().edits.len(), 1);
        println!(
            "{side}²: first frame (upload) {first:.0} ms; painting frame logic+upload p50 {:.2} ms p95 {:.2} ms; \
             lavapipe render p50 {:.1} ms p95 {:.1} ms",
            pct(logic.clone(), 0.5),
            pct(logic, 0.95),
            pct(render.clone(), 0.5),
            pct(render, 0.95),
        );
        let doc = &mut h.state_mut().doc;
        for op in [
            GlobalOp::Grow(32),
            GlobalOp::Shrink(8),
            GlobalOp::Feather(8.0),
            GlobalOp::Invert,
            GlobalOp::Clear,
        ] {
            let t = Instant::now();
            let edit = mask_ops::apply_global(doc, op);
            println!(
                "{side}²: {op:?} {:.0} ms (edit {:?})",
                t.elapsed().as_secs_f64() * 1e3,
                edit.map(|e| (e.rect.w, e.rect.h))
            );
        }
        let t = Instant::now();
        let edit = mask_ops::flood_fill(doc, (0, 0), 255, PaintMode::Add);
        println!(
            "{side}²: flood fill of the whole image {:.0} ms ({:?})",
            t.elapsed().as_secs_f64() * 1e3,
            edit.map(|e| e.rect)
        );
    }
}
