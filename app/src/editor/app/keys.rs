//! The keyboard and the one place commands are carried out: this frame's shortcuts (as bound in
//! the config's keymap), what each [`Action`] does, and [`EditorApp::apply`] for the
//! [`Command`]s panels send.

use super::EditorApp;
use crate::editor::command::Command;
use crate::editor::files::Purpose;
use crate::editor::keymap::Action;
use crate::editor::mask_ops::GlobalOp;
use crate::editor::panels::help_capture;
use crate::editor::tools::Tool;

impl EditorApp {
    /// Carries out a command from a panel, a menu or a test.
    pub fn apply(&mut self, c: Command) {
        match c {
            Command::Run(a) => self.run(a),
            Command::Ask(purpose) => self.ask(purpose),
            Command::Act(purpose, path) => self.act(purpose, path),
            Command::OpenPath(path) => self.open_path(&path),
            Command::Restore(path) => self.restore(path),
            Command::DiscardRecovery(path) => {
                std::fs::remove_file(path).ok();
            }
            Command::CancelAll => self.cancel_all(),
            Command::ClearQueue => self.jobs.queue.clear(),
            Command::RemoveQueued(i) => self.remove_queued(i),
            Command::Accept(i) => self.accept(i),
            Command::Discard => self.discard(),
            Command::RunAgain(i) => self.run_again(i),
            Command::SelectCandidate(i) => self.select_candidate(i),
            Command::ViewLevel(v) => self.view_level(v),
            Command::RepaintUnsure(i, t) => self.repaint_unsure(i, t),
            Command::MaskOp(op) => self.mask_op(op),
            Command::LoadModel(path) => self.load_model(&path),
            Command::ShowModels(open) => {
                self.library.open = open;
                if open {
                    self.library.refresh();
                }
            }
            Command::DownloadModel(name) => {
                let ctx = self.ctx.clone();
                if let Err(e) = self.library.get(&name, move || ctx.request_repaint()) {
                    self.error(e);
                }
            }
            Command::CancelModelTask => self.library.cancel(),
            Command::RemoveModel(name) => {
                self.confirm = Some(crate::editor::state::Confirm::RemoveModel(name))
            }
            Command::RemoveModelConfirmed(name) => match self.library.remove(&name) {
                Ok(freed) => self.info(format!(
                    "removed {name} ({} freed)",
                    tessera_store::download::human_bytes(freed)
                )),
                Err(e) => self.error(e),
            },
            Command::ApplySelection => {
                if let Some(doc) = &mut self.doc {
                    self.select.apply(doc, &mut self.history);
                }
            }
            Command::SaveConfig => self.save_config(),
            Command::DismissErrors => self.messages.retain(|m| !m.error),
            Command::Info(text) => self.info(text),
            Command::Error(text) => self.error(text),
        }
    }

    /// Runs `action` (everything but the tool keys and the hold keys).
    pub fn run(&mut self, action: Action) {
        match action {
            Action::Open => self.ask(Purpose::OpenImage),
            Action::SaveProject => match self.project_path.clone() {
                Some(p) => self.act(Purpose::SaveProject, p),
                None => self.ask(Purpose::SaveProject),
            },
            Action::ExportImage => self.ask(Purpose::SaveImage),
            Action::Undo => self.undo(),
            Action::Redo => self.redo(),
            Action::Generate => self.generate(),
            Action::Cancel => {
                if self.confirm.is_some() {
                    self.confirm = None;
                } else if self.jobs.busy() {
                    self.cancel();
                } else if self.jobs.results.is_some() {
                    self.discard();
                }
            }
            Action::Accept | Action::PreviousCandidate | Action::NextCandidate => {
                let Some(res) = &self.jobs.results else {
                    return;
                };
                let (sel, n) = (res.selected, res.levels.len());
                match action {
                    Action::Accept => self.accept(sel),
                    _ if n == 0 => {}
                    Action::NextCandidate => self.select_candidate((sel + 1) % n),
                    _ => self.select_candidate((sel + n - 1) % n),
                }
            }
            Action::InvertMask => self.mask_op(GlobalOp::Invert),
            Action::ClearMask => self.mask_op(GlobalOp::Clear),
            Action::ReuseMask => self.reuse_last_mask(),
            Action::Help => self.show_help = !self.show_help,
            a if a.is_zoom() => {
                self.canvas.zoom_action(a);
            }
            _ => {}
        }
    }
}

/// Applies this frame's keyboard shortcuts, as bound in the config's keymap (and hands the
/// keys to the hotkey sheet while it waits for a new combination).
pub(crate) fn shortcuts(app: &mut EditorApp, ctx: &egui::Context) {
    for p in app.config.hotkeys.take_problems() {
        app.error(p);
    }
    app.canvas.set_keymap(&app.config.hotkeys);
    if app.with_panels(|p| help_capture(p, ctx)) {
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
        app.run(action);
    }
    if typing {
        return;
    }
    app.canvas_settings.show_original =
        ctx.input(|i| app.config.hotkeys.held(i, Action::ShowOriginal));
    app.tools.handle_keys(ctx, &app.config.hotkeys);
}
