//! Project files (`.tessera`: a zip of `image.png`, `mask.png` and `history.json`) and the
//! autosave that keeps a recovery project in the user's data folder, so that a crash loses at
//! most a few seconds of work.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, RgbaImage};
use serde::{Deserialize, Serialize};

use super::files;
use super::saved::{SavedHistory, SavedResults, decode_history, encode_history};
use super::settings::GenSettings;

/// File name of the autosave recovery project inside the data folder.
pub const RECOVERY_FILE: &str = "recovery.tessera";

/// One accepted generation, as the history list shows it and "run again" restores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenRecord {
    /// Model name.
    pub model: String,
    /// The settings of the run (with the seed that was used).
    pub settings: GenSettings,
    /// Class name, for class-conditional models.
    #[serde(default)]
    pub class_name: Option<String>,
    /// Negative class name, for class-conditional models run with guidance ≠ 1 and a
    /// negative class.
    #[serde(default)]
    pub negative_class_name: Option<String>,
    /// Which candidate was accepted.
    pub candidate: usize,
    /// Wall time of the run in seconds.
    pub secs: f64,
}

impl GenRecord {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        let what = match (&self.class_name, self.settings.prompt.trim()) {
            (Some(c), _) => format!("class “{c}”"),
            (None, "") => "unconditional".to_string(),
            (None, p) => format!("“{p}”"),
        };
        let mut extra = String::new();
        if self.settings.guidance_scale != 1.0 {
            extra.push_str(&format!(", guidance {}", self.settings.guidance_scale));
            match (
                &self.negative_class_name,
                self.settings.negative_prompt.trim(),
            ) {
                (Some(c), _) => extra.push_str(&format!(", negative class “{c}”")),
                (None, "") => {}
                (None, p) => extra.push_str(&format!(", negative “{p}”")),
            }
        }
        if let Some(k) = self.settings.strength {
            extra.push_str(&format!(
                ", redo {k} of {} levels",
                self.settings.levels.len()
            ));
        }
        format!(
            "{what}, seed {}, candidate {}{extra}",
            self.settings.seed, self.candidate
        )
    }
}

/// What a project stores besides the pixels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectMeta {
    /// File the image came from.
    pub source: Option<PathBuf>,
    /// Model folder or manifest in use.
    pub model: Option<PathBuf>,
    /// Current generation settings.
    pub settings: GenSettings,
    /// Accepted generations, oldest first.
    pub generations: Vec<GenRecord>,
}

/// A project in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// The image.
    pub image: RgbaImage,
    /// The mask (same size).
    pub mask: GrayImage,
    /// Settings and history.
    pub meta: ProjectMeta,
    /// The mask of the last generation (*Reuse last mask*), stored as `last_mask.png` when
    /// present; projects without it load with `None`.
    pub last_mask: Option<GrayImage>,
    /// Undo and redo stacks (`history.bin`): kept in recovery projects, not in saved ones.
    pub history: Option<SavedHistory>,
    /// Unaccepted candidates of the last generation (`candidates.json` and
    /// `candidate-N.png`): kept in recovery projects, not in saved ones.
    pub results: Option<SavedResults>,
}

/// `candidates.json`: what the candidate images of a recovery project are.
#[derive(Debug, Serialize, Deserialize)]
struct CandidatesMeta {
    record: GenRecord,
    selected: usize,
    sample: bool,
    /// Per candidate, whether `candidate-N.png` holds its final image.
    finished: Vec<bool>,
    /// Whether `candidate-source.png` holds the image the job started from.
    source: bool,
}

