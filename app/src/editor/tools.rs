//! The mask tools and their settings: which tool is active, the brush size each tool
//! remembers, hardness, fill tolerance and lasso fill rule; the palette UI and the hotkeys
//! (from the [`Keymap`]; by default `[` `]` size, B brush, E eraser, U rectangle, L lasso,
//! F fill, S select object).

use egui::Key;

use super::keymap::{Action, Keymap};
use super::mask_ops::{Brush, FillRule};

/// A mask tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// Paints the mask with a round brush.
    Brush,
    /// Removes mask with a round brush.
    Eraser,
    /// Drag a rectangle to add it.
    Rectangle,
    /// Drag a free-hand polygon to add it.
    Lasso,
    /// Click to add the region of similar image colour.
    Fill,
    /// Click objects to select them with SAM, then apply the selection to the mask
    /// (see [`super::segment`]).
    Select,
}

impl Tool {
    /// The tool an action selects.
    pub fn of_action(a: Action) -> Option<Tool> {
        Some(match a {
            Action::ToolBrush => Tool::Brush,
            Action::ToolEraser => Tool::Eraser,
            Action::ToolRectangle => Tool::Rectangle,
            Action::ToolLasso => Tool::Lasso,
            Action::ToolFill => Tool::Fill,
            Action::ToolSelect => Tool::Select,
            _ => return None,
        })
    }

    /// The action selecting it.
    pub fn action(self) -> Action {
        match self {
            Tool::Brush => Action::ToolBrush,
            Tool::Eraser => Action::ToolEraser,
            Tool::Rectangle => Action::ToolRectangle,
            Tool::Lasso => Action::ToolLasso,
            Tool::Fill => Action::ToolFill,
            Tool::Select => Action::ToolSelect,
        }
    }
}

impl Tool {
    /// Every tool, palette order.
    pub const ALL: [Tool; 6] = [
        Tool::Brush,
        Tool::Eraser,
        Tool::Rectangle,
        Tool::Lasso,
        Tool::Fill,
        Tool::Select,
    ];

    /// Name shown in the palette.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Brush => "Brush",
            Tool::Eraser => "Eraser",
            Tool::Rectangle => "Rectangle",
            Tool::Lasso => "Lasso",
            Tool::Fill => "Fill",
            Tool::Select => "Select object",
        }
    }

    /// Key that selects it by default ([`Action::defaults`] of its action).
    pub fn key(self) -> Key {
        match self {
            Tool::Brush => Key::B,
            Tool::Eraser => Key::E,
            Tool::Rectangle => Key::U,
            Tool::Lasso => Key::L,
            Tool::Fill => Key::F,
            Tool::Select => Key::S,
        }
    }

    /// One-line help for the tooltip.
    pub fn help(self) -> &'static str {
        match self {
            Tool::Brush => "Paint the mask. Right-drag erases.",
            Tool::Eraser => "Erase the mask.",
            Tool::Rectangle => "Drag to add a rectangle. Right-drag removes one.",
            Tool::Lasso => "Drag around an area to add it. Right-drag removes.",
            Tool::Fill => "Click to add the area of similar colour. Right-click removes.",
            Tool::Select => {
                "Click an object to mask it; right-click (or Alt-click) excludes a point; \
                 Enter applies, Esc cancels."
            }
        }
    }

    /// Whether the tool paints with the round brush (size and hardness matter).
    pub fn uses_brush(self) -> bool {
        matches!(self, Tool::Brush | Tool::Eraser)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Smallest and largest brush diameter in image pixels.
pub const SIZE_RANGE: (f32, f32) = (1.0, 2000.0);

/// The active tool and the settings of every tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolState {
    /// The active tool.
    pub tool: Tool,
    /// Diameter per tool (image pixels), indexed by `Tool as usize`.
    sizes: [f32; Tool::ALL.len()],
    /// Brush and eraser hardness, 0 (soft) ..= 1 (hard).
    pub hardness: f32,
    /// Fill: largest per-channel colour difference (0–255) that still counts as similar.
    pub tolerance: u8,
    /// How the lasso fills self-intersecting outlines.
    pub fill_rule: FillRule,
}

impl Default for ToolState {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolState {
    /// Brush active, 40 px brush, 40 px eraser, hard edge, tolerance 32.
    pub fn new() -> Self {
        Self {
            tool: Tool::Brush,
            sizes: [40.0; Tool::ALL.len()],
            hardness: 1.0,
            tolerance: 32,
            fill_rule: FillRule::NonZero,
        }
    }

    /// Diameter of the current tool in image pixels.
    pub fn size(&self) -> f32 {
        self.sizes[self.tool.index()]
    }

    /// Sets the current tool's diameter (clamped to [`SIZE_RANGE`]); each tool remembers its own.
    pub fn set_size(&mut self, px: f32) {
        let px = if px.is_finite() { px } else { SIZE_RANGE.0 };
        self.sizes[self.tool.index()] = px.clamp(SIZE_RANGE.0, SIZE_RANGE.1);
    }

    /// Diameter remembered for `tool`.
    pub fn size_of(&self, tool: Tool) -> f32 {
        self.sizes[tool.index()]
    }

