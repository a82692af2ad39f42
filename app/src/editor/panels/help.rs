//! The hotkey sheet (which also rebinds keys), from the [`Keymap`] in the config.
//!
//! [`Keymap`]: crate::editor::keymap::Keymap

use egui::{Event, Key, Modifiers, RichText};

use super::Panels;
use crate::editor::command::Command;
use crate::editor::keymap::{Action, Binding};

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
pub(crate) fn capture(p: &mut Panels, ctx: &egui::Context) -> bool {
    let mut st = sheet(ctx);
    let Some((action, slot)) = st.capture else {
        return false;
    };
    if !*p.show_help {
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
        match p.config.hotkeys.set(action, slot, binding) {
            Ok(()) => {
                let text = p.config.hotkeys.text(action);
                st.message = Some(format!("{}: {text}", action.label()));
                p.send(Command::SaveConfig);
            }
            Err(other) => {
                let text = format!(
                    "{binding} is already used for “{}”; not changed",
                    other.label()
                );
                p.send(Command::Info(text.clone()));
                st.message = Some(text);
            }
        }
    }
    set_sheet(ctx, st);
    true
}

/// The hotkey sheet: every action with its keys (click one to change it).
pub(super) fn window(p: &mut Panels, ctx: &egui::Context) {
    let mut open = *p.show_help;
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
                                ui.horizontal(|ui| bindings_ui(p, &mut st, ui, action));
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
                    .add_enabled(!p.config.hotkeys.is_default(), reset)
                    .clicked()
                {
                    p.config.hotkeys.reset();
                    st.capture = None;
                    st.message = Some("all keys reset to the defaults".into());
                    p.send(Command::SaveConfig);
                }
                if let Some(m) = &st.message {
                    ui.label(m);
                }
            });
        });
    *p.show_help = open;
    if !open {
        st.capture = None;
    }
    set_sheet(ctx, st);
}

/// One action's binding buttons and the + button.
fn bindings_ui(p: &mut Panels, st: &mut Sheet, ui: &mut egui::Ui, action: Action) {
    let bindings = p.config.hotkeys.bindings(action).to_vec();
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
            p.config.hotkeys.remove(action, slot);
            st.message = Some(format!("{}: removed {}", action.label(), bindings[slot]));
            p.send(Command::SaveConfig);
        }
    }
}
