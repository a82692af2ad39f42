//! The editor window: owns the document, the engine, the history and the panels, and wires
//! them together once per frame. Nothing here waits on the engine or on the disk: jobs, file
//! dialogs, loads, saves and autosaves run on other threads and report back over channels.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, RgbaImage};
use tessera_engine::inpaint::plan_window;
use tessera_engine::worker::{Engine, Event};

use super::canvas::{Canvas, CanvasSettings};
use super::document::{Document, TokenGrid};
use super::files::{self, DialogRunner, Dialogs, RfdDialogs};
use super::history::{Change, History};
use super::jobs::{Jobs, Outcome};
use super::library::{Library, LibraryOptions};
use super::mask_ops::{self, GlobalOp};
use super::panels::{self, Panels};
use super::project::{self, Autosave, GenRecord, Project};
use super::segment::{self, SelectState};
use super::settings::{Config, GenSettings};
pub use super::state::{Confirm, Message, ModelState};
use super::tools::ToolState;

mod commands;
mod documents;
mod keys;
pub(crate) mod select;

/// How the editor starts.
pub struct EditorOptions {
    /// Image or project to open.
    pub image: Option<PathBuf>,
    /// Model folder or manifest to load (default: `assets/model` when present).
    pub model: Option<PathBuf>,
    /// File dialogs (tests pass a fake).
    pub dialogs: Arc<dyn Dialogs>,
    /// Folder of `config.json` (`None`: nothing is remembered).
    pub config_dir: Option<PathBuf>,
    /// Folder of the autosave recovery project (`None`: no autosave).
    pub data_dir: Option<PathBuf>,
    /// Autosave period (`TESSERA_AUTOSAVE_SECS`, default 5 s).
    pub autosave_every: Duration,
    /// Per-frame CPU time log (`TESSERA_FRAME_LOG`).
    pub frame_log: Option<PathBuf>,
    /// The models folder and catalogue of the Models window.
    pub library: LibraryOptions,
}

impl Default for EditorOptions {
    /// The real thing: native dialogs, the user's folders, the default model, 5 s autosave.
    fn default() -> Self {
        Self {
            image: None,
            model: default_model(),
            dialogs: Arc::new(RfdDialogs),
            config_dir: files::config_dir(),
            data_dir: files::data_dir(),
            autosave_every: std::env::var("TESSERA_AUTOSAVE_SECS")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(Duration::from_secs(5), Duration::from_secs_f64),
            frame_log: std::env::var_os("TESSERA_FRAME_LOG").map(PathBuf::from),
            library: LibraryOptions::default(),
        }
    }
}

/// `assets/model` (beside the working directory or the build tree) when installed.
pub fn default_model() -> Option<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    [
        Some(PathBuf::from("assets/model")),
        exe_dir.map(|d| d.join("../../assets/model")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("model.json").is_file())
}

/// Work done on helper threads.
pub(crate) enum Done {
    Image(PathBuf, Result<RgbaImage, String>),
    Project(PathBuf, Result<Box<Project>, String>, bool),
    Mask(PathBuf, Result<GrayImage, String>),
    Saved(String, PathBuf, Result<(), String>, Option<u64>),
    Imported(PathBuf, Result<(), String>),
    Grid(u64, Option<TokenGrid>),
}

