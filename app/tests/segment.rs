//! The Select object tool driven through egui_kittest: the real editor, a fake file dialog,
//! MobileSAM with random weights (the released ones are not available offline).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use egui::{Event, Key, Modifiers, PointerButton, Pos2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use image::RgbaImage;
use tessera::editor::files::{Dialogs, Purpose};
use tessera::editor::library::LibraryOptions;
use tessera::editor::tools::Tool;
use tessera::editor::{EditorApp, EditorOptions};

/// Answers dialogs from a queue.
#[derive(Default)]
struct FakeDialogs(Mutex<VecDeque<PathBuf>>);

impl Dialogs for FakeDialogs {
    fn pick(&self, _purpose: &Purpose, _suggested: Option<&Path>) -> Option<PathBuf> {
        self.0.lock().unwrap().pop_front()
    }
}

/// Random MobileSAM weights whose masks are biased towards "selected", so that a click
/// selects something (random weights alone may select nothing, which would test nothing).
fn biased_random_weights(dir: &Path) -> PathBuf {
    let path = dir.join("mobile_sam-random.safetensors");
    tessera_engine::segment::write_random_weights(&path).unwrap();
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let c = |v: f32, n: usize| Tensor::full(v, n, &Device::Cpu).unwrap();
    t.insert("mask_decoder.output_upscaling.3.bias".into(), c(3.0, 32));
    for i in 0..4 {
        t.insert(
            format!("mask_decoder.output_hypernetworks_mlps.{i}.layers.2.bias"),
            c(1.0, 32),
        );
    }
    assert!(t.values().all(|v| v.dtype() == DType::F32));
    candle_core::safetensors::save(&t, &path).unwrap();
    path
}

fn run_until(h: &mut Harness<'_, EditorApp>, what: &str, done: impl Fn(&EditorApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while !done(h.state()) {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {:?}",
            h.state().messages
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

fn click(h: &mut Harness<'_, EditorApp>, pos: Pos2, button: PointerButton, modifiers: Modifiers) {
    h.event(Event::PointerMoved(pos));
    h.step();
    for pressed in [true, false] {
        h.event(Event::PointerButton {
            pos,
            button,
            pressed,
            modifiers,
        });
        h.step();
    }
}

#[test]
fn click_select_apply_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    let weights = biased_random_weights(dir.path());
    let img = RgbaImage::from_fn(64, 48, |x, y| {
        image::Rgba([(x * 4) as u8, (y * 5) as u8, 120, 255])
    });
    let img_path = dir.path().join("photo.png");
    img.save(&img_path).unwrap();
    let dialogs = Arc::new(FakeDialogs::default());
    let opts = EditorOptions {
        image: Some(img_path),
        model: None,
        dialogs: dialogs.clone(),
        config_dir: Some(dir.path().join("config")),
        data_dir: None,
        autosave_every: Duration::from_secs(3600),
        frame_log: None,
        library: LibraryOptions {
            folder: Some(dir.path().join("models")),
            catalogue: None,
        },
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_eframe(move |cc| EditorApp::new(cc, opts));
    run_until(&mut h, "the image", |a| a.doc.is_some());

    h.key_press(Key::S);
    h.step();
    assert_eq!(h.state().tools.tool, Tool::Select, "S selects the tool");
    if std::env::var_os(tessera::editor::segment::WEIGHTS_ENV).is_none() {
        h.get_by_label("SAM weights: not loaded");
    }
    dialogs.0.lock().unwrap().push_back(weights.clone());
    h.get_by_label("Load weights…").click();
    run_until(&mut h, "the weights", |a| a.select.ready());
    h.get_by_label("SAM weights: mobile_sam-random.safetensors");
    run_until(&mut h, "the embedding", |a| !a.select.busy());

    // One include point in the middle of the image.
    let centre = h
        .state()
        .canvas
        .image_to_screen(Pos2::new(32.0, 24.0))
        .unwrap();
    click(&mut h, centre, PointerButton::Primary, Modifiers::NONE);
    assert_eq!(h.state().select.points, vec![(32.0, 24.0, true)]);
    run_until(&mut h, "the mask", |a| a.select.preview_is_current());
    let selection = h.state().select.preview.as_ref().unwrap().mask.clone();
    assert_eq!(selection.dimensions(), (64, 48));
    let selected = selection.as_raw().iter().filter(|&&v| v >= 128).count();
    assert!(selected > 0, "the biased weights select something");

    // Right-click adds an exclude point and asks again; Esc drops everything.
    let corner = h
        .state()
        .canvas
        .image_to_screen(Pos2::new(5.0, 5.0))
        .unwrap();
    click(&mut h, corner, PointerButton::Secondary, Modifiers::NONE);
    assert_eq!(
        h.state().select.points,
        vec![(32.0, 24.0, true), (5.0, 5.0, false)]
    );
    h.key_press(Key::Escape);
    h.step();
    assert!(h.state().select.points.is_empty() && h.state().select.preview.is_none());
    assert!(
        !h.state().doc.as_ref().unwrap().has_mask(),
        "Esc applies nothing"
    );

    // Click again, wait for the mask, Enter applies it as one undoable edit.
    click(&mut h, centre, PointerButton::Primary, Modifiers::NONE);
    run_until(&mut h, "the mask again", |a| a.select.preview_is_current());
    let selection = h.state().select.preview.as_ref().unwrap().mask.clone();
    let before = h.state().doc.as_ref().unwrap().mask.clone();
    h.key_press(Key::Enter);
    h.step();
    let after = h.state().doc.as_ref().unwrap().mask.clone();
    assert_ne!(after, before, "Enter changed the mask");
    for (x, y, s) in selection.enumerate_pixels() {
        let want = if s.0[0] >= 128 { 255 } else { 0 };
        assert_eq!(after.get_pixel(x, y).0[0], want, "pixel ({x},{y})");
    }
    assert!(
        h.state().select.points.is_empty(),
        "applying drops the points"
    );
    assert!(h.state().errors().is_empty(), "{:?}", h.state().errors());

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    assert_eq!(
        h.state().doc.as_ref().unwrap().mask,
        before,
        "one undo restores the mask"
    );
}

#[test]
fn merging_a_selection_is_one_reversible_edit() {
    use tessera::editor::document::Document;
    use tessera::editor::mask_ops::PaintMode;
    use tessera::editor::segment::merge;

    let mut doc = Document::new(RgbaImage::new(8, 6));
    let sel = image::GrayImage::from_fn(8, 6, |x, y| {
        image::Luma([if (2..5).contains(&x) && (1..3).contains(&y) {
            255
        } else {
            0
        }])
    });
    let edit = merge(&mut doc, &sel, PaintMode::Add).expect("the mask changed");
    assert_eq!(
        (edit.rect.x, edit.rect.y, edit.rect.w, edit.rect.h),
        (2, 1, 3, 2)
    );
    assert_eq!(doc.mask, sel);
    assert!(
        merge(&mut doc, &sel, PaintMode::Add).is_none(),
        "no change, no edit"
    );
    let erase = merge(&mut doc, &sel, PaintMode::Subtract).expect("removed");
    assert!(!doc.has_mask());
    doc.apply_mask_edit(&erase, false);
    assert_eq!(doc.mask, sel, "undoing the removal restores the selection");
    doc.apply_mask_edit(&edit, false);
    assert!(
        !doc.has_mask(),
        "undoing the addition restores the empty mask"
    );
    let wrong = image::GrayImage::new(4, 4);
    assert!(merge(&mut doc, &wrong, PaintMode::Add).is_none());
}
