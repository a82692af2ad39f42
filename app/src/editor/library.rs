//! The Models window's state: the models folder, the catalogue of official releases, and at
//! most one download or import at a time on its own thread (the UI polls its events; it never
//! waits on the network or the disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, unbounded};
use tessera_store::{
    Catalogue, DownloadEvent, DownloadOptions, InstallEvent, InstallOptions, Installed,
    ModelsFolder, get, import_files,
};

/// Where the library looks (the editor's options; tests pass their own).
#[derive(Debug, Clone, Default)]
pub struct LibraryOptions {
    /// The models folder (`None`: `TESSERA_MODELS` or the platform's data folder).
    pub folder: Option<PathBuf>,
    /// A catalogue file adding releases (`None`: `TESSERA_CATALOGUE`).
    pub catalogue: Option<PathBuf>,
}

/// A download or import under way.
pub struct Task {
    /// The release or file it installs.
    pub name: String,
    /// Bytes so far and in all (downloads).
    pub done: u64,
    /// Size of the download, when known.
    pub total: Option<u64>,
    /// Speed (bytes per second).
    pub speed: f64,
    /// The current step, in words.
    pub step: String,
    started: Instant,
    cancel: Arc<AtomicBool>,
    rx: Receiver<TaskMsg>,
}

impl Task {
    /// Seconds left at the current speed, when the size is known.
    pub fn eta_s(&self) -> Option<f64> {
        let t = self.total?;
        (self.speed > 0.0).then(|| t.saturating_sub(self.done) as f64 / self.speed)
    }

    /// Seconds since it started.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

enum TaskMsg {
    Event(InstallEvent),
    Finished(Box<Result<Installed, String>>),
}

/// The models folder as the editor sees it.
pub struct Library {
    /// Whether the window is open.
    pub open: bool,
    /// The folder, or why there is none.
    pub folder: Result<ModelsFolder, String>,
    /// The releases, or why the catalogue file is unreadable (the built-in ones then).
    pub catalogue: Catalogue,
    /// A problem with the catalogue file.
    pub catalogue_error: Option<String>,
    /// Installed models, as last read.
    pub installed: Vec<Installed>,
    /// The running download or import.
    pub task: Option<Task>,
    /// Storage type for installs (`f16`, `f32`, `q8_0`, `q4k`).
    pub dtype: String,
    /// Keep downloaded zips.
    pub keep_zip: bool,
    /// How the last task ended (text, is an error).
    pub last: Option<(String, bool)>,
}

impl Library {
    /// Reads the folder and the catalogue.
    pub fn new(opts: &LibraryOptions) -> Self {
        let folder = match &opts.folder {
            Some(p) => Ok(ModelsFolder::at(p)),
            None => ModelsFolder::standard().map_err(|e| e.to_string()),
        };
        let (catalogue, catalogue_error) = match Catalogue::load(opts.catalogue.as_deref()) {
            Ok(c) => (c, None),
            Err(e) => (Catalogue::builtin(), Some(e.to_string())),
        };
        let mut lib = Self {
            open: false,
            folder,
            catalogue,
            catalogue_error,
            installed: Vec::new(),
            task: None,
            dtype: "f16".into(),
            keep_zip: false,
            last: None,
        };
        lib.refresh();
        lib
    }

    /// Reads the installed models again.
    pub fn refresh(&mut self) {
        if let Ok(f) = &self.folder {
            match f.installed() {
                Ok(list) => self.installed = list,
                Err(e) => self.last = Some((e.to_string(), true)),
            }
        }
    }

    /// Whether a download or import runs.
    pub fn busy(&self) -> bool {
        self.task.is_some()
    }

    fn options(&self) -> Result<InstallOptions, String> {
        let (dtype, quantize) =
            tessera_store::install::weight_format(&self.dtype).map_err(|e| e.to_string())?;
        Ok(InstallOptions {
            dtype,
            quantize,
            keep_zip: self.keep_zip,
            download: DownloadOptions::default(),
            ..InstallOptions::default()
        })
    }

