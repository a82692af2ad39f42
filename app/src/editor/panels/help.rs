//! The hotkey sheet (which also rebinds keys) and the shortcuts themselves, both from the
//! [`Keymap`] in the config.

use egui::{Event, Key, Modifiers, RichText};

use crate::editor::app::EditorApp;
use crate::editor::files::Purpose;
use crate::editor::keymap::{Action, Binding};
use crate::editor::mask_ops::GlobalOp;
use crate::editor::tools::Tool;

/// What the sheet lists besides the keymap's actions: (keys, what they do); not remappable.
pub const FIXED_SHORTCUTS: &[(&str, &str)] = &[
    ("Ctrl+V", "paste an image from the clipboard"),
    ("wheel, Space+drag", "zoom, pan"),
    (
        "select object: click / right-click",
        "include / exclude a point; accept applies, cancel drops them",
    ),
];

/// The sheet's state between frames (kept in egui's memory).
#[derive(Clone, Default)]
struct Sheet {
    /// Binding slot waiting for a key combination: (action, slot).
    capture: Option<(Action, usize)>,
    /// Outcome of the last change.
    message: Option<String>,
}

fn sheet_id() -> egui::Id {
    egui::Id::unique("tessera-hotkey-sheet")
}

fn sheet(ctx: &egui::Context) -> Sheet {
    ctx.data(|d| d.get_temp(sheet_id()).unwrap_or_default())
}

fn set_sheet(ctx: &egui::Context, s: Sheet) {
    ctx.data_mut(|d| d.insert_temp(sheet_id(), s));
}

/// Whether the sheet is waiting for a new key combination (then every key goes to it).
pub(crate) fn capturing(ctx: &egui::Context) -> bool {
    sheet(ctx).capture.is_some()
}

/// While the sheet waits for a combination: takes this frame's keys, binds the first press
/// (Esc cancels; a combination another action has is refused). Returns whether it waited.
fn capture(app: &mut EditorApp, ctx: &egui::Context) -> bool {
    let mut st = sheet(ctx);
    let Some((action, slot)) = st.capture else {
        return false;
    };
    if !app.show_help {
        st.capture = None;
        set_sheet(ctx, st);
        return false;
    }
    let press = ctx.input_mut(|i| {
        let mut press = None;
        i.events.retain(|e| match e {
            Event::Key {
                key,
                modifiers,
                pressed,
                ..
            } => {
                if *pressed && press.is_none() {
                    press = Binding::from_press(*modifiers, *key);
                }
                false
            }
            Event::Text(_) => false,
            _ => true,
        });
        press
    });
    let Some(binding) = press else {
        return true;
    };
    st.capture = None;
    if binding == Binding::new(Modifiers::NONE, Key::Escape) {
        st.message = None;
    } else {
        match app.config.hotkeys.set(action, slot, binding) {
            Ok(()) => {
                let text = app.config.hotkeys.text(action);
                st.message = Some(format!("{}: {text}", action.label()));
                app.save_config();
            }
            Err(other) => {
                let text = format!(
                    "{binding} is already used for “{}”; not changed",
                    other.label()
                );
                app.info(text.clone());
                st.message = Some(text);
            }
        }
    }
    set_sheet(ctx, st);
    true
}

/// The hotkey sheet: every action with its keys (click one to change it).
pub(super) fn window(app: &mut EditorApp, ctx: &egui::Context) {
    let mut open = app.show_help;
    let mut st = sheet(ctx);
    egui::Window::new("Keyboard shortcuts")
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .show(ctx, |ui| {
            ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Extend);
            ui.label("Click a key to change it (Esc cancels); right-click removes it, + adds one.");
            let half = Action::ALL.len().div_ceil(2);
            ui.horizontal_top(|ui| {
                for (col, actions) in Action::ALL.chunks(half).enumerate() {
                    egui::Grid::new(("shortcuts", col))
                        .num_columns(2)
                        .striped(true)
                        .show(ui, |ui| {
                            for &action in actions {
                                ui.label(action.label());
                                ui.horizontal(|ui| bindings_ui(app, &mut st, ui, action));
                                ui.end_row();
                            }
                        });
                    if col == 0 {
                        ui.add_space(24.0);
                    }
                }
            });
            ui.separator();
            egui::Grid::new("fixed-shortcuts")
                .num_columns(2)
                .show(ui, |ui| {
                    for (k, v) in FIXED_SHORTCUTS {
                        ui.monospace(*k);
                        ui.label(*v);
                        ui.end_row();
                    }
                });
            ui.separator();
            ui.horizontal(|ui| {
                let reset = egui::Button::new("Reset to defaults");
                if ui
                    .add_enabled(!app.config.hotkeys.is_default(), reset)
                    .clicked()
                {
                    app.config.hotkeys.reset();
                    st.capture = None;
                    st.message = Some("all keys reset to the defaults".into());
                    app.save_config();
                }
                if let Some(m) = &st.message {
                    ui.label(m);
                }
            });
        });
    app.show_help = open;
    if !open {
        st.capture = None;
    }
    set_sheet(ctx, st);
}

