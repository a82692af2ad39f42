//! The editor driven through egui_kittest: the real app struct, fake file dialogs, the golden
//! model (tiny random weights, official format).
//!
//! One test file per module under test (each is its own test binary, and each binary links the
//! whole crate: splitting would cost CI disk and link time, not help a reader).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egui::{Event, Modifiers, PointerButton, Pos2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use image::RgbaImage;
use tessera::editor::command::Command;
use tessera::editor::files::{Dialogs, Purpose};
use tessera::editor::keymap::Action;
use tessera::editor::library::LibraryOptions;
use tessera::editor::mask_ops::GlobalOp;
use tessera::editor::project;
use tessera::editor::settings::Config;
use tessera::editor::tools::Tool;
use tessera::editor::{EditorApp, EditorOptions};

mod common;
#[path = "../../engine/store/tests/common/release.rs"]
mod release;
#[path = "../../engine/store/tests/common/server.rs"]
mod server;

/// Answers dialogs from a queue (None = the user cancelled).
#[derive(Default)]
struct FakeDialogs(Mutex<VecDeque<PathBuf>>);

impl FakeDialogs {
    fn answer(&self, p: &Path) {
        self.0.lock().unwrap().push_back(p.to_path_buf());
    }
}

impl Dialogs for FakeDialogs {
    fn pick(&self, _purpose: &Purpose, _suggested: Option<&Path>) -> Option<PathBuf> {
        self.0.lock().unwrap().pop_front()
    }
}

fn golden_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/uncond_geometric/sampling.yaml")
}

struct Setup {
    dir: tempfile::TempDir,
    dialogs: Arc<FakeDialogs>,
}

impl Setup {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            dialogs: Arc::new(FakeDialogs::default()),
        }
    }

    fn options(&self, model: Option<PathBuf>) -> EditorOptions {
        EditorOptions {
            image: None,
            model,
            dialogs: self.dialogs.clone(),
            config_dir: Some(self.dir.path().join("config")),
            data_dir: Some(self.dir.path().join("data")),
            autosave_every: Duration::from_secs(3600),
            frame_log: None,
            library: LibraryOptions {
                folder: Some(self.dir.path().join("models")),
                catalogue: None,
            },
        }
    }

    fn image(&self, name: &str, w: u32, h: u32) -> (PathBuf, RgbaImage) {
        let img = RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8, 255])
        });
        let p = self.dir.path().join(name);
        img.save(&p).unwrap();
        (p, img)
    }
}

fn harness(opts: EditorOptions) -> Harness<'static, EditorApp> {
    Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_eframe(move |cc| EditorApp::new(cc, opts))
}

/// Scrolls the widget labelled `label` into view, then clicks it.
fn click_in_view(h: &mut Harness<'_, EditorApp>, label: &str) {
    h.get_by_label(label).scroll_to_me();
    h.run_steps(3);
    h.get_by_label(label).click();
    h.run_steps(3);
}