/// The editor application.
pub struct EditorApp {
    /// The open document.
    pub doc: Option<Document>,
    /// Undo/redo.
    pub history: History,
    /// Mask tools.
    pub tools: ToolState,
    /// The Select object tool (SAM worker, points, preview).
    pub select: SelectState,
    /// The canvas widget.
    pub canvas: Canvas,
    /// Canvas display settings.
    pub canvas_settings: CanvasSettings,
    /// The model.
    pub model: ModelState,
    /// Generation settings.
    pub settings: GenSettings,
    /// Job and results.
    pub jobs: Jobs,
    /// Accepted generations, oldest first.
    pub generations: Vec<GenRecord>,
    /// Messages, newest last.
    pub messages: Vec<Message>,
    /// Waiting question.
    pub confirm: Option<Confirm>,
    /// Whether the hotkey sheet is open.
    pub show_help: bool,
    /// Persistent preferences.
    pub config: Config,
    /// The models folder and the Models window.
    pub library: Library,
    /// Where the image came from.
    pub source: Option<PathBuf>,
    /// Where the project was last saved.
    pub project_path: Option<PathBuf>,
    /// Document revision at the last explicit save.
    pub saved_rev: Option<u64>,
    pub(crate) engine: Engine,
    pub(crate) dialogs: DialogRunner,
    pub(crate) autosave: Option<Autosave>,
    pub(crate) ctx: egui::Context,
    pub(crate) class_filter: String,
    pub(crate) prompt_check: Option<(String, tessera_engine::text::Encoded)>,
    /// The same for the negative prompt.
    pub(crate) negative_check: Option<(String, tessera_engine::text::Encoded)>,
    pub(crate) thumbs: super::panels::Thumbs,
    pub(crate) config_dir: Option<PathBuf>,
    pub(crate) done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    pub(crate) grid_rev: Option<(u64, String)>,
    pub(crate) grid_busy: bool,
    /// Helper-thread tasks whose result has not been handled yet.
    pending_tasks: std::sync::atomic::AtomicUsize,
    hover: Option<(u32, u32)>,
    zoom: f32,
    frame_log: Option<(std::io::BufWriter<std::fs::File>, u64)>,
    last_cpu: Option<f32>,
}

impl EditorApp {
    /// Creates the app inside eframe.
    pub fn new(cc: &eframe::CreationContext<'_>, opts: EditorOptions) -> Self {
        Self::with_context(
            cc.egui_ctx.clone(),
            Canvas::new(cc.wgpu_render_state.as_ref()),
            opts,
        )
    }

    /// Creates the app for a context and canvas (tests, other hosts).
    pub fn with_context(ctx: egui::Context, canvas: Canvas, opts: EditorOptions) -> Self {
        let waker = ctx.clone();
        let engine = Engine::spawn(move || waker.request_repaint());
        let config = opts
            .config_dir
            .as_deref()
            .map(Config::load)
            .unwrap_or_default();
        let (done_tx, done_rx) = unbounded();
        let frame_log = opts.frame_log.as_ref().and_then(|p| {
            std::fs::File::create(p)
                .ok()
                .map(|f| (std::io::BufWriter::new(f), 0))
        });
        let recovery = opts.data_dir.as_deref().and_then(project::find_recovery);
        if let Some(r) = &recovery {
            eprintln!(
                "tessera: found the unsaved work of a session that did not close cleanly ({}); \
                 Restore (Enter) or Discard",
                r.display()
            );
        }
        let select = SelectState::new(ctx.clone(), segment::default_weights());
        let mut app = Self {
            doc: None,
            history: History::default(),
            tools: ToolState::new(),
            select,
            canvas,
            canvas_settings: CanvasSettings {
                mask_colour: egui::Color32::from_rgb(
                    config.mask_colour[0],
                    config.mask_colour[1],
                    config.mask_colour[2],
                ),
                mask_opacity: config.mask_opacity,
                show_token_grid: false,
                show_original: false,
                ..CanvasSettings::default()
            },
            model: ModelState::default(),
            settings: GenSettings::default(),
            jobs: Jobs::default(),
            generations: Vec::new(),
            messages: Vec::new(),
            confirm: recovery.map(Confirm::Restore),
            show_help: false,
            library: Library::new(&opts.library),
            config,
            source: None,
            project_path: None,
            saved_rev: None,
            engine,
            dialogs: DialogRunner::new(opts.dialogs),
            autosave: opts
                .data_dir
                .as_deref()
                .map(|d| Autosave::new(d, opts.autosave_every)),
            ctx,
            class_filter: String::new(),
            prompt_check: None,
            negative_check: None,
            thumbs: Default::default(),
            config_dir: opts.config_dir,
            done_tx,
            done_rx,
            grid_rev: None,
            grid_busy: false,
            pending_tasks: Default::default(),
            hover: None,
            zoom: 1.0,
            frame_log,
            last_cpu: None,
        };
        if let Some(m) = opts.model {
            app.load_model(&m);
        }
        if let Some(p) = opts.image {
            app.open_path(&p);
        }
        app
    }

