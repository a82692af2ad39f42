//! Remappable hotkeys: every editor action, its default bindings, and the user's bindings
//! (stored in [`super::settings::Config`] as action name → `"Ctrl+Shift+Z"`-style strings).
//!
//! A key press triggers the action whose binding matches its modifiers exactly; when none
//! does, the one whose binding matches ignoring extra Shift/Alt (so `?` typed with Shift
//! still finds a `?` binding). Bindings without Ctrl/Alt (other than Esc and the F keys)
//! are ignored while a text field has keyboard focus.

use std::collections::BTreeMap;

use egui::{Event, InputState, Key, Modifiers};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use super::action::Action;
pub use super::binding::Binding;

/// The bindings of every action, plus what went wrong reading them from the config.
#[derive(Debug, Clone)]
pub struct Keymap {
    bindings: BTreeMap<Action, Vec<Binding>>,
    problems: Vec<String>,
}

impl Default for Keymap {
    /// Every action with its [`Action::defaults`].
    fn default() -> Self {
        Self {
            bindings: Action::ALL
                .into_iter()
                .map(|a| (a, a.defaults().to_vec()))
                .collect(),
            problems: Vec::new(),
        }
    }
}

impl PartialEq for Keymap {
    fn eq(&self, other: &Self) -> bool {
        self.bindings == other.bindings
    }
}

impl Keymap {
    /// The bindings of `action` (possibly none).
    pub fn bindings(&self, action: Action) -> &[Binding] {
        self.bindings.get(&action).map_or(&[], Vec::as_slice)
    }