/// Runs frames until `done` holds (the engine and file work run on other threads).
fn run_until(h: &mut Harness<'_, EditorApp>, what: &str, done: impl Fn(&EditorApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(h.state()) {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

/// Opens `path` through File → the fake dialog, from the welcome screen's button.
fn open_via_dialog(h: &mut Harness<'_, EditorApp>, dialogs: &FakeDialogs, path: &Path) {
    dialogs.answer(path);
    h.state_mut().ask(Purpose::OpenImage);
    run_until(h, "the file to open", |a| !a.background_busy());
}

/// A horizontal stroke through the middle of the canvas area.
fn paint_stroke(h: &mut Harness<'_, EditorApp>) {
    // The canvas fills the space between the tool panel (left) and the side panel (right);
    // a fitted image is centred in it.
    let centre = Pos2::new(480.0, 400.0);
    let from = centre - egui::vec2(30.0, 0.0);
    h.event(Event::PointerMoved(from));
    h.step();
    h.event(Event::PointerButton {
        pos: from,
        button: PointerButton::Primary,
        pressed: true,
        modifiers: Modifiers::NONE,
    });
    h.step();
    for i in 1..=6 {
        h.event(Event::PointerMoved(from + egui::vec2(10.0 * i as f32, 0.0)));
        h.step();
    }
    h.event(Event::PointerButton {
        pos: from + egui::vec2(60.0, 0.0),
        button: PointerButton::Primary,
        pressed: false,
        modifiers: Modifiers::NONE,
    });
    h.step();
    h.step();
}

#[test]
fn open_paint_generate_accept_undo_redo() {
    let s = Setup::new();
    let mut h = harness(s.options(Some(golden_manifest())));
    run_until(&mut h, "the golden model", |a| a.model.card.is_some());
    assert_eq!(h.state().model.card.as_ref().unwrap().levels(), 3);

    let (path, original) = s.image("photo.png", 64, 48);
    open_via_dialog(&mut h, &s.dialogs, &path);
    assert_eq!(h.state().doc.as_ref().expect("opened").image, original);

    paint_stroke(&mut h);
    {
        let app = h.state();
        let doc = app.doc.as_ref().unwrap();
        assert!(doc.has_mask(), "the stroke painted the mask");
        assert!(app.history.can_undo(), "the stroke is undoable");
    }
    run_until(&mut h, "the token grid", |a| {
        a.doc.as_ref().is_some_and(|d| d.token_grid.is_some())
    });
    let (masked, cost) = h.state().preflight().expect("preflight");
    assert!(masked > 0 && cost >= masked);

    {
        let app = h.state_mut();
        app.settings.candidates = 2;
        app.settings.feather_px = 0;
    }
    h.get_by_label("Generate  Ctrl+Enter").click();
    h.step();
    h.step();
    assert!(h.state().jobs.busy(), "the job runs in the background");
    run_until(&mut h, "the job", |a| !a.jobs.busy());
    {
        let app = h.state();
        let res = app.jobs.results.as_ref().expect("results");
        assert_eq!(
            res.level_count(),
            3 * 2,
            "one preview per level per candidate"
        );
        assert!(res.ready(0) && res.ready(1));
        assert!(
            app.doc.as_ref().unwrap().overlay.is_some(),
            "preview on the canvas"
        );
        assert!(app.errors().is_empty(), "{:?}", app.errors());
    }
    // View the coarsest level of candidate 1, then accept candidate 1.
    h.state_mut().select_candidate(1);
    h.state_mut().view_level(Some(3));
    h.step();
    let mask = h.state().doc.as_ref().unwrap().mask.clone();
    // The button exists (it may be scrolled out of view); Enter accepts the selected one.
    h.get_by_label("Accept #1  Enter");
    h.key_press(egui::Key::Enter);
    h.step();
    let accepted = h.state().doc.as_ref().unwrap().image.clone();
    let mut changed_inside = 0;
    for (x, y, m) in mask.enumerate_pixels() {
        let (a, b) = (accepted.get_pixel(x, y).0, original.get_pixel(x, y).0);
        if m.0[0] == 0 {
            assert_eq!(a, b, "pixel ({x},{y}) outside the mask changed");
        } else if m.0[0] >= 128 && a != b {
            changed_inside += 1;
        }
    }
    assert!(
        changed_inside > 0,
        "the masked area was regenerated: {:?}",
        h.state().messages
    );
    assert!(h.state().doc.as_ref().unwrap().overlay.is_none());
    assert_eq!(h.state().generations.len(), 1);
    assert_eq!(h.state().generations[0].candidate, 1);

    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    h.step();
    assert_eq!(
        h.state().doc.as_ref().unwrap().image,
        original,
        "undo restores"
    );
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, egui::Key::Z);
    h.step();
    assert_eq!(
        h.state().doc.as_ref().unwrap().image,
        accepted,
        "redo re-applies"
    );
    // Undo twice more: the stroke goes too.
    h.state_mut().undo();
    while h.state().history.can_undo() {
        h.state_mut().undo();
    }
    assert!(!h.state().doc.as_ref().unwrap().has_mask());
}

/// Everything a user does with menus, buttons and keys is a command; a test (or a script) can
/// drive the whole editor with them and nothing else.
#[test]
fn the_editor_is_driven_by_commands() {
    let s = Setup::new();
    let mut h = harness(s.options(Some(golden_manifest())));
    run_until(&mut h, "the golden model", |a| a.model.card.is_some());
    let (path, original) = s.image("photo.png", 64, 48);
    h.state_mut().apply(Command::OpenPath(path));
    run_until(&mut h, "the image", |a| a.doc.is_some());
    assert_eq!(h.state().doc.as_ref().unwrap().image, original);
    h.state_mut().apply(Command::MaskOp(GlobalOp::SelectAll));
    assert!(h.state().doc.as_ref().unwrap().has_mask());
    h.state_mut().apply(Command::Run(Action::Generate));
    assert!(h.state().jobs.busy(), "the job runs in the background");
    run_until(&mut h, "the job", |a| !a.jobs.busy());
    assert!(h.state().jobs.results.is_some());
    h.state_mut().apply(Command::Accept(0));
    assert_eq!(h.state().generations.len(), 1);
    assert_ne!(h.state().doc.as_ref().unwrap().image, original);
    h.state_mut().apply(Command::Run(Action::Undo));
    assert_eq!(
        h.state().doc.as_ref().unwrap().image,
        original,
        "undo restores"
    );
    h.state_mut().apply(Command::Run(Action::Help));
    assert!(h.state().show_help);
    h.state_mut().apply(Command::Run(Action::Help));
    assert!(!h.state().show_help);
    h.state_mut().apply(Command::Error("a problem".into()));
    assert_eq!(h.state().errors().len(), 1);
    h.state_mut().apply(Command::DismissErrors);
    assert!(h.state().errors().is_empty());
    // The same Generate through its button: the panel sends the command, the app runs it.
    h.state_mut().apply(Command::Discard);
    h.step();
    h.get_by_label("Generate  Ctrl+Enter").click();
    h.step();
    h.step();
    assert!(
        h.state().jobs.busy() || h.state().jobs.results.is_some(),
        "{:?}",
        h.state().messages
    );
    run_until(&mut h, "the second job", |a| !a.jobs.busy());
}

