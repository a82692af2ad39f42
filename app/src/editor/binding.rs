//! A key with modifiers, as the hotkey sheet writes it (`Ctrl+Shift+Z`) and parses it back.

use std::fmt;

use egui::{Key, KeyboardShortcut, Modifiers};

/// A key with modifiers. Ctrl means the platform's command key (Cmd on macOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Only `command`, `shift` and `alt` are used.
    pub modifiers: Modifiers,
    /// The logical key.
    pub key: Key,
}

/// Keys that are only modifiers and cannot be bound alone.
fn is_modifier_key(key: Key) -> bool {
    matches!(
        key,
        Key::ShiftLeft
            | Key::ShiftRight
            | Key::ControlLeft
            | Key::ControlRight
            | Key::AltLeft
            | Key::AltRight
            | Key::SuperLeft
            | Key::SuperRight
            | Key::Fn
    )
}

impl Binding {
    /// A binding of `key` with `modifiers` (normalised: Ctrl, Cmd and command are one).
    pub fn new(modifiers: Modifiers, key: Key) -> Self {
        Self {
            modifiers: Modifiers {
                alt: modifiers.alt,
                shift: modifiers.shift,
                command: modifiers.command || modifiers.ctrl || modifiers.mac_cmd,
                ..Modifiers::NONE
            },
            key,
        }
    }

    /// The binding a key press makes, `None` for a bare modifier key.
    pub fn from_press(modifiers: Modifiers, key: Key) -> Option<Self> {
        (!is_modifier_key(key)).then(|| Self::new(modifiers, key))
    }

    /// As an egui shortcut.
    pub fn shortcut(self) -> KeyboardShortcut {
        KeyboardShortcut::new(self.modifiers, self.key)
    }

    /// Whether it fires while a text field has focus (it has Ctrl or Alt, or is Esc or an
    /// F key).
    pub fn works_while_typing(self) -> bool {
        let m = self.modifiers;
        m.command
            || m.alt
            || self.key == Key::Escape
            || (self.key.name().starts_with('F') && self.key.name().len() > 1 && {
                self.key.name()[1..].bytes().all(|c| c.is_ascii_digit())
            })
    }

    /// Parses `"Ctrl+Shift+Z"`, `"Esc"`, `"["`, `"Ctrl++"` (modifiers: Ctrl/Cmd, Shift, Alt;
    /// key names as egui spells them, any case).
    pub fn parse(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("empty key".into());
        }
        let (mods, key) = if s == "+" {
            ("", "+")
        } else if let Some(rest) = s.strip_suffix("++") {
            (rest, "+")
        } else {
            match s.rsplit_once('+') {
                Some((m, k)) => (m, k),
                None => ("", s),
            }
        };
        let mut modifiers = Modifiers::NONE;
        for m in mods.split('+').map(str::trim).filter(|m| !m.is_empty()) {
            match m.to_ascii_lowercase().as_str() {
                "ctrl" | "control" | "cmd" | "command" | "⌘" => modifiers.command = true,
                "shift" | "⇧" => modifiers.shift = true,
                "alt" | "option" | "opt" | "⌥" => modifiers.alt = true,
                _ => return Err(format!("unknown modifier {m:?} in {text:?}")),
            }
        }
        let key = key.trim();
        let key = Key::from_name(key)
            .or_else(|| {
                Key::ALL
                    .iter()
                    .copied()
                    .find(|k| k.name().eq_ignore_ascii_case(key))
            })
            .ok_or_else(|| format!("unknown key {key:?} in {text:?}"))?;
        Self::from_press(modifiers, key).ok_or_else(|| format!("{text:?} has no key"))
    }

    /// Exact match of a press (Shift and Alt as in the binding).
    pub(super) fn matches_exact(self, modifiers: Modifiers, key: Key) -> bool {
        key == self.key && modifiers.matches_exact(self.modifiers)
    }

    /// Match ignoring Shift and Alt the binding does not ask for.
    pub(super) fn matches_logically(self, modifiers: Modifiers, key: Key) -> bool {
        key == self.key && modifiers.matches_logically(self.modifiers)
    }
}

fn key_text(key: Key) -> &'static str {
    match key {
        Key::Escape => "Esc",
        Key::Plus => "Plus",
        Key::Minus => "-",
        Key::ArrowLeft | Key::ArrowRight | Key::ArrowUp | Key::ArrowDown => key.name(),
        k => k.symbol_or_name(),
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.modifiers;
        if m.command || m.ctrl || m.mac_cmd {
            f.write_str("Ctrl+")?;
        }
        if m.shift {
            f.write_str("Shift+")?;
        }
        if m.alt {
            f.write_str("Alt+")?;
        }
        f.write_str(key_text(self.key))
    }
}
