//! The segmentation worker: a thread that owns the [`Segmenter`] and the embedding of the
//! current image. Callers send requests and poll [`SegmentEvent`]s; nothing blocks them.
//! When several prompts are queued only the newest is answered, and when several images are
//! queued only the newest is embedded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, RgbImage};

use super::{Embedding, Point, Segmenter};

enum Request {
    Load(PathBuf),
    Embed(u64, Arc<RgbImage>),
    Segment(u64, Vec<Point>),
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum SegmentEvent {
    /// Weights loaded from the path; earlier embeddings are forgotten.
    Loaded(PathBuf),
    /// The weights could not be loaded (the previous ones, if any, stay loaded).
    LoadFailed {
        /// The file.
        path: PathBuf,
        /// Why, naming the file and, for a wrong file, the tensor.
        error: String,
    },
    /// The image `image_id` is embedded; prompts on it are answered from now on.
    Embedded {
        /// The caller's id of the image.
        image_id: u64,
        /// Seconds the image encoder took.
        secs: f64,
    },
    /// The mask for `points` on image `image_id`.
    Mask {
        /// The caller's id of the image.
        image_id: u64,
        /// The prompt it answers.
        points: Vec<Point>,
        /// 255 = object, image size.
        mask: Arc<GrayImage>,
    },
    /// A request failed (no weights, image not embedded, engine error).
    Failed {
        /// The image the request was about (`None` for none).
        image_id: Option<u64>,
        /// Why.
        error: String,
    },
}

/// Handle to the worker thread; dropping it ends the thread after its current request.
pub struct SegmentWorker {
    tx: Sender<Request>,
    rx: Receiver<SegmentEvent>,
}

impl SegmentWorker {
    /// Starts the worker.
    pub fn spawn() -> Self {
        Self::spawn_with_waker(|| {})
    }

    /// Starts the worker; `waker` is called after every event (e.g. to repaint a UI).
    pub fn spawn_with_waker(waker: impl Fn() + Send + 'static) -> Self {
        let (tx, req_rx) = unbounded();
        let (ev_tx, rx) = unbounded();
        let spawned = std::thread::Builder::new()
            .name("tessera-segment".into())
            .spawn(move || run(req_rx, ev_tx, waker));
        if spawned.is_err() {
            // Without a thread every request goes unanswered; say so once asked.
            let (tx2, _) = unbounded();
            let (ev_tx, rx) = unbounded();
            ev_tx
                .send(SegmentEvent::Failed {
                    image_id: None,
                    error: "cannot start the segmentation thread".into(),
                })
                .ok();
            return Self { tx: tx2, rx };
        }
        Self { tx, rx }
    }

    /// Loads weights (a `mobile_sam-tiny-vitt.safetensors`).
    pub fn load(&self, path: impl Into<PathBuf>) {
        self.tx.send(Request::Load(path.into())).ok();
    }

    /// Embeds `image` and keeps the result under `image_id` (replacing the previous image).
    pub fn embed(&self, image_id: u64, image: Arc<RgbImage>) {
        self.tx.send(Request::Embed(image_id, image)).ok();
    }

    /// Asks for the mask of `points` (image pixels, `true` = include) on image `image_id`.
    pub fn segment(&self, image_id: u64, points: Vec<Point>) {
        self.tx.send(Request::Segment(image_id, points)).ok();
    }

    /// The next event, if any.
    pub fn try_recv(&self) -> Option<SegmentEvent> {
        self.rx.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<SegmentEvent> {
        self.rx.recv_timeout(timeout).ok()
    }
}

/// Keeps only the newest embed and the newest segment request of a batch (in order).
fn compact(batch: Vec<Request>) -> Vec<Request> {
    let last_embed = batch.iter().rposition(|r| matches!(r, Request::Embed(..)));
    let last_segment = batch
        .iter()
        .rposition(|r| matches!(r, Request::Segment(..)));
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, r)| match r {
            Request::Embed(..) => Some(*i) == last_embed,
            Request::Segment(..) => Some(*i) == last_segment,
            Request::Load(_) => true,
        })
        .map(|(_, r)| r)
        .collect()
}

fn run(rx: Receiver<Request>, tx: Sender<SegmentEvent>, waker: impl Fn()) {
    let mut model: Option<Segmenter> = None;
    let mut current: Option<(u64, Embedding)> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for req in compact(batch) {
            let event = match req {
                Request::Load(path) => match Segmenter::load(&path) {
                    Ok(m) => {
                        model = Some(m);
                        current = None;
                        SegmentEvent::Loaded(path)
                    }
                    Err(e) => SegmentEvent::LoadFailed {
                        path,
                        error: e.to_string(),
                    },
                },
                Request::Embed(id, image) => match &model {
                    None => no_weights(Some(id)),
                    Some(m) => {
                        let start = Instant::now();
                        match m.embed(&image) {
                            Ok(emb) => {
                                current = Some((id, emb));
                                SegmentEvent::Embedded {
                                    image_id: id,
                                    secs: start.elapsed().as_secs_f64(),
                                }
                            }
                            Err(e) => SegmentEvent::Failed {
                                image_id: Some(id),
                                error: e.to_string(),
                            },
                        }
                    }
                },
                Request::Segment(id, points) => match (&model, &current) {
                    (None, _) => no_weights(Some(id)),
                    (Some(m), Some((cur, emb))) if *cur == id => match m.mask(emb, &points) {
                        Ok(mask) => SegmentEvent::Mask {
                            image_id: id,
                            points,
                            mask: Arc::new(mask),
                        },
                        Err(e) => SegmentEvent::Failed {
                            image_id: Some(id),
                            error: e.to_string(),
                        },
                    },
                    _ => SegmentEvent::Failed {
                        image_id: Some(id),
                        error: format!("image {id} is not embedded"),
                    },
                },
            };
            if tx.send(event).is_err() {
                return;
            }
            waker();
        }
    }
}

fn no_weights(image_id: Option<u64>) -> SegmentEvent {
    SegmentEvent::Failed {
        image_id,
        error: "no segmentation weights are loaded".into(),
    }
}