#[test]
fn cancel_a_job() {
    let s = Setup::new();
    let mut h = harness(s.options(Some(golden_manifest())));
    run_until(&mut h, "the golden model", |a| a.model.card.is_some());
    let (path, original) = s.image("a.png", 40, 40);
    open_via_dialog(&mut h, &s.dialogs, &path);
    {
        let app = h.state_mut();
        app.mask_op(tessera::editor::mask_ops::GlobalOp::SelectAll);
        app.settings.candidates = 4;
        for l in &mut app.settings.levels {
            l.chains = 50;
        }
        app.generate();
    }
    assert!(h.state().jobs.busy());
    h.key_press(egui::Key::Escape);
    h.step();
    run_until(&mut h, "the cancellation", |a| !a.jobs.busy());
    let app = h.state();
    assert!(
        app.messages.iter().any(|m| m.text == "cancelled"),
        "{:?}",
        app.messages
    );
    assert!(app.jobs.results.as_ref().is_none_or(|r| !r.ready(0)));
    assert_eq!(app.doc.as_ref().unwrap().image, original);
}

#[test]
fn bad_images_show_an_error_and_keep_the_document() {
    let s = Setup::new();
    let mut h = harness(s.options(None));
    h.step();
    h.get_by_label_contains("No model").hover();
    let (path, original) = s.image("ok.png", 20, 10);
    open_via_dialog(&mut h, &s.dialogs, &path);
    let corrupt = s.dir.path().join("corrupt.png");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    open_via_dialog(&mut h, &s.dialogs, &corrupt);
    assert_eq!(h.state().errors().len(), 1, "{:?}", h.state().errors());
    h.get_by_label_contains("corrupt.png");
    let (huge, _) = s.image("huge.png", 16385, 1);
    open_via_dialog(&mut h, &s.dialogs, &huge);
    assert!(h.state().errors().iter().any(|e| e.contains("16384")));
    // A failed model load is reported too; the app stays up.
    h.state_mut().load_model(Path::new("/nonexistent/model"));
    run_until(&mut h, "the model error", |a| a.model.loading.is_none());
    assert!(h.state().model.error.is_some());
    assert_eq!(h.state().doc.as_ref().unwrap().image, original);
    h.get_by_label("Dismiss").click();
    h.step();
    h.step();
    assert!(h.state().errors().is_empty());
}

#[test]
fn autosave_writes_a_recovery_project_that_restores() {
    let s = Setup::new();
    let mut opts = s.options(Some(golden_manifest()));
    opts.autosave_every = Duration::ZERO;
    let mut h = harness(opts);
    run_until(&mut h, "the golden model", |a| a.model.card.is_some());
    let (path, _) = s.image("b.png", 64, 48);
    open_via_dialog(&mut h, &s.dialogs, &path);
    // Two edits, one undone (so both stacks hold something), then a generation whose
    // candidates are not accepted.
    paint_stroke(&mut h);
    h.state_mut().apply(Command::MaskOp(GlobalOp::SelectAll));
    h.state_mut().apply(Command::Run(Action::Undo));
    h.state_mut().apply(Command::Run(Action::Generate));
    run_until(&mut h, "the job", |a| !a.jobs.busy());
    h.state_mut().apply(Command::SelectCandidate(0));
    run_until(&mut h, "the autosave", |a| {
        !a.background_busy() && !a.unsaved_since_autosave()
    });
    let recovery = s.dir.path().join("data").join(project::RECOVERY_FILE);
    let p = project::load_project(&recovery).expect("recovery project");
    let (undo, redo, finals) = {
        let a = h.state();
        let doc = a.doc.as_ref().unwrap();
        assert_eq!(p.image, doc.image);
        assert_eq!(p.mask, doc.mask);
        assert!(doc.has_mask());
        let finals: Vec<_> = a.jobs.results.as_ref().unwrap().finals.clone();
        assert!(
            finals.iter().any(Option::is_some),
            "the job made candidates"
        );
        (a.history.len(), a.history.can_redo(), finals)
    };
    assert!(undo >= 1 && redo, "both stacks hold an edit");
    let saved = p.history.as_ref().expect("the undo history is kept");
    assert_eq!(saved.undo.len(), undo);
    assert_eq!(saved.redo.len(), 1);
    let kept = p.results.as_ref().expect("the candidates are kept");
    assert_eq!(kept.finals.len(), finals.len());
    let (image, mask) = (p.image, p.mask);
    drop(h); // "crash": no clean exit ran

    let mut h = harness(s.options(Some(golden_manifest())));
    h.step();
    h.get_by_label("Restore (Enter)").click();
    run_until(&mut h, "the restore", |a| {
        a.doc.is_some() && !a.background_busy()
    });
    {
        let a = h.state();
        let doc = a.doc.as_ref().unwrap();
        assert_eq!(doc.image, image);
        assert_eq!(doc.mask, mask);
        assert_eq!(a.history.len(), undo, "the undo steps came back");
        assert!(a.history.can_redo(), "the redo step came back");
        let res = a.jobs.results.as_ref().expect("the candidates came back");
        for (got, want) in res.finals.iter().zip(&finals) {
            assert_eq!(got.as_deref(), want.as_deref());
        }
    }
    // They work as before the crash: redo re-applies the select-all, a candidate is accepted.
    h.state_mut().apply(Command::Run(Action::Redo));
    assert!(
        h.state()
            .doc
            .as_ref()
            .unwrap()
            .mask
            .pixels()
            .all(|p| p.0[0] == 255),
        "redo after the restore"
    );
    let before = h.state().doc.as_ref().unwrap().image.clone();
    h.state_mut().apply(Command::Accept(0));
    assert_ne!(h.state().doc.as_ref().unwrap().image, before, "accepted");
    assert_eq!(h.state().generations.len(), 1);
}