    // ----- messages -----

    /// Shows an error (stays until dismissed).
    pub fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("tessera: error: {text}");
        self.messages.push(Message { text, error: true });
    }

    /// Shows a status message.
    pub fn info(&mut self, text: impl Into<String>) {
        let text = text.into();
        // Also on stderr: a log for bug reports when the editor was started from a terminal.
        eprintln!("tessera: {text}");
        self.messages.push(Message { text, error: false });
        if self.messages.len() > 50 {
            self.messages.remove(0);
        }
    }

    /// Errors not yet dismissed.
    pub fn errors(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.error)
            .map(|m| m.text.clone())
            .collect()
    }

    pub(crate) fn spawn(&self, name: &str, work: impl FnOnce() -> Done + Send + 'static) {
        // Counted until `poll` handles the result (sent below, or by the failure path).
        self.pending_tasks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.done_tx.clone();
        let ctx = self.ctx.clone();
        let ok = std::thread::Builder::new()
            .name(format!("tessera-{name}"))
            .spawn(move || {
                tx.send(work()).ok();
                ctx.request_repaint();
            })
            .is_ok();
        if !ok {
            self.done_tx
                .send(Done::Saved(
                    name.into(),
                    PathBuf::new(),
                    Err("cannot start a thread".into()),
                    None,
                ))
                .ok();
        }
    }

    /// Whether background work (load, save, dialog, autosave) is in flight.
    pub fn background_busy(&self) -> bool {
        self.dialogs.is_open()
            || self.grid_busy
            || self.autosave.as_ref().is_some_and(Autosave::is_writing)
            || self
                .pending_tasks
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
    }

    /// Undoes the last change.
    pub fn undo(&mut self) {
        if let Some(doc) = &mut self.doc
            && let Some(label) = self.history.undo(doc)
        {
            self.info(format!("undid {label}"));
        }
    }

    /// Redoes the last undone change.
    pub fn redo(&mut self) {
        if let Some(doc) = &mut self.doc
            && let Some(label) = self.history.redo(doc)
        {
            self.info(format!("redid {label}"));
        }
    }

    /// Applies a global mask operation (undoable).
    pub fn mask_op(&mut self, op: GlobalOp) {
        if let Some(doc) = &mut self.doc
            && let Some(edit) = mask_ops::apply_global(doc, op)
        {
            self.history.push(Change::Mask(edit));
        }
    }

    // ----- per frame -----

    fn poll(&mut self) {
        for _ in 0..256 {
            let Some(event) = self.engine.try_recv() else {
                break;
            };
            match event {
                Event::ModelLoaded {
                    card,
                    warnings,
                    weights,
                } => self.model_loaded(*card, warnings, weights),
                Event::ModelFailed { error } => {
                    let path = self.model.loading.take();
                    let what = path.map(|p| p.display().to_string()).unwrap_or_default();
                    self.error(format!("cannot load the model {what}: {error}"));
                    self.model.error = Some(error);
                }
                other => {
                    match self.jobs.handle(other, self.doc.as_mut()) {
                        Outcome::None => continue,
                        Outcome::Finished(secs) => {
                            self.info(format!("done in {}", super::jobs::format_secs(secs)))
                        }
                        Outcome::NoOp(reason) => self.info(format!("nothing to do: {reason}")),
                        Outcome::Cancelled => self.info("cancelled"),
                        Outcome::Failed(e) => self.error(format!("the job failed: {e}")),
                    }
                    // A job ended: start the next queued one.
                    self.start_next();
                }
            }
        }
        for (text, error) in self.select.poll(self.doc.as_mut(), &mut self.history) {
            self.messages.push(Message { text, error });
        }
        match self.library.poll() {
            Some(Ok(m)) => self.info(format!("installed {}: use it from Model > Models…", m.name)),
            Some(Err(e)) if e == tessera_engine::Error::Cancelled.to_string() => {
                self.info("download cancelled; it resumes when started again")
            }
            Some(Err(e)) => self.error(format!("installing a model failed: {e}")),
            None => {}
        }
        while let Some((purpose, path)) = self.dialogs.poll() {
            if let Some(path) = path {
                self.dialog_done(purpose, path);
            }
        }
        while let Ok(done) = self.done_rx.try_recv() {
            self.pending_tasks
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.open_done(done);
        }
        if let Some(a) = &mut self.autosave
            && let Some(Err(e)) = a.poll()
        {
            self.info(format!("autosave failed: {e}"));
        }
    }

    /// What the autosave compares: the document's revision, moved also by candidates arriving
    /// or going (the recovery project keeps them too). Equal to the revision without results.
    fn autosave_key(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let doc = self.doc.as_ref()?;
        let results = self.jobs.results.as_ref().map_or(0, |r| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let ready = r.finals.iter().filter(|f| f.is_some()).count();
            (r.job.0, r.selected, ready).hash(&mut h);
            h.finish() | 1
        });
        Some(doc.revision.wrapping_add(results))
    }

    fn tick_autosave(&mut self, pointer_down: bool) {
        let (Some(rev), Some(a)) = (self.autosave_key(), &self.autosave) else {
            return;
        };
        if pointer_down || !a.due(rev) || matches!(self.confirm, Some(Confirm::Restore(_))) {
            return;
        }
        if let Some(p) = self.project(true) {
            let ctx = self.ctx.clone();
            if let Some(a) = &mut self.autosave {
                a.start(rev, p, move || ctx.request_repaint());
            }
        }
    }

    /// Recomputes the token grid on a helper thread when the mask or settings changed.
    fn tick_grid(&mut self, pointer_down: bool) {
        let (Some(doc), Some(card)) = (&self.doc, &self.model.card) else {
            return;
        };
        let key = format!("{:?}{}", self.settings.window_options(), card.grid_side());
        if self.grid_busy
            || pointer_down
            || self
                .grid_rev
                .as_ref()
                .is_some_and(|(r, k)| *r == doc.revision && *k == key)
        {
            return;
        }
        let rev = doc.revision;
        self.grid_rev = Some((rev, key));
        self.grid_busy = true;
        let mask = doc.mask.clone();
        let opts = self.settings.window_options();
        let grid = card.grid_side();
        self.spawn("grid", move || {
            let (w, h) = mask.dimensions();
            let g = plan_window(w, h, &mask, &opts).ok().flatten().map(|win| {
                let touched =
                    tessera_engine::inpaint::token_mask(&mask, &win, grid, opts.token_threshold);
                TokenGrid {
                    origin: (win.x as f32, win.y as f32),
                    side: win.size as f32,
                    grid,
                    touched,
                }
            });
            Done::Grid(rev, g)
        });
    }

    fn log_frame(&mut self, ui_secs: f64) {
        let running = self.jobs.busy();
        let size = self.doc.as_ref().map(Document::size).unwrap_or((0, 0));
        let cpu = self.last_cpu;
        if let Some((w, n)) = &mut self.frame_log {
            *n += 1;
            writeln!(
                w,
                "{n}\t{:.3}\t{}\t{}\t{}x{}",
                ui_secs * 1e3,
                cpu.map(|c| format!("{:.3}", c * 1e3)).unwrap_or("-".into()),
                u8::from(running),
                size.0,
                size.1
            )
            .ok();
            if n.is_multiple_of(30) {
                w.flush().ok();
            }
        }
    }

    /// Runs `f` on the panels' view of the editor, then carries out the commands it sent.
    pub(crate) fn with_panels<R>(&mut self, f: impl FnOnce(&mut Panels) -> R) -> R {
        let preflight = self.preflight();
        let mut p = Panels {
            doc: self.doc.as_ref(),
            history: &self.history,
            model: &mut self.model,
            jobs: &self.jobs,
            generations: &self.generations,
            messages: &self.messages,
            settings: &mut self.settings,
            canvas_settings: &mut self.canvas_settings,
            config: &mut self.config,
            tools: &mut self.tools,
            select: &mut self.select,
            confirm: &mut self.confirm,
            show_help: &mut self.show_help,
            preflight,
            thumbs: &mut self.thumbs,
            class_filter: &mut self.class_filter,
            prompt_check: &mut self.prompt_check,
            negative_check: &mut self.negative_check,
            library: &mut self.library,
            out: Vec::new(),
        };
        let r = f(&mut p);
        let commands = std::mem::take(&mut p.out);
        for c in commands {
            self.apply(c);
        }
        r
    }

    /// One frame of the whole UI (also what tests drive).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.poll();
        self.input_files(&ctx);
        select::keys(self, &ctx);
        keys::shortcuts(self, &ctx);
        self.with_panels(|p| panels::menu_bar(p, ui));
        let (hover, zoom) = (self.hover, self.zoom);
        self.with_panels(|p| panels::status_bar(p, ui, hover, zoom));
        self.with_panels(|p| panels::left_panel(p, ui));
        self.with_panels(|p| panels::right_panel(p, ui));
        egui::CentralPanel::default().show(ui, |ui| match &mut self.doc {
            Some(doc) => {
                let out = self
                    .canvas
                    .ui(ui, doc, &mut self.tools, &self.canvas_settings);
                self.hover = out.hover_px;
                self.zoom = out.zoom;
                for e in out.edits {
                    self.history.push(Change::Mask(e));
                }
                segment::canvas_ui(&mut self.select, ui, &self.canvas, doc, &self.tools);
            }
            None => self.with_panels(|p| panels::welcome(p, ui)),
        });
        self.with_panels(|p| panels::windows(p, &ctx));
        let pointer_down = ctx.input(|i| i.pointer.any_down());
        self.tick_grid(pointer_down);
        self.tick_autosave(pointer_down);
        if self.jobs.busy() || self.background_busy() || self.select.busy() || self.library.busy() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
        let title = format!(
            "Tessera{}{}",
            self.source
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| format!(" — {}", n.to_string_lossy()))
                .unwrap_or_default(),
            if self.unsaved() { " *" } else { "" }
        );
        ctx.send_viewport_cmd(egui::ViewportCommand::Title(title));
    }

    /// Whether the document changed since the last autosave (false without autosave).
    pub fn unsaved_since_autosave(&self) -> bool {
        match (self.autosave_key(), &self.autosave) {
            (Some(key), Some(a)) => a.saved_rev() != Some(key),
            _ => false,
        }
    }

    /// Whether the document changed since it was last saved.
    pub fn unsaved(&self) -> bool {
        self.doc
            .as_ref()
            .is_some_and(|d| self.saved_rev != Some(d.revision))
    }
}

impl eframe::App for EditorApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.last_cpu = frame.info().cpu_usage;
        let start = Instant::now();
        self.frame(ui);
        if self.frame_log.is_some() {
            self.log_frame(start.elapsed().as_secs_f64());
        }
    }

    fn on_exit(&mut self) {
        self.jobs.cancel();
        if let Some((w, _)) = &mut self.frame_log {
            w.flush().ok();
        }
        // Keep the recovery file only when there is unsaved work in it.
        if let Some(a) = &self.autosave
            && !self.unsaved()
            && !a.is_writing()
        {
            a.discard();
        }
    }
}

/// Opens the editor window and runs until it closes.
pub fn run(opts: EditorOptions) -> Result<(), String> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Tessera")
            .with_inner_size([1280.0, 820.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Tessera",
        native,
        Box::new(|cc| Ok(Box::new(EditorApp::new(cc, opts)))),
    )
    .map_err(|e| e.to_string())
}
