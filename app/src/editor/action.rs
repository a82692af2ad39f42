//! What the editor can be told to do from the keyboard, its menus and its buttons: every
//! [`Action`], its name in `config.json`, its label on the hotkey sheet and its default
//! bindings.

use egui::{Key, Modifiers};

use super::binding::Binding;

/// Something a hotkey does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Open an image or project.
    Open,
    /// Save the project.
    SaveProject,
    /// Export the image.
    ExportImage,
    /// Undo.
    Undo,
    /// Redo.
    Redo,
    /// Generate.
    Generate,
    /// Cancel the running job / discard the results.
    Cancel,
    /// Accept the selected candidate.
    Accept,
    /// Previous candidate.
    PreviousCandidate,
    /// Next candidate.
    NextCandidate,
    /// Show the original image while held.
    ShowOriginal,
    /// Invert the mask.
    InvertMask,
    /// Clear the mask.
    ClearMask,
    /// Reuse the last generation's mask.
    ReuseMask,
    /// Fit the image in the canvas.
    ZoomFit,
    /// Zoom to 100 %.
    Zoom100,
    /// Zoom to 200 %.
    Zoom200,
    /// Zoom to 400 %.
    Zoom400,
    /// Zoom to 800 %.
    Zoom800,
    /// Brush tool.
    ToolBrush,
    /// Eraser tool.
    ToolEraser,
    /// Rectangle tool.
    ToolRectangle,
    /// Lasso tool.
    ToolLasso,
    /// Fill tool.
    ToolFill,
    /// Select object tool.
    ToolSelect,
    /// Smaller brush.
    BrushSmaller,
    /// Larger brush.
    BrushLarger,
    /// Show / hide the hotkey sheet.
    Help,
}

macro_rules! b {
    ($m:expr, $k:expr) => {
        Binding {
            modifiers: $m,
            key: $k,
        }
    };
}

const NONE: Modifiers = Modifiers::NONE;
const CMD: Modifiers = Modifiers::COMMAND;
const CMD_SHIFT: Modifiers = Modifiers {
    shift: true,
    ..Modifiers::COMMAND
};

impl Action {
    /// Every action, in the order of the hotkey sheet.
    pub const ALL: [Action; 28] = [
        Action::Open,
        Action::SaveProject,
        Action::ExportImage,
        Action::Undo,
        Action::Redo,
        Action::Generate,
        Action::Cancel,
        Action::Accept,
        Action::PreviousCandidate,
        Action::NextCandidate,
        Action::ShowOriginal,
        Action::InvertMask,
        Action::ClearMask,
        Action::ReuseMask,
        Action::ZoomFit,
        Action::Zoom100,
        Action::Zoom200,
        Action::Zoom400,
        Action::Zoom800,
        Action::ToolBrush,
        Action::ToolEraser,
        Action::ToolRectangle,
        Action::ToolLasso,
        Action::ToolFill,
        Action::ToolSelect,
        Action::BrushSmaller,
        Action::BrushLarger,
        Action::Help,
    ];