#[test]
fn hotkey_sheet_lists_shortcuts() {
    let s = Setup::new();
    let mut h = harness(s.options(None));
    h.step();
    h.key_press(egui::Key::F1);
    h.step();
    h.get_by_label("Keyboard shortcuts");
    // Every action of the keymap, with each of its keys.
    h.get_by_label("redo");
    h.get_by_label("Ctrl+Shift+Z");
    h.get_by_label("Ctrl+Y");
    h.get_by_label("zoom to 800 %");
    h.get_by_label("Ctrl+4");
}

#[test]
fn hotkeys_are_rebound_in_the_sheet_and_remembered() {
    let s = Setup::new();
    let mut h = harness(s.options(None));
    h.step();
    h.key_press(egui::Key::F1);
    h.step();
    // Click the eraser's key and press a new one.
    h.get_by_label("E").click();
    h.step();
    h.step();
    h.get_by_label("press keys…");
    h.key_press(egui::Key::X);
    h.step();
    h.step();
    h.get_by_label("X");
    assert_eq!(h.state().config.hotkeys.text(Action::ToolEraser), "X");
    assert!(h.state().show_help, "the sheet stays open");
    // The new key selects the eraser, the old one no longer does.
    h.key_press(egui::Key::E);
    h.step();
    assert_eq!(h.state().tools.tool, Tool::Brush);
    h.key_press(egui::Key::X);
    h.step();
    assert_eq!(h.state().tools.tool, Tool::Eraser);
    // A key another action has is refused, naming that action; the press does nothing else.
    h.get_by_label("X").click();
    h.step();
    h.step();
    h.key_press(egui::Key::B);
    h.step();
    h.step();
    assert_eq!(h.state().config.hotkeys.text(Action::ToolEraser), "X");
    assert_eq!(h.state().tools.tool, Tool::Eraser);
    let last = h.state().messages.last().expect("a message").text.clone();
    assert!(last.contains("brush tool"), "{last}");
    // Esc cancels a change.
    h.get_by_label("X").click();
    h.step();
    h.step();
    h.key_press(egui::Key::Escape);
    h.step();
    h.step();
    h.get_by_label("X");
    // Remembered in config.json; a new editor starts with it.
    let dir = s.dir.path().join("config");
    let saved = Config::load(&dir);
    assert_eq!(saved.hotkeys.text(Action::ToolEraser), "X");
    let mut h2 = harness(s.options(None));
    h2.step();
    h2.key_press(egui::Key::X);
    h2.step();
    assert_eq!(h2.state().tools.tool, Tool::Eraser);
    // Reset to defaults.
    h.get_by_label("Reset to defaults").click();
    h.step();
    h.step();
    assert!(h.state().config.hotkeys.is_default());
    assert!(Config::load(&dir).hotkeys.is_default());
}

#[test]
fn zoom_presets_keep_the_view_centre() {
    let s = Setup::new();
    let mut h = harness(s.options(None));
    let (path, _) = s.image("photo.png", 640, 480);
    open_via_dialog(&mut h, &s.dialogs, &path);
    h.step();
    let centre = h.state().canvas.view().center;
    for (key, zoom) in [
        (egui::Key::Num2, 2.0),
        (egui::Key::Num3, 4.0),
        (egui::Key::Num4, 8.0),
        (egui::Key::Num1, 1.0),
    ] {
        h.key_press_modifiers(Modifiers::COMMAND, key);
        h.step();
        assert_eq!(h.state().canvas.zoom(), zoom, "{key:?}");
        let moved = h.state().canvas.view().center - centre;
        assert!(moved.length() < 1e-3, "{key:?}: {moved:?}");
    }
    // The View menu has them too.
    h.get_by_label("View").click();
    h.step();
    h.step();
    h.get_by_label("400 %  Ctrl+3").click();
    h.step();
    h.step();
    assert_eq!(h.state().canvas.zoom(), 4.0);
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Num0);
    h.step();
    assert!(h.state().canvas.zoom() < 4.0, "fit");
}

#[test]
fn bare_tessera_opens_the_editor_or_says_why_not() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("edit"));
    // Without a display the window cannot open: a one-line error, no panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_DATA_HOME", "/nonexistent-tessera-test")
        .env("XDG_CONFIG_HOME", "/nonexistent-tessera-test")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot open the editor window"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn save_asks_before_replacing_and_projects_reopen() {
    let s = Setup::new();
    let mut h = harness(s.options(None));
    let (path, original) = s.image("c.png", 24, 16);
    open_via_dialog(&mut h, &s.dialogs, &path);
    h.state_mut()
        .mask_op(tessera::editor::mask_ops::GlobalOp::SelectAll);
    // Exporting over the source image asks first; Cancel keeps the file.
    s.dialogs.answer(&path);
    h.state_mut().ask(Purpose::SaveImage);
    run_until(&mut h, "the dialog", |a| a.confirm.is_some());
    h.get_by_label("Cancel").click();
    h.step();
    h.step();
    assert!(h.state().confirm.is_none());
    // A project to a new path, then reopened.
    let proj = s.dir.path().join("c.tessera");
    s.dialogs.answer(&proj);
    h.state_mut().ask(Purpose::SaveProject);
    run_until(&mut h, "the save", |a| !a.background_busy());
    assert!(!h.state().unsaved(), "{:?}", h.state().errors());
    let p = project::load_project(&proj).unwrap();
    assert_eq!(p.image, original);
    assert!(p.mask.pixels().all(|m| m.0[0] == 255));
    // Saving again to it asks; Replace writes.
    s.dialogs.answer(&proj);
    h.state_mut().ask(Purpose::SaveProject);
    run_until(&mut h, "the dialog", |a| a.confirm.is_some());
    h.get_by_label("Replace").click();
    h.step();
    h.step();
    run_until(&mut h, "the save", |a| !a.background_busy());
    assert!(h.state().errors().is_empty(), "{:?}", h.state().errors());
    // PNG export keeps the parameters in tEXt chunks.
    let out = s.dir.path().join("out.png");
    s.dialogs.answer(&out);
    h.state_mut().ask(Purpose::SaveImage);
    run_until(&mut h, "the export", |a| {
        !a.background_busy() && out.exists()
    });
    let text = tessera::editor::files::read_png_text(&out);
    assert!(
        text.iter().any(|(k, _)| k == "tessera:generations"),
        "{text:?}"
    );
    assert_eq!(tessera::editor::files::load_image(&out).unwrap(), original);
}