    /// The bindings as text, `"Ctrl+Shift+Z / Ctrl+Y"`; empty when unbound.
    pub fn text(&self, action: Action) -> String {
        self.bindings(action)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The action other than `except` that `binding` belongs to.
    pub fn conflict(&self, binding: Binding, except: Action) -> Option<Action> {
        self.bindings
            .iter()
            .find(|(a, bs)| **a != except && bs.contains(&binding))
            .map(|(a, _)| *a)
    }

    /// Sets binding number `slot` of `action` (appends when `slot` is past the end); refuses
    /// a binding another action has, returning that action.
    pub fn set(&mut self, action: Action, slot: usize, binding: Binding) -> Result<(), Action> {
        let binding = Binding::new(binding.modifiers, binding.key);
        if let Some(other) = self.conflict(binding, action) {
            return Err(other);
        }
        let list = self.bindings.entry(action).or_default();
        if slot < list.len() {
            list[slot] = binding;
        } else {
            list.push(binding);
        }
        let mut seen = Vec::new();
        list.retain(|b| {
            let new = !seen.contains(b);
            seen.push(*b);
            new
        });
        Ok(())
    }

    /// Removes binding number `slot` of `action`.
    pub fn remove(&mut self, action: Action, slot: usize) {
        if let Some(list) = self.bindings.get_mut(&action)
            && slot < list.len()
        {
            list.remove(slot);
        }
    }

    /// Back to the defaults.
    pub fn reset(&mut self) {
        self.bindings = Self::default().bindings;
    }

    /// Whether every action has its default bindings.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Bindings two actions share: (binding, first action, second action).
    pub fn conflicts(&self) -> Vec<(Binding, Action, Action)> {
        let mut out = Vec::new();
        let all: Vec<(Action, Binding)> = self
            .bindings
            .iter()
            .flat_map(|(a, bs)| bs.iter().map(move |b| (*a, *b)))
            .collect();
        for (i, (a, b)) in all.iter().enumerate() {
            for (a2, b2) in &all[i + 1..] {
                if b == b2 && a != a2 {
                    out.push((*b, *a, *a2));
                }
            }
        }
        out
    }

    /// What was wrong with the config's entries (unknown actions, unparsable keys,
    /// conflicts); taken once.
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    /// Builds a keymap from config entries (action name → binding texts): the defaults for
    /// actions not named; unknown actions and unparsable keys are skipped and a binding two
    /// actions share is kept for the one the entries name (else the first), each with a
    /// problem message.
    pub fn from_entries(entries: &BTreeMap<String, Vec<String>>) -> Self {
        let mut map = Self::default();
        let mut named = Vec::new();
        for (name, texts) in entries {
            let Some(action) = Action::from_name(name) else {
                map.problems
                    .push(format!("hotkeys: unknown action {name:?} ignored"));
                continue;
            };
            let mut list = Vec::new();
            for t in texts {
                match Binding::parse(t) {
                    Ok(b) if !list.contains(&b) => list.push(b),
                    Ok(_) => {}
                    Err(e) => map.problems.push(format!("hotkeys: {name}: {e}; ignored")),
                }
            }
            if list.is_empty() && !texts.is_empty() {
                continue; // nothing usable: keep the default
            }
            named.push(action);
            map.bindings.insert(action, list);
        }
        // Resolve conflicts: named actions first, then the sheet's order.
        let mut order: Vec<Action> = named.clone();
        order.extend(Action::ALL.into_iter().filter(|a| !named.contains(a)));
        let mut owner: Vec<(Binding, Action)> = Vec::new();
        for action in order {
            let list = map.bindings.entry(action).or_default();
            list.retain(|b| match owner.iter().find(|(ob, _)| ob == b) {
                Some((_, other)) => {
                    map.problems.push(format!(
                        "hotkeys: {b} is bound to both {} and {}; kept for {}",
                        other.name(),
                        action.name(),
                        other.name()
                    ));
                    false
                }
                None => true,
            });
            owner.extend(list.iter().map(|b| (*b, action)));
        }
        map
    }

    /// Every action's bindings as text, for the config.
    pub fn to_entries(&self) -> BTreeMap<String, Vec<String>> {
        Action::ALL
            .into_iter()
            .map(|a| {
                let texts = self.bindings(a).iter().map(ToString::to_string).collect();
                (a.name().to_string(), texts)
            })
            .collect()
    }

    /// The action a press of `key` with `modifiers` triggers: an exact match first, else a
    /// match ignoring extra Shift/Alt.
    pub fn lookup(&self, modifiers: Modifiers, key: Key) -> Option<(Action, Binding)> {
        let find = |exact: bool| {
            self.bindings.iter().find_map(|(a, bs)| {
                bs.iter()
                    .find(|b| {
                        if exact {
                            b.matches_exact(modifiers, key)
                        } else {
                            b.matches_logically(modifiers, key)
                        }
                    })
                    .map(|b| (*a, *b))
            })
        };
        find(true).or_else(|| find(false))
    }

    /// Consumes this frame's presses of bindings of `active` actions and returns those
    /// actions in order. With `typing`, only bindings that work while typing count.
    /// A press bound to an inactive action is left alone.
    pub fn consume(
        &self,
        input: &mut InputState,
        typing: bool,
        active: impl Fn(Action) -> bool,
    ) -> Vec<Action> {
        let mut fired = Vec::new();
        input.events.retain(|e| {
            let Event::Key {
                key,
                modifiers,
                pressed: true,
                ..
            } = e
            else {
                return true;
            };
            match self.lookup(*modifiers, *key) {
                Some((a, b)) if active(a) && (!typing || b.works_while_typing()) => {
                    fired.push(a);
                    false
                }
                _ => true,
            }
        });
        fired
    }

    /// Whether a binding of `action` is held down now.
    pub fn held(&self, input: &InputState, action: Action) -> bool {
        self.bindings(action)
            .iter()
            .any(|b| input.key_down(b.key) && input.modifiers.matches_logically(b.modifiers))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    One(String),
    Many(Vec<String>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entries {
    Map(BTreeMap<String, Entry>),
    Other(serde::de::IgnoredAny),
}

impl Serialize for Keymap {
    /// Action name → one string, or a list when the action has several (or no) bindings.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Out {
            One(String),
            Many(Vec<String>),
        }
        let map: BTreeMap<String, Out> = self
            .to_entries()
            .into_iter()
            .map(|(k, mut v)| {
                let out = if v.len() == 1 {
                    Out::One(v.remove(0))
                } else {
                    Out::Many(v)
                };
                (k, out)
            })
            .collect();
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Keymap {
    /// Never fails on bad entries: they are skipped and reported by
    /// [`Keymap::take_problems`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut bad = Vec::new();
        let entries = match Entries::deserialize(d)? {
            Entries::Map(m) => m
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Entry::One(s) => Some((k, vec![s])),
                    Entry::Many(v) => Some((k, v)),
                    Entry::Other(_) => {
                        bad.push(format!("hotkeys: {k}: not a key or list of keys; ignored"));
                        None
                    }
                })
                .collect(),
            Entries::Other(_) => {
                bad.push("hotkeys: not a map of action names to keys; ignored".into());
                BTreeMap::new()
            }
        };
        let mut map = Self::from_entries(&entries);
        bad.append(&mut map.problems);
        map.problems = bad;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        for a in Action::ALL {
            for b in a.defaults() {
                let text = b.to_string();
                assert_eq!(Binding::parse(&text), Ok(*b), "{text}");
            }
        }
        let cases = [
            ("Ctrl+Shift+Z", "Ctrl+Shift+Z"),
            ("ctrl+shift+z", "Ctrl+Shift+Z"),
            ("Cmd+0", "Ctrl+0"),
            ("Alt+F4", "Alt+F4"),
            ("Esc", "Esc"),
            ("escape", "Esc"),
            ("Ctrl++", "Ctrl+Plus"),
            ("Ctrl+Plus", "Ctrl+Plus"),
            ("[", "["),
            ("Left", "Left"),
            ("pageup", "PageUp"),
            (" Shift + ? ", "Shift+?"),
        ];
        for (text, want) in cases {
            let b = Binding::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(b.to_string(), want);
            assert_eq!(Binding::parse(want), Ok(b));
        }
        for bad in ["", "Ctrl+", "Hyper+A", "Ctrl+Nope", "ShiftLeft"] {
            assert!(Binding::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_have_no_conflicts_and_keep_the_old_keys() {
        let k = Keymap::default();
        assert!(k.conflicts().is_empty());
        assert_eq!(k.text(Action::Redo), "Ctrl+Shift+Z / Ctrl+Y");
        assert_eq!(k.text(Action::Help), "F1 / ?");
        assert_eq!(k.text(Action::Zoom800), "Ctrl+4");
        assert!(Binding::parse("F1").unwrap().works_while_typing());
        assert!(Binding::parse("Esc").unwrap().works_while_typing());
        assert!(Binding::parse("Ctrl+Z").unwrap().works_while_typing());
        assert!(!Binding::parse("F").unwrap().works_while_typing());
        assert!(!Binding::parse("?").unwrap().works_while_typing());
    }

    #[test]
    fn exact_matches_win_and_shift_is_ignored_for_symbols() {
        let k = Keymap::default();
        let cmd_shift = Modifiers::COMMAND | Modifiers::SHIFT;
        assert_eq!(k.lookup(cmd_shift, Key::Z).unwrap().0, Action::Redo);
        assert_eq!(
            k.lookup(Modifiers::COMMAND, Key::Z).unwrap().0,
            Action::Undo
        );
        assert_eq!(k.lookup(cmd_shift, Key::S).unwrap().0, Action::ExportImage);
        let ctrl = Modifiers {
            ctrl: true,
            command: true,
            ..Modifiers::NONE
        };
        assert_eq!(k.lookup(ctrl, Key::S).unwrap().0, Action::SaveProject);
        assert_eq!(
            k.lookup(Modifiers::NONE, Key::S).unwrap().0,
            Action::ToolSelect
        );
        assert_eq!(
            k.lookup(Modifiers::SHIFT, Key::Questionmark).unwrap().0,
            Action::Help
        );
        assert_eq!(k.lookup(Modifiers::COMMAND, Key::B), None);
    }

    #[test]
    fn conflicts_are_refused() {
        let mut k = Keymap::default();
        let b = Binding::parse("Ctrl+Z").unwrap();
        assert_eq!(k.set(Action::Open, 0, b), Err(Action::Undo));
        assert_eq!(k.text(Action::Open), "Ctrl+O");
        let x = Binding::parse("X").unwrap();
        assert_eq!(k.set(Action::ToolEraser, 0, x), Ok(()));
        assert_eq!(k.text(Action::ToolEraser), "X");
        assert_eq!(k.set(Action::ToolEraser, 5, x), Ok(()));
        assert_eq!(k.text(Action::ToolEraser), "X");
        k.reset();
        assert!(k.is_default());
    }

    #[test]
    fn bad_entries_are_skipped_with_messages() {
        let json = r#"{
            "undo": "Ctrl+U",
            "redo": ["Ctrl+R", "Nope+Q"],
            "frobnicate": "Ctrl+F",
            "open": 5,
            "tool_fill": "Ctrl+U",
            "help": "???"
        }"#;
        let mut k: Keymap = serde_json::from_str(json).unwrap();
        // Both name Ctrl+U: the first named (by name: tool_fill) keeps it.
        assert_eq!(k.text(Action::ToolFill), "Ctrl+U");
        assert_eq!(k.text(Action::Undo), "");
        assert_eq!(k.text(Action::Redo), "Ctrl+R");
        assert_eq!(k.text(Action::Open), "Ctrl+O");
        assert_eq!(k.text(Action::Help), "F1 / ?");
        assert!(k.conflicts().is_empty());
        let problems = k.take_problems();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("frobnicate")));
        assert!(problems.iter().any(|p| p.contains("both")));
        assert!(k.take_problems().is_empty());
        let odd: Keymap = serde_json::from_str("[1, 2]").unwrap();
        assert!(odd.is_default());
    }

    #[test]
    fn serde_round_trip() {
        let mut k = Keymap::default();
        k.set(Action::ToolEraser, 0, Binding::parse("X").unwrap())
            .unwrap();
        k.set(Action::Zoom800, 1, Binding::parse("Ctrl+8").unwrap())
            .unwrap();
        k.remove(Action::Help, 1);
        let json = serde_json::to_string(&k).unwrap();
        assert!(json.contains(r#""tool_eraser":"X""#), "{json}");
        assert!(json.contains(r#""zoom_800":["Ctrl+4","Ctrl+8"]"#), "{json}");
        let mut back: Keymap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, k);
        assert!(back.take_problems().is_empty());
    }
}