    /// Name in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::SaveProject => "save_project",
            Action::ExportImage => "export_image",
            Action::Undo => "undo",
            Action::Redo => "redo",
            Action::Generate => "generate",
            Action::Cancel => "cancel",
            Action::Accept => "accept",
            Action::PreviousCandidate => "previous_candidate",
            Action::NextCandidate => "next_candidate",
            Action::ShowOriginal => "show_original",
            Action::InvertMask => "invert_mask",
            Action::ClearMask => "clear_mask",
            Action::ReuseMask => "reuse_mask",
            Action::ZoomFit => "zoom_fit",
            Action::Zoom100 => "zoom_100",
            Action::Zoom200 => "zoom_200",
            Action::Zoom400 => "zoom_400",
            Action::Zoom800 => "zoom_800",
            Action::ToolBrush => "tool_brush",
            Action::ToolEraser => "tool_eraser",
            Action::ToolRectangle => "tool_rectangle",
            Action::ToolLasso => "tool_lasso",
            Action::ToolFill => "tool_fill",
            Action::ToolSelect => "tool_select",
            Action::BrushSmaller => "brush_smaller",
            Action::BrushLarger => "brush_larger",
            Action::Help => "help",
        }
    }

    /// The action named `name` in `config.json`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// What the hotkey sheet says it does.
    pub fn label(self) -> &'static str {
        match self {
            Action::Open => "open an image or project",
            Action::SaveProject => "save the project",
            Action::ExportImage => "export the image (PNG with parameters, JPEG, WebP)",
            Action::Undo => "undo (strokes, mask operations, accepted results)",
            Action::Redo => "redo",
            Action::Generate => "generate",
            Action::Cancel => "cancel the running job / discard the results",
            Action::Accept => "accept the selected candidate",
            Action::PreviousCandidate => "previous candidate",
            Action::NextCandidate => "next candidate",
            Action::ShowOriginal => "show the original image (hold)",
            Action::InvertMask => "invert the mask",
            Action::ClearMask => "clear the mask",
            Action::ReuseMask => "reuse the last generation's mask",
            Action::ZoomFit => "zoom to fit",
            Action::Zoom100 => "zoom to 100 %",
            Action::Zoom200 => "zoom to 200 %",
            Action::Zoom400 => "zoom to 400 %",
            Action::Zoom800 => "zoom to 800 %",
            Action::ToolBrush => "brush tool",
            Action::ToolEraser => "eraser tool",
            Action::ToolRectangle => "rectangle tool",
            Action::ToolLasso => "lasso tool",
            Action::ToolFill => "fill tool",
            Action::ToolSelect => "select object tool",
            Action::BrushSmaller => "smaller brush",
            Action::BrushLarger => "larger brush",
            Action::Help => "this sheet",
        }
    }

    /// The bindings it has out of the box.
    pub fn defaults(self) -> &'static [Binding] {
        match self {
            Action::Open => &[b!(CMD, Key::O)],
            Action::SaveProject => &[b!(CMD, Key::S)],
            Action::ExportImage => &[b!(CMD_SHIFT, Key::S)],
            Action::Undo => &[b!(CMD, Key::Z)],
            Action::Redo => &[b!(CMD_SHIFT, Key::Z), b!(CMD, Key::Y)],
            Action::Generate => &[b!(CMD, Key::Enter)],
            Action::Cancel => &[b!(NONE, Key::Escape)],
            Action::Accept => &[b!(NONE, Key::Enter)],
            Action::PreviousCandidate => &[b!(NONE, Key::ArrowLeft)],
            Action::NextCandidate => &[b!(NONE, Key::ArrowRight)],
            Action::ShowOriginal => &[b!(NONE, Key::Tab)],
            Action::InvertMask => &[b!(CMD, Key::I)],
            Action::ClearMask => &[b!(CMD, Key::D)],
            Action::ReuseMask => &[b!(CMD, Key::M)],
            Action::ZoomFit => &[b!(CMD, Key::Num0)],
            Action::Zoom100 => &[b!(CMD, Key::Num1)],
            Action::Zoom200 => &[b!(CMD, Key::Num2)],
            Action::Zoom400 => &[b!(CMD, Key::Num3)],
            Action::Zoom800 => &[b!(CMD, Key::Num4)],
            Action::ToolBrush => &[b!(NONE, Key::B)],
            Action::ToolEraser => &[b!(NONE, Key::E)],
            Action::ToolRectangle => &[b!(NONE, Key::U)],
            Action::ToolLasso => &[b!(NONE, Key::L)],
            Action::ToolFill => &[b!(NONE, Key::F)],
            Action::ToolSelect => &[b!(NONE, Key::S)],
            Action::BrushSmaller => &[b!(NONE, Key::OpenBracket)],
            Action::BrushLarger => &[b!(NONE, Key::CloseBracket)],
            Action::Help => &[b!(NONE, Key::F1), b!(NONE, Key::Questionmark)],
        }
    }

    /// The zoom preset it sets (1 = 100 %); not for [`Action::ZoomFit`].
    pub fn zoom_level(self) -> Option<f32> {
        match self {
            Action::Zoom100 => Some(1.0),
            Action::Zoom200 => Some(2.0),
            Action::Zoom400 => Some(4.0),
            Action::Zoom800 => Some(8.0),
            _ => None,
        }
    }

    /// Whether it is a zoom key (fit or a preset).
    pub fn is_zoom(self) -> bool {
        self == Action::ZoomFit || self.zoom_level().is_some()
    }
}