/// Opens a 40×40 image with the golden model loaded and the whole image masked.
fn masked_image(s: &Setup) -> Harness<'static, EditorApp> {
    let mut h = harness(s.options(Some(golden_manifest())));
    run_until(&mut h, "the golden model", |a| a.model.card.is_some());
    let (path, _) = s.image("q.png", 40, 40);
    open_via_dialog(&mut h, &s.dialogs, &path);
    h.state_mut()
        .mask_op(tessera::editor::mask_ops::GlobalOp::SelectAll);
    h
}

#[test]
fn generate_while_busy_queues_and_all_jobs_finish_in_order() {
    let s = Setup::new();
    let mut h = masked_image(&s);
    let seed0 = {
        let app = h.state_mut();
        app.settings.candidates = 1;
        app.settings.seed_mode = tessera::editor::settings::SeedMode::Increment;
        app.settings.seed = 100;
        app.generate();
        assert!(app.jobs.busy());
        app.generate();
        app.generate();
        assert_eq!(
            app.jobs.queue.len(),
            2,
            "two requests queued behind the running job"
        );
        // The queued requests are snapshots: clearing the mask now changes none of them.
        app.mask_op(tessera::editor::mask_ops::GlobalOp::Clear);
        assert!(!app.doc.as_ref().unwrap().has_mask());
        app.jobs.results.as_ref().unwrap().record.settings.seed
    };
    h.step();
    // The queue is shown (panics when the label is missing).
    h.get_by_label("2 queued");
    run_until(&mut h, "all three jobs", |a| {
        !a.jobs.busy() && a.jobs.queue.is_empty()
    });
    let app = h.state();
    let done = app
        .messages
        .iter()
        .filter(|m| m.text.starts_with("done in"))
        .count();
    assert_eq!(done, 3, "{:?}", app.messages);
    assert!(app.errors().is_empty(), "{:?}", app.errors());
    // The first job's candidates are shown; the others wait their turn, in order.
    let shown = app.jobs.results.as_ref().expect("results");
    assert!(shown.ready(0));
    let seeds: Vec<u64> = std::iter::once(shown)
        .chain(app.jobs.waiting.iter())
        .map(|r| r.record.settings.seed)
        .collect();
    assert_eq!(seeds, vec![seed0, seed0 + 1, seed0 + 2]);
    assert!(app.jobs.waiting.iter().all(|r| r.finished && r.ready(0)));
    // Accepting one shows the next; discarding shows the last.
    h.state_mut().accept(0);
    assert_eq!(
        h.state()
            .jobs
            .results
            .as_ref()
            .unwrap()
            .record
            .settings
            .seed,
        seed0 + 1
    );
    h.state_mut().discard();
    assert_eq!(
        h.state()
            .jobs
            .results
            .as_ref()
            .unwrap()
            .record
            .settings
            .seed,
        seed0 + 2
    );
    h.state_mut().discard();
    assert!(h.state().jobs.results.is_none());
    assert_eq!(h.state().generations.len(), 1);
}

#[test]
fn cancel_all_empties_the_queue() {
    let s = Setup::new();
    let mut h = masked_image(&s);
    {
        let app = h.state_mut();
        app.settings.candidates = 4;
        for l in &mut app.settings.levels {
            l.chains = 50;
        }
        app.generate();
        app.generate();
        app.generate();
        app.generate();
        assert_eq!(app.jobs.queue.len(), 3);
        app.remove_queued(0);
        assert_eq!(app.jobs.queue.len(), 2, "one queued request removed");
    }
    h.step();
    h.get_by_label("Cancel all").click();
    h.step();
    h.step();
    assert!(
        h.state().jobs.queue.is_empty(),
        "cancel all empties the queue"
    );
    run_until(&mut h, "the cancellation", |a| !a.jobs.busy());
    for _ in 0..5 {
        h.step();
    }
    let app = h.state();
    assert!(!app.jobs.busy(), "no queued job started");
    assert!(
        !app.messages.iter().any(|m| m.text.starts_with("done in")),
        "{:?}",
        app.messages
    );
    assert!(app.messages.iter().any(|m| m.text == "cancelled"));
}