/// One action's binding buttons and the + button.
fn bindings_ui(app: &mut EditorApp, st: &mut Sheet, ui: &mut egui::Ui, action: Action) {
    let bindings = app.config.hotkeys.bindings(action).to_vec();
    for slot in 0..=bindings.len() {
        let waiting = st.capture == Some((action, slot));
        let text = match (waiting, bindings.get(slot)) {
            (true, _) => "press keys…".to_string(),
            (false, Some(b)) => b.to_string(),
            (false, None) => "+".to_string(),
        };
        let button = egui::Button::new(RichText::new(text).monospace()).selected(waiting);
        let hover = if slot < bindings.len() {
            "Click, then press the new keys; right-click removes"
        } else {
            "Add a key"
        };
        let r = ui.add(button).on_hover_text(hover);
        if r.clicked() {
            st.capture = if waiting { None } else { Some((action, slot)) };
        }
        if r.secondary_clicked() && slot < bindings.len() {
            app.config.hotkeys.remove(action, slot);
            st.message = Some(format!("{}: removed {}", action.label(), bindings[slot]));
            app.save_config();
        }
    }
}

/// Runs `action` (everything but the tool keys and the hold keys).
fn run(app: &mut EditorApp, action: Action) {
    match action {
        Action::Open => app.ask(Purpose::OpenImage),
        Action::SaveProject => match app.project_path.clone() {
            Some(p) => app.act(Purpose::SaveProject, p),
            None => app.ask(Purpose::SaveProject),
        },
        Action::ExportImage => app.ask(Purpose::SaveImage),
        Action::Undo => app.undo(),
        Action::Redo => app.redo(),
        Action::Generate => app.generate(),
        Action::Cancel => {
            if app.confirm.is_some() {
                app.confirm = None;
            } else if app.jobs.busy() {
                app.cancel();
            } else if app.jobs.results.is_some() {
                app.discard();
            }
        }
        Action::Accept | Action::PreviousCandidate | Action::NextCandidate => {
            let Some(res) = &app.jobs.results else {
                return;
            };
            let (sel, n) = (res.selected, res.levels.len());
            match action {
                Action::Accept => app.accept(sel),
                _ if n == 0 => {}
                Action::NextCandidate => app.select_candidate((sel + 1) % n),
                _ => app.select_candidate((sel + n - 1) % n),
            }
        }
        Action::InvertMask => app.mask_op(GlobalOp::Invert),
        Action::ClearMask => app.mask_op(GlobalOp::Clear),
        Action::ReuseMask => app.reuse_last_mask(),
        Action::Help => app.show_help = !app.show_help,
        a if a.is_zoom() => {
            app.canvas.zoom_action(a);
        }
        _ => {}
    }
}

/// Applies this frame's keyboard shortcuts, as bound in the config's keymap (and hands the
/// keys to the hotkey sheet while it waits for a new combination).
pub(crate) fn shortcuts(app: &mut EditorApp, ctx: &egui::Context) {
    for p in app.config.hotkeys.take_problems() {
        app.error(p);
    }
    app.canvas.set_keymap(&app.config.hotkeys);
    if capture(app, ctx) {
        return;
    }
    let typing = ctx.egui_wants_keyboard_input();
    let results = app.jobs.results.is_some();
    let actions = ctx.input_mut(|i| {
        app.config.hotkeys.consume(i, typing, |a| match a {
            Action::Accept | Action::PreviousCandidate | Action::NextCandidate => results,
            Action::ShowOriginal | Action::BrushSmaller | Action::BrushLarger => false,
            a => Tool::of_action(a).is_none(),
        })
    });
    for action in actions {
        run(app, action);
    }
    if typing {
        return;
    }
    app.canvas_settings.show_original =
        ctx.input(|i| app.config.hotkeys.held(i, Action::ShowOriginal));
    app.tools.handle_keys(ctx, &app.config.hotkeys);
}