/// Encodes a project as zip bytes (stored entries; the PNGs are compressed already).
pub fn encode_project(p: &Project) -> Result<Vec<u8>, String> {
    let image = files::encode_png(
        p.image.width(),
        p.image.height(),
        png::ColorType::Rgba,
        p.image.as_raw(),
        &[],
    )?;
    let mask = files::encode_png(
        p.mask.width(),
        p.mask.height(),
        png::ColorType::Grayscale,
        p.mask.as_raw(),
        &[],
    )?;
    let history = serde_json::to_vec_pretty(&p.meta).map_err(|e| e.to_string())?;
    let last_mask = match &p.last_mask {
        Some(m) => Some(files::encode_png(
            m.width(),
            m.height(),
            png::ColorType::Grayscale,
            m.as_raw(),
            &[],
        )?),
        None => None,
    };
    let rgb_png = |img: &image::RgbImage| {
        files::encode_png(
            img.width(),
            img.height(),
            png::ColorType::Rgb,
            img.as_raw(),
            &[],
        )
    };
    let mut extra: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(h) = &p.history {
        extra.push(("history.bin".into(), encode_history(h)));
    }
    if let Some(r) = &p.results {
        let meta = CandidatesMeta {
            record: r.record.clone(),
            selected: r.selected,
            sample: r.sample,
            finished: r.finals.iter().map(Option::is_some).collect(),
            source: r.source.is_some(),
        };
        extra.push((
            "candidates.json".into(),
            serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?,
        ));
        for (i, f) in r.finals.iter().enumerate() {
            if let Some(img) = f {
                extra.push((format!("candidate-{i}.png"), rgb_png(img)?));
            }
        }
        if let Some(src) = &r.source {
            extra.push(("candidate-source.png".into(), rgb_png(src)?));
        }
    }
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let entries = [
        ("image.png", Some(&image)),
        ("mask.png", Some(&mask)),
        ("history.json", Some(&history)),
        ("last_mask.png", last_mask.as_ref()),
    ];
    let entries = entries
        .into_iter()
        .filter_map(|(n, b)| Some((n, b?)))
        .chain(extra.iter().map(|(n, b)| (n.as_str(), b)));
    for (name, bytes) in entries {
        // The undo history is raw pixels: worth compressing, unlike the PNGs.
        let opts = if name == "history.bin" {
            opts.compression_method(zip::CompressionMethod::Deflated)
                .compression_level(Some(1))
        } else {
            opts
        };
        zip.start_file(name, opts).map_err(|e| e.to_string())?;
        zip.write_all(bytes).map_err(|e| e.to_string())?;
    }
    Ok(zip.finish().map_err(|e| e.to_string())?.into_inner())
}

/// Decodes project zip bytes.
pub fn decode_project(bytes: &[u8]) -> Result<Project, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a Tessera project: {e}"))?;
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        let mut f = zip
            .by_name(name)
            .map_err(|_| format!("the project has no {name}"))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        Ok(out)
    };
    let image = files::decode_image(&read("image.png")?)?;
    let mask_rgba = files::decode_image(&read("mask.png")?)?;
    let meta: ProjectMeta =
        serde_json::from_slice(&read("history.json")?).map_err(|e| format!("history.json: {e}"))?;
    if mask_rgba.dimensions() != image.dimensions() {
        return Err("the project's mask and image sizes differ".into());
    }
    let gray = |m: &RgbaImage| {
        GrayImage::from_fn(m.width(), m.height(), |x, y| {
            image::Luma([m.get_pixel(x, y).0[0]])
        })
    };
    let mask = gray(&mask_rgba);
    // Optional (older projects have none); one that does not fit the image is dropped.
    let last_mask = read("last_mask.png")
        .ok()
        .and_then(|b| files::decode_image(&b).ok())
        .filter(|m| m.dimensions() == image.dimensions())
        .map(|m| gray(&m));
    let size = image.dimensions();
    let history = match read("history.bin") {
        Ok(b) => Some(decode_history(&b, size)?),
        Err(_) => None,
    };
    let results = match read("candidates.json") {
        Ok(b) => {
            let m: CandidatesMeta =
                serde_json::from_slice(&b).map_err(|e| format!("candidates.json: {e}"))?;
            if m.finished.len() > 64 || m.selected >= m.finished.len().max(1) {
                return Err("candidates.json: candidate count or selection out of range".into());
            }
            let mut rgb = |name: &str| -> Result<image::RgbImage, String> {
                let img = files::decode_image(&read(name)?).map_err(|e| format!("{name}: {e}"))?;
                if img.dimensions() != size {
                    return Err(format!("{name}: not the image's size"));
                }
                Ok(image::DynamicImage::ImageRgba8(img).to_rgb8())
            };
            let finals = m
                .finished
                .iter()
                .enumerate()
                .map(|(i, &done)| done.then(|| rgb(&format!("candidate-{i}.png"))).transpose())
                .collect::<Result<Vec<_>, String>>()?;
            let source = m.source.then(|| rgb("candidate-source.png")).transpose()?;
            Some(SavedResults {
                record: m.record,
                selected: m.selected,
                sample: m.sample,
                finals,
                source,
            })
        }
        Err(_) => None,
    };
    Ok(Project {
        image,
        mask,
        meta,
        last_mask,
        history,
        results,
    })
}

/// Saves a project atomically.
pub fn save_project(path: &Path, p: &Project) -> Result<(), String> {
    files::write_atomic(path, &encode_project(p)?)
}