#[test]
fn reuse_last_mask_restores_it_as_one_undoable_edit() {
    let s = Setup::new();
    let mut h = harness(s.options(Some(golden_manifest())));
    run_until(&mut h, "the golden model", |a| a.model.card.is_some());
    let (path, _) = s.image("r.png", 64, 48);
    open_via_dialog(&mut h, &s.dialogs, &path);
    paint_stroke(&mut h);
    let mask = h.state().doc.as_ref().unwrap().mask.clone();
    assert!(h.state().jobs.last_mask.is_none());
    {
        let app = h.state_mut();
        app.settings.candidates = 1;
        app.generate();
    }
    run_until(&mut h, "the job", |a| !a.jobs.busy());
    h.state_mut().accept(0);
    h.state_mut()
        .mask_op(tessera::editor::mask_ops::GlobalOp::Clear);
    assert!(!h.state().doc.as_ref().unwrap().has_mask());
    let undo_depth = h.state().history.len();
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::M);
    h.step();
    assert_eq!(
        h.state().doc.as_ref().unwrap().mask,
        mask,
        "the last mask is back"
    );
    assert_eq!(
        h.state().history.len(),
        undo_depth + 1,
        "one undoable change"
    );
    h.state_mut().undo();
    assert!(
        !h.state().doc.as_ref().unwrap().has_mask(),
        "undo reverts it"
    );
    h.state_mut().redo();
    assert_eq!(h.state().doc.as_ref().unwrap().mask, mask);
    // The project file keeps the last mask.
    let p = h.state().project(false).unwrap();
    let back = project::decode_project(&project::encode_project(&p).unwrap()).unwrap();
    assert_eq!(back.last_mask.as_ref(), Some(&mask));
}

#[test]
fn colour_match_setting_reaches_the_job_options() {
    use tessera::editor::settings::GenSettings;
    let mut s = GenSettings::default();
    assert!(!s.colour_match, "off by default");
    assert!(!s.window_options().colour_match);
    s.colour_match = true;
    assert!(s.window_options().colour_match);
    // Settings saved before the option existed still load (with it off).
    let mut v = serde_json::to_value(GenSettings::default()).unwrap();
    v.as_object_mut().unwrap().remove("colour_match");
    let old: GenSettings = serde_json::from_value(v).unwrap();
    assert!(!old.colour_match);
}

#[test]
fn negative_and_strength_settings_reach_the_job() {
    use tessera::editor::settings::GenSettings;
    use tessera_engine::loader::ModelSource;
    use tessera_engine::loader::card::Condition;

    // Negative class (class model): only with guidance ≠ 1, then into the chain request.
    let class = ModelSource::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/class_custom"),
    )
    .unwrap();
    let card = class.card();
    let mut g = GenSettings::for_card(card);
    g.class = Some(3);
    g.negative_class = Some(5);
    let req = g.chain_request(card, None, 1).unwrap();
    assert_eq!(
        req.negative,
        Condition::None,
        "kept but unused at guidance 1"
    );
    g.guidance_scale = 2.0;
    let req = g.chain_request(card, None, 1).unwrap();
    assert_eq!(req.negative, Condition::Class(5));
    // Negative prompt (text model): encoded with the model's tokenizer, guidance ≠ 1 only.
    let dir = tempfile::tempdir().unwrap();
    let tok_path = dir.path().join("tokenizer.json");
    tessera_engine::text::train_word_level(&["a blue cat on a red apple".to_string()], 1)
        .unwrap()
        .save(&tok_path, true)
        .unwrap();
    let tok = tessera_engine::text::PromptTokenizer::from_file(&tok_path).unwrap();
    let mut text_card = card.clone();
    text_card.conditioning = tessera_engine::loader::card::Conditioning::Text {
        tokenizer: "tokenizer.json".into(),
        context_len: 8,
        token_offset: 0,
        pad_id: 0,
        class_names: vec![],
    };
    let mut g = GenSettings::for_card(&text_card);
    g.prompt = "red apple".into();
    g.negative_prompt = "blue cat".into();
    let req = g.chain_request(&text_card, Some(&tok), 1).unwrap();
    assert_eq!(req.negative, Condition::None);
    g.guidance_scale = 3.0;
    let req = g.chain_request(&text_card, Some(&tok), 1).unwrap();
    assert_eq!(
        req.negative,
        Condition::Text(tok.encode("blue cat").unwrap().ids)
    );
    assert_ne!(req.negative, req.condition);

    // Settings saved before these options existed still load (with them off).
    let mut v = serde_json::to_value(GenSettings::default()).unwrap();
    for key in ["negative_prompt", "negative_class", "strength"] {
        v.as_object_mut().unwrap().remove(key);
    }
    let old: GenSettings = serde_json::from_value(v).unwrap();
    assert_eq!((old.negative_class, old.strength), (None, None));
    assert!(old.negative_prompt.is_empty());

    // Strength (3-level model; by default 3 passes per encoder–decoder level, 1 for the GPT):
    // the preflight counts only the redone level, the job runs only it, and the history
    // record keeps it.
    let s = Setup::new();
    let mut h = masked_image(&s);
    run_until(&mut h, "the token grid", |a| {
        a.doc.as_ref().is_some_and(|d| d.token_grid.is_some())
    });
    h.state_mut().settings.candidates = 1;
    let (_, full) = h.state().preflight().expect("preflight");
    h.state_mut().settings.strength = Some(1);
    let (_, redo_one) = h.state().preflight().expect("preflight");
    assert_eq!(redo_one * (3 + 3 + 1), full * 3);
    h.state_mut().generate();
    run_until(&mut h, "the job", |a| !a.jobs.busy());
    let app = h.state();
    assert!(app.errors().is_empty(), "{:?}", app.errors());
    let res = app.jobs.results.as_ref().expect("results");
    let levels: Vec<usize> = res.levels[0].iter().map(|l| l.level).collect();
    assert_eq!(levels, [1], "only level 1 ran");
    assert_eq!(res.record.settings.strength, Some(1));
    assert!(
        res.record.summary().contains("redo 1 of 3 levels"),
        "{}",
        res.record.summary()
    );
}