    fn start(
        &mut self,
        name: String,
        wake: impl Fn() + Send + 'static,
        work: impl FnOnce(
            &ModelsFolder,
            &InstallOptions,
            &mut dyn FnMut(&InstallEvent),
        ) -> Result<Installed, String>
        + Send
        + 'static,
    ) -> Result<(), String> {
        if self.task.is_some() {
            return Err("a download or import is already running".into());
        }
        let folder = self.folder.clone()?;
        let mut opts = self.options()?;
        let cancel = Arc::new(AtomicBool::new(false));
        opts.download.cancel = cancel.clone();
        let (tx, rx) = unbounded();
        std::thread::Builder::new()
            .name("tessera-models".into())
            .spawn(move || {
                let events = tx.clone();
                let mut last = Instant::now();
                let r = work(&folder, &opts, &mut |e| {
                    // Progress at most ten times a second; every other event as it comes.
                    let progress =
                        matches!(e, InstallEvent::Download(DownloadEvent::Progress { .. }));
                    if !progress || last.elapsed().as_millis() >= 100 {
                        last = Instant::now();
                        let _ = events.send(TaskMsg::Event(e.clone()));
                        wake();
                    }
                });
                let _ = tx.send(TaskMsg::Finished(Box::new(r)));
                wake();
            })
            .map_err(|e| format!("cannot start the download thread: {e}"))?;
        self.task = Some(Task {
            name,
            done: 0,
            total: None,
            speed: 0.0,
            step: "connecting".into(),
            started: Instant::now(),
            cancel,
            rx,
        });
        self.last = None;
        Ok(())
    }

    /// Downloads and installs the release `name`.
    pub fn get(&mut self, name: &str, wake: impl Fn() + Send + 'static) -> Result<(), String> {
        let release = self
            .catalogue
            .require(name)
            .map_err(|e| e.to_string())?
            .clone();
        self.start(name.to_string(), wake, move |folder, opts, on| {
            get(folder, &release, opts, on).map_err(|e| e.to_string())
        })
    }

    /// Installs a release zip or checkpoint from disk.
    pub fn import(&mut self, file: &Path, wake: impl Fn() + Send + 'static) -> Result<(), String> {
        let catalogue = self.catalogue.clone();
        let files = vec![file.to_path_buf()];
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.start(name, wake, move |folder, opts, on| {
            let mut opts = opts.clone();
            // The user's own file is never touched; keep_zip only concerns downloads.
            opts.keep_zip = true;
            import_files(folder, &catalogue, &files, None, &opts, on).map_err(|e| e.to_string())
        })
    }

    /// Stops the running task (a partial download is kept for a resume).
    pub fn cancel(&mut self) {
        if let Some(t) = &mut self.task {
            t.cancel.store(true, Ordering::Relaxed);
            t.step = "cancelling".into();
        }
    }

    /// Removes an installed model; returns the bytes freed.
    pub fn remove(&mut self, name: &str) -> Result<u64, String> {
        let folder = self.folder.as_ref().map_err(Clone::clone)?;
        let r = folder.remove(name).map_err(|e| e.to_string());
        self.refresh();
        r
    }

    /// Takes the task's events; returns the installed model when one finished.
    pub fn poll(&mut self) -> Option<Result<Installed, String>> {
        let task = self.task.as_mut()?;
        let mut finished = None;
        loop {
            let msg = match task.rx.try_recv() {
                Ok(msg) => msg,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    // The thread ended without a result: it panicked.
                    finished.get_or_insert(Err(
                        "the download thread stopped on an internal error; a partial \
                         download resumes when you download again"
                            .into(),
                    ));
                    break;
                }
            };
            match msg {
                TaskMsg::Event(e) => match e {
                    InstallEvent::Download(DownloadEvent::Connecting { attempt, from }) => {
                        task.step = if from > 0 {
                            format!("resuming at {}", tessera_store::download::human_bytes(from))
                        } else if attempt > 1 {
                            format!("connecting (attempt {attempt})")
                        } else {
                            "connecting".into()
                        };
                        task.done = from;
                    }
                    InstallEvent::Download(DownloadEvent::Progress {
                        done,
                        total,
                        bytes_per_s,
                    }) => {
                        task.step = "downloading".into();
                        task.done = done;
                        task.total = total;
                        task.speed = bytes_per_s;
                    }
                    InstallEvent::Download(DownloadEvent::Retrying { why, wait }) => {
                        task.step = format!("{why}; retrying in {:.0} s", wait.as_secs_f64());
                    }
                    InstallEvent::Verified { sha256, .. } => {
                        task.step =
                            format!("verified (sha256 {}…)", &sha256[..12.min(sha256.len())]);
                    }
                    InstallEvent::Unpacking { index, of, .. } => {
                        task.step = format!("unpacking stage {index} of {of}");
                    }
                    InstallEvent::Importing(step) => task.step = format!("importing {step}"),
                },
                TaskMsg::Finished(r) => finished = Some(*r),
            }
        }
        let r = finished?;
        self.task = None;
        self.last = Some(match &r {
            Ok(m) => (format!("installed {} ({})", m.name, m.card.dtype), false),
            Err(e) if e == &tessera_engine::Error::Cancelled.to_string() => (
                "cancelled; a partial download resumes when you download again".into(),
                false,
            ),
            Err(e) => (e.clone(), true),
        });
        self.refresh();
        Some(r)
    }
}
