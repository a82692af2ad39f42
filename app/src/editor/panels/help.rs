//! The hotkey sheet and the shortcuts themselves.

use egui::{Key, KeyboardShortcut, Modifiers};

use crate::editor::app::EditorApp;
use crate::editor::files::Purpose;
use crate::editor::mask_ops::GlobalOp;

/// Every shortcut: (keys, what it does). The tool keys are handled by the tool state.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Ctrl+O", "open an image or project"),
    ("Ctrl+S", "save the project"),
    (
        "Ctrl+Shift+S",
        "export the image (PNG with parameters, JPEG, WebP)",
    ),
    ("Ctrl+V", "paste an image from the clipboard"),
    (
        "Ctrl+Z",
        "undo (strokes, mask operations, accepted results)",
    ),
    ("Ctrl+Shift+Z / Ctrl+Y", "redo"),
    ("Ctrl+Enter", "generate"),
    ("Esc", "cancel the running job / discard the results"),
    ("Enter", "accept the selected candidate"),
    ("← / →", "previous / next candidate"),
    ("hold Tab", "show the original image"),
    ("Ctrl+I", "invert the mask"),
    ("Ctrl+D", "clear the mask"),
    ("Ctrl+M", "reuse the last generation's mask"),
    ("Ctrl+0 / Ctrl+1", "fit / 100 %"),
    ("wheel, Space+drag", "zoom, pan"),
    (
        "B E U L F S",
        "brush, eraser, rectangle, lasso, fill, select object",
    ),
    (
        "S: click / right-click, Enter, Esc",
        "select object: include / exclude a point, apply, cancel",
    ),
    ("[ / ]", "smaller / larger brush"),
    ("F1 or ?", "this sheet"),
];

pub(super) fn window(open: &mut bool, ctx: &egui::Context) {
    egui::Window::new("Keyboard shortcuts")
        .open(open)
        .collapsible(false)
        .resizable(false)
        .show(ctx, |ui| {
            egui::Grid::new("shortcuts")
                .num_columns(2)
                .striped(true)
                .show(ui, |ui| {
                    for (k, v) in SHORTCUTS {
                        ui.monospace(*k);
                        ui.label(*v);
                        ui.end_row();
                    }
                });
        });
}

/// Applies this frame's keyboard shortcuts.
pub(crate) fn shortcuts(app: &mut EditorApp, ctx: &egui::Context) {
    let cmd = Modifiers::COMMAND;
    let sc = |m: Modifiers, k: Key| KeyboardShortcut::new(m, k);
    let typing = ctx.egui_wants_keyboard_input();
    let pressed = |m: Modifiers, k: Key| ctx.input_mut(|i| i.consume_shortcut(&sc(m, k)));
    if pressed(cmd | Modifiers::SHIFT, Key::Z) || pressed(cmd, Key::Y) {
        app.redo();
    }
    if pressed(cmd, Key::Z) {
        app.undo();
    }
    if pressed(cmd | Modifiers::SHIFT, Key::S) {
        app.ask(Purpose::SaveImage);
    }
    if pressed(cmd, Key::S) {
        match app.project_path.clone() {
            Some(p) => app.act(Purpose::SaveProject, p),
            None => app.ask(Purpose::SaveProject),
        }
    }
    if pressed(cmd, Key::O) {
        app.ask(Purpose::OpenImage);
    }
    if pressed(cmd, Key::Enter) {
        app.generate();
    }
    if pressed(cmd, Key::I) {
        app.mask_op(GlobalOp::Invert);
    }
    if pressed(cmd, Key::D) {
        app.mask_op(GlobalOp::Clear);
    }
    if pressed(cmd, Key::M) {
        app.reuse_last_mask();
    }
    if pressed(cmd, Key::Num0) {
        app.canvas.fit();
    }
    if pressed(cmd, Key::Num1) {
        app.canvas.actual_size();
    }
    if pressed(Modifiers::NONE, Key::F1) {
        app.show_help = !app.show_help;
    }
    if pressed(Modifiers::NONE, Key::Escape) {
        if app.confirm.is_some() {
            app.confirm = None;
        } else if app.jobs.busy() {
            app.cancel();
        } else if app.jobs.results.is_some() {
            app.discard();
        }
    }
    if typing {
        return;
    }
    if pressed(Modifiers::SHIFT, Key::Questionmark) || pressed(Modifiers::NONE, Key::Questionmark) {
        app.show_help = !app.show_help;
    }
    if let Some(res) = &app.jobs.results {
        let (sel, n) = (res.selected, res.levels.len());
        if pressed(Modifiers::NONE, Key::Enter) {
            app.accept(sel);
        } else if pressed(Modifiers::NONE, Key::ArrowRight) && n > 0 {
            app.select_candidate((sel + 1) % n);
        } else if pressed(Modifiers::NONE, Key::ArrowLeft) && n > 0 {
            app.select_candidate((sel + n - 1) % n);
        }
    }
    app.canvas_settings.show_original = ctx.input(|i| i.key_down(Key::Tab));
    app.tools.handle_keys(ctx);
}