/// Loads a project file.
pub fn load_project(path: &Path) -> Result<Project, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode_project(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether a path names a project file.
pub fn is_project(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tessera"))
}

/// Writes a recovery project every `interval` when the document changed, on a helper thread.
pub struct Autosave {
    path: PathBuf,
    interval: Duration,
    last_saved_rev: Option<u64>,
    last_try: Instant,
    writing: bool,
    tx: Sender<Result<u64, String>>,
    rx: Receiver<Result<u64, String>>,
}

impl Autosave {
    /// Autosave into `dir/recovery.tessera`.
    pub fn new(dir: &Path, interval: Duration) -> Self {
        let (tx, rx) = unbounded();
        Self {
            path: dir.join(RECOVERY_FILE),
            interval,
            last_saved_rev: None,
            last_try: Instant::now(),
            writing: false,
            tx,
            rx,
        }
    }

    /// The recovery file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks revision `rev` as saved (a project was just opened or saved explicitly).
    pub fn mark_saved(&mut self, rev: u64) {
        self.last_saved_rev = Some(rev);
    }

    /// Whether the document at `rev` should be written now.
    pub fn due(&self, rev: u64) -> bool {
        !self.writing
            && self.last_saved_rev != Some(rev)
            && self.last_try.elapsed() >= self.interval
    }

    /// Starts writing `project` (taken at revision `rev`) on a helper thread.
    pub fn start(&mut self, rev: u64, project: Project, wake: impl Fn() + Send + 'static) {
        self.writing = true;
        self.last_try = Instant::now();
        let tx = self.tx.clone();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("tessera-autosave".into())
            .spawn(move || {
                tx.send(save_project(&path, &project).map(|()| rev)).ok();
                wake();
            });
        if spawned.is_err() {
            self.writing = false;
        }
    }

    /// A finished write: `Some(Ok(rev))` or the error.
    pub fn poll(&mut self) -> Option<Result<u64, String>> {
        let r = self.rx.try_recv().ok()?;
        self.writing = false;
        if let Ok(rev) = &r {
            self.last_saved_rev = Some(*rev);
        }
        Some(r)
    }

    /// The revision last written (or marked saved).
    pub fn saved_rev(&self) -> Option<u64> {
        self.last_saved_rev
    }

    /// Whether a write is in progress.
    pub fn is_writing(&self) -> bool {
        self.writing
    }

    /// Deletes the recovery file (clean exit, or the user declined to restore).
    pub fn discard(&self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// The recovery project left by an earlier session, if any.
pub fn find_recovery(dir: &Path) -> Option<PathBuf> {
    let p = dir.join(RECOVERY_FILE);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_round_trips() {
        let p = Project {
            image: RgbaImage::from_fn(7, 5, |x, y| image::Rgba([x as u8, y as u8, 1, 128])),
            mask: GrayImage::from_fn(7, 5, |x, _| image::Luma([if x > 3 { 255 } else { 0 }])),
            meta: ProjectMeta {
                source: Some("/a/b.png".into()),
                ..ProjectMeta::default()
            },
            last_mask: Some(GrayImage::from_fn(7, 5, |_, y| {
                image::Luma([if y > 2 { 255 } else { 0 }])
            })),
            history: None,
            results: None,
        };
        let bytes = encode_project(&p).unwrap();
        assert_eq!(decode_project(&bytes).unwrap(), p);
        assert!(decode_project(&bytes[..bytes.len() / 2]).is_err());
        // Without a last mask there is no last_mask.png, and it loads as None.
        let p = Project {
            last_mask: None,
            ..p
        };
        assert_eq!(decode_project(&encode_project(&p).unwrap()).unwrap(), p);
        // A recovery project: undo history and unaccepted candidates come back too.
        let rect = super::super::document::PixelRect {
            x: 1,
            y: 1,
            w: 2,
            h: 2,
        };
        let candidate = |v: u8| image::RgbImage::from_pixel(7, 5, image::Rgb([v, 2, 3]));
        let p = Project {
            history: Some(SavedHistory {
                undo: vec![super::super::history::Change::Mask(
                    super::super::document::MaskEdit {
                        rect,
                        before: vec![0; 4],
                        after: vec![255; 4],
                        label: "brush",
                    },
                )],
                redo: Vec::new(),
            }),
            results: Some(SavedResults {
                record: GenRecord {
                    model: "m".into(),
                    settings: GenSettings::default(),
                    class_name: None,
                    negative_class_name: None,
                    candidate: 0,
                    secs: 1.5,
                },
                selected: 1,
                sample: false,
                finals: vec![Some(candidate(10)), None, Some(candidate(30))],
                source: Some(candidate(0)),
            }),
            ..p
        };
        assert_eq!(decode_project(&encode_project(&p).unwrap()).unwrap(), p);
    }
}