    /// The brush a drag paints with: the current tool's when it is the brush or eraser,
    /// otherwise the brush tool's (right-drag erasing).
    pub fn brush(&self) -> Brush {
        let tool = if self.tool.uses_brush() {
            self.tool
        } else {
            Tool::Brush
        };
        Brush {
            size: self.size_of(tool),
            hardness: self.hardness,
        }
    }

    /// One `]` step: about 20 % larger, at least 1 px.
    pub fn grow_size(&mut self) {
        let s = self.size();
        self.set_size((s * 1.2).round().max(s + 1.0));
    }

    /// One `[` step: about 20 % smaller, at least 1 px.
    pub fn shrink_size(&mut self) {
        let s = self.size();
        self.set_size((s / 1.2).round().min(s - 1.0));
    }

    /// The tool palette and the settings of the current tool; tooltips name the keys of
    /// `keys`.
    pub fn ui(&mut self, ui: &mut egui::Ui, keys: &Keymap) {
        ui.horizontal_wrapped(|ui| {
            for tool in Tool::ALL {
                let text = format!("{} ({})", tool.help(), keys.text(tool.action()));
                ui.selectable_value(&mut self.tool, tool, tool.label())
                    .on_hover_text(text);
            }
        });
        if self.tool.uses_brush() {
            let mut size = self.size();
            let slider = egui::Slider::new(&mut size, SIZE_RANGE.0..=SIZE_RANGE.1)
                .logarithmic(true)
                .suffix(" px")
                .text("Size");
            let hint = format!(
                "{} and {} change it",
                keys.text(Action::BrushSmaller),
                keys.text(Action::BrushLarger)
            );
            if ui.add(slider).on_hover_text(hint).changed() {
                self.set_size(size);
            }
            ui.add(egui::Slider::new(&mut self.hardness, 0.0..=1.0).text("Hardness"));
        }
        if self.tool == Tool::Fill {
            ui.add(egui::Slider::new(&mut self.tolerance, 0..=255).text("Tolerance"))
                .on_hover_text("How different a colour may be and still be filled");
        }
        if self.tool == Tool::Lasso {
            ui.horizontal(|ui| {
                ui.label("Overlaps");
                ui.selectable_value(&mut self.fill_rule, FillRule::NonZero, "filled")
                    .on_hover_text("Non-zero winding: loops stay filled");
                ui.selectable_value(&mut self.fill_rule, FillRule::EvenOdd, "holes")
                    .on_hover_text("Even-odd: overlapping parts become holes");
            });
        }
    }

    /// Tool hotkeys (tool keys, smaller/larger brush) as bound in `keys`; ignored while a
    /// text field has keyboard focus.
    pub fn handle_keys(&mut self, ctx: &egui::Context, keys: &Keymap) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let actions = ctx.input_mut(|input| {
            keys.consume(input, false, |a| {
                Tool::of_action(a).is_some()
                    || matches!(a, Action::BrushSmaller | Action::BrushLarger)
            })
        });
        for action in actions {
            match action {
                Action::BrushSmaller => self.shrink_size(),
                Action::BrushLarger => self.grow_size(),
                a => {
                    if let Some(tool) = Tool::of_action(a) {
                        self.tool = tool;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::Modifiers;

    #[test]
    fn sizes_are_remembered_per_tool() {
        let mut t = ToolState::new();
        t.set_size(10.0);
        t.tool = Tool::Eraser;
        t.set_size(80.0);
        assert_eq!(t.size(), 80.0);
        t.tool = Tool::Brush;
        assert_eq!(t.size(), 10.0);
        t.set_size(1e9);
        assert_eq!(t.size(), SIZE_RANGE.1);
        t.set_size(f32::NAN);
        assert_eq!(t.size(), SIZE_RANGE.0);
    }

    #[test]
    fn bracket_steps_change_size_by_at_least_one_pixel() {
        let mut t = ToolState::new();
        t.set_size(2.0);
        t.grow_size();
        assert_eq!(t.size(), 3.0);
        t.set_size(100.0);
        t.grow_size();
        assert_eq!(t.size(), 120.0);
        t.shrink_size();
        assert_eq!(t.size(), 100.0);
        t.set_size(1.0);
        t.shrink_size();
        assert_eq!(t.size(), 1.0);
    }

    #[test]
    fn hotkeys_switch_tools_and_size() {
        let ctx = egui::Context::default();
        let mut t = ToolState::new();
        let press = |key| egui::Event::Key {
            key,
            physical_key: None,
            pressed: true,
            repeat: false,
            modifiers: Modifiers::NONE,
        };
        let input = egui::RawInput {
            events: vec![press(Key::L), press(Key::CloseBracket)],
            ..Default::default()
        };
        let keys = Keymap::default();
        let mut out = ctx.run_ui(input, |ui| t.handle_keys(ui.ctx(), &keys));
        out.textures_delta.clear();
        assert_eq!(t.tool, Tool::Lasso);
        assert_eq!(t.size_of(Tool::Lasso), 48.0);
        assert_eq!(t.size_of(Tool::Brush), 40.0);
    }
}