#[test]
fn the_model_panel_says_when_config_and_checkpoint_schedules_disagree() {
    let s = Setup::new();
    let release = s.dir.path().join("release");
    // The spelling Tessera's recipes used before they followed the official code.
    common::class_custom_with_redraw_prob(&release, "alphacum:0.7,0.0");
    let mut h = harness(s.options(Some(release)));
    run_until(&mut h, "the release", |a| a.model.card.is_some());
    assert_eq!(
        h.state().model.warnings.len(),
        1,
        "{:?}",
        h.state().model.warnings
    );
    h.get_by_label_contains("warning: schedule in the configs of stages 1–2");
    h.get_by_label_contains("`alphacum:1,0.7,0.0`");
}

#[test]
fn import_from_the_model_panel_stores_the_chosen_weights() {
    let s = Setup::new();
    let release = common::golden().join("class_custom");
    let mut h = harness(s.options(Some(release)));
    run_until(&mut h, "the release", |a| a.model.card.is_some());
    // Choose q8_0 in the panel's menu, then import into a picked folder.
    h.get_by_label("import weights").click();
    h.run_steps(3);
    h.get_by_label("q8_0 — 8-bit, about ¼ the size").click();
    h.run_steps(3);
    assert_eq!(
        h.state().model.import_weights,
        tessera::editor::files::ImportWeights::Q8_0
    );
    let target = s.dir.path().join("models");
    std::fs::create_dir_all(&target).unwrap();
    s.dialogs.answer(&target);
    h.get_by_label("Import into Tessera format…").click();
    run_until(&mut h, "the imported model", |a| {
        a.model.importing.is_none() && a.model.card.as_ref().is_some_and(|c| c.dtype == "q8_0")
    });
    let out = target.join("class_custom-tessera");
    assert!(out.join("stage1.gguf").is_file(), "{}", out.display());
    assert_eq!(h.state().model.path.as_deref(), Some(out.as_path()));
}

#[test]
fn weights_at_load_quantize_and_reload_the_open_model_and_are_remembered() {
    let s = Setup::new();
    let release = common::golden().join("class_custom");
    let mut h = harness(s.options(Some(release.clone())));
    run_until(&mut h, "the release", |a| a.model.card.is_some());
    assert_eq!(h.state().model.weights.as_deref(), Some("f32"));
    // Below the official release's import offer: scrolled into view as a user would.
    click_in_view(&mut h, "weights at load");
    h.get_by_label("q8_0 — quantize at load").click();
    h.run_steps(3);
    run_until(&mut h, "the reload", |a| {
        a.model.loading.is_none()
            && a.model.weights.as_deref() == Some("q8_0 (quantized at load from f32)")
    });
    click_in_view(&mut h, "low memory (one stage resident)");
    run_until(&mut h, "the lazy reload", |a| {
        a.model.loading.is_none()
            && a.model.weights.as_deref()
                == Some("q8_0 (quantized at load from f32), one stage resident")
    });
    assert_eq!(h.state().model.path.as_deref(), Some(release.as_path()));
    // The preference outlives the window.
    drop(h);
    let h = harness(s.options(Some(release)));
    let config = &h.state().config;
    assert_eq!(
        config.load_weights,
        tessera::editor::settings::LoadWeights::Q8_0
    );
    assert!(config.low_memory);
}

#[test]
fn repaint_unsure_accepts_masks_the_unsure_tokens_and_regenerates_only_them() {
    let s = Setup::new();
    let mut h = masked_image(&s);
    {
        let app = h.state_mut();
        app.settings.candidates = 1;
        app.settings.feather_px = 0;
        app.generate();
    }
    run_until(&mut h, "the first job", |a| {
        !a.jobs.busy() && a.jobs.results.as_ref().is_some_and(|r| r.ready(0))
    });
    let final_confidence = |app: &EditorApp| {
        app.jobs
            .results
            .as_ref()
            .and_then(|r| r.final_confidence(0))
            .expect("the final level's confidence")
    };
    let conf = final_confidence(h.state());
    let mut probs: Vec<f32> = conf
        .confidence
        .prob
        .iter()
        .zip(&conf.confidence.sampled)
        .filter(|(_, s)| **s)
        .map(|(p, _)| *p)
        .collect();
    assert!(!probs.is_empty());
    probs.sort_by(f32::total_cmp);
    // The overlay and the button, as the user sees them (the slider keeps two decimals).
    h.state_mut().canvas_settings.show_confidence = true;
    h.state_mut().canvas_settings.unsure_below = probs[probs.len() / 2];
    h.run_steps(3);
    assert!(h.state().doc.as_ref().unwrap().confidence.is_some());
    let threshold = h.state().canvas_settings.unsure_below;
    let expect_mask = conf.mask_below(threshold, 40, 40);
    assert!(expect_mask.pixels().any(|p| p.0[0] == 255));
    assert!(expect_mask.pixels().any(|p| p.0[0] == 0));
    let count = conf.below(threshold).iter().filter(|b| **b).count();
    h.get_by_label(&format!("Repaint unsure ({count})")).click();
    h.run_steps(2);
    let accepted = h.state().doc.as_ref().unwrap().image.clone();
    assert_eq!(h.state().generations.len(), 1, "the candidate was accepted");
    assert_eq!(h.state().doc.as_ref().unwrap().mask, expect_mask);
    run_until(&mut h, "the repaint", |a| {
        !a.jobs.busy() && a.jobs.results.as_ref().is_some_and(|r| r.ready(0))
    });
    // On the first job's token grid: the same window, exactly the unsure tokens drawn.
    let again = final_confidence(h.state());
    assert_eq!(again.window, conf.window);
    assert_eq!(again.confidence.sampled, conf.below(threshold));
    h.state_mut().accept(0);
    let app = h.state();
    assert_eq!(app.generations.len(), 2);
    let doc = app.doc.as_ref().unwrap();
    let mut changed = 0;
    for (x, y, p) in doc.image.enumerate_pixels() {
        if *p != *accepted.get_pixel(x, y) {
            changed += 1;
            assert_eq!(
                expect_mask.get_pixel(x, y).0[0],
                255,
                "({x}, {y}) changed outside"
            );
        }
    }
    assert!(changed > 0, "the unsure tokens were repainted");
    // Undo takes back the repaint, then the mask, then the first accept.
    for _ in 0..3 {
        assert!(h.state().history.can_undo());
        h.state_mut().undo();
    }
    let doc = h.state().doc.as_ref().unwrap();
    assert!(doc.image != accepted, "back before the first accept");
    assert!(
        doc.mask.pixels().all(|p| p.0[0] == 255),
        "the select-all mask is back"
    );
}

/// A class model's picker takes a description: typing it picks the class it names best.
#[test]
fn describing_a_class_picks_it() {
    let s = Setup::new();
    let model = s.dir.path().join("named");
    let manifest = common::golden().join("class_custom/sampling.yaml");
    tessera_engine::loader::import::import(
        &manifest,
        &model,
        &tessera_engine::loader::import::ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let card_path = model.join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card["conditioning"]["class_names"] =
        serde_json::json!(tessera_engine::imagenet::class_names()[..100].to_vec());
    std::fs::write(&card_path, card.to_string()).unwrap();
    let mut h = harness(s.options(Some(model)));
    run_until(&mut h, "the model", |a| a.model.card.is_some());
    let field = "Describe:";
    let role = egui::accesskit::Role::TextInput;
    h.get_by_role_and_label(role, field).scroll_to_me();
    h.run_steps(2);
    h.get_by_role_and_label(role, field).focus();
    h.run_steps(2);
    h.get_by_role_and_label(role, field)
        .type_text("a great white shark");
    h.run_steps(3);
    assert_eq!(h.state().settings.class, Some(2));
    // The candidates are listed first; another is one click away.
    h.get_by_label("3: tiger shark, Galeocerdo cuvieri").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.class, Some(3));
}

#[test]
fn the_models_window_downloads_uses_imports_and_removes_a_release() {
    let s = Setup::new();
    let (server, zip, catalogue) =
        release::serve_release(s.dir.path(), "class_custom", "golden_cin");
    let mut opts = s.options(None);
    opts.library.catalogue = Some(catalogue);
    let models = opts.library.folder.clone().unwrap();
    let mut h = harness(opts);
    h.run_steps(2);
    // Model → Models… sends this.
    h.state_mut().apply(Command::ShowModels(true));
    h.run_steps(3);
    // The official releases are offered; the server first answers 404, which is shown.
    h.get_by_label("ImageNet classes, 4 levels");
    server.with(|b| b.statuses.push_back(404));
    click_in_view(&mut h, "Download golden_cin");
    run_until(&mut h, "the failed download", |a| !a.library.busy());
    let (text, error) = h.state().library.last.clone().unwrap();
    assert!(error && text.contains("404"), "{text}");

    click_in_view(&mut h, "Download golden_cin");
    run_until(&mut h, "the download", |a| !a.library.busy());
    assert!(
        models.join("golden_cin/model.json").is_file(),
        "{:?}",
        h.state().library.last
    );
    assert_eq!(h.state().library.installed.len(), 1);
    h.run_steps(2);
    // Switching to it needs no restart.
    click_in_view(&mut h, "Use");
    run_until(&mut h, "the installed model", |a| {
        a.model
            .card
            .as_ref()
            .is_some_and(|c| c.name == "Golden test release")
    });

    // Removal asks first.
    click_in_view(&mut h, "Remove");
    assert!(models.join("golden_cin").is_dir());
    h.get_by_label("Delete its files").click();
    h.run_steps(3);
    assert!(!models.join("golden_cin").exists());
    assert!(h.state().library.installed.is_empty());

    // A zip from disk, through the (fake) file dialog.
    let file = s.dir.path().join("golden_cin.zip");
    std::fs::write(&file, &zip).unwrap();
    s.dialogs.answer(&file);
    click_in_view(&mut h, "Import zip/ckpt from disk…");
    run_until(&mut h, "the import", |a| {
        !a.library.busy() && !a.background_busy() && !a.library.installed.is_empty()
    });
    assert!(models.join("golden_cin/model.json").is_file());
    assert!(file.is_file(), "the user's zip stays");
}
