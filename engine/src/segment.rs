//! Click segmentation: MobileSAM ("Segment Anything" with the TinyViT encoder) turns a few
//! include/exclude points on an image into a mask.
//!
//! The network is a port of candle-transformers' `models::segment_anything` (candle 0.11.1,
//! © the candle authors, Apache-2.0 OR MIT; <https://github.com/huggingface/candle>), reduced
//! to the tiny variant and point prompts, with the parameter names kept so that the released
//! `mobile_sam-tiny-vitt.safetensors` (Hugging Face `lmz/candle-sam`) loads unchanged.
//!
//! [`Segmenter`] is the synchronous API: [`Segmenter::embed`] runs the image encoder once per
//! image (the expensive part), [`Segmenter::mask`] turns points into a mask in milliseconds.
//! [`SegmentWorker`] runs both on a thread of its own so that a UI never waits.

mod layers;
mod mask_decoder;
mod prompt_encoder;
mod sam;
mod tiny_vit;
mod transformer;
mod worker;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use image::{GrayImage, RgbImage};

pub use sam::{IMAGE_SIZE, Sam};
pub use worker::{SegmentEvent, SegmentWorker};

use crate::loader::backend::{Checked, Source, unwrap};
use crate::{Error, Result};

/// Name of the released MobileSAM weights file.
pub const WEIGHTS_FILE: &str = "mobile_sam-tiny-vitt.safetensors";
/// Where the released weights file can be downloaded from (a Hugging Face repository).
pub const WEIGHTS_SOURCE: &str = "https://huggingface.co/lmz/candle-sam";

/// A prompt point: x, y in image pixels and whether the object includes it (`true`) or not.
pub type Point = (f32, f32, bool);

/// The image encoder's output for one image; reuse it for every prompt on that image.
#[derive(Debug, Clone)]
pub struct Embedding {
    features: Tensor,
    /// Width and height of the embedded image.
    size: (u32, u32),
    /// Width and height after resizing the longest side to [`IMAGE_SIZE`].
    resized: (usize, usize),
}

impl Embedding {
    /// Width and height of the image it was computed from.
    pub fn image_size(&self) -> (u32, u32) {
        self.size
    }
}

/// MobileSAM, loaded and ready to embed images and answer point prompts.
#[derive(Debug)]
pub struct Segmenter {
    sam: Sam,
    device: Device,
}

impl Segmenter {
    /// Loads the weights at `path` on the CPU.
    ///
    /// Errors name the file: [`Error::Io`] when it cannot be read, [`Error::BadFile`] when it
    /// is not a safetensors file (truncated, something else), [`Error::MissingKey`] and
    /// [`Error::ShapeMismatch`] (with the key and both shapes) when it holds another network.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(path, &Device::Cpu)
    }

    /// Loads the weights at `path` onto `device`.
    pub fn load_on(path: &Path, device: &Device) -> Result<Self> {
        let backend = Checked::new(Source::safetensors(path.to_path_buf())?, None);
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let sam = Sam::new_tiny(vb).map_err(unwrap)?;
        Ok(Self::from_sam(sam, device))
    }

    /// Wraps an already built network (tests build one from random weights).
    pub fn from_sam(sam: Sam, device: &Device) -> Self {
        Self {
            sam,
            device: device.clone(),
        }
    }

    /// Runs the image encoder: resizes the longest side to [`IMAGE_SIZE`], normalises and
    /// pads as SAM does. This is the expensive step (about a second on a desktop CPU).
    pub fn embed(&self, image: &RgbImage) -> Result<Embedding> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Input("the image is empty".into()));
        }
        let (rw, rh) = resized_size(w, h);
        let resized = if (rw, rh) == (w as usize, h as usize) {
            image.clone()
        } else {
            image::imageops::resize(
                image,
                rw as u32,
                rh as u32,
                image::imageops::FilterType::Triangle,
            )
        };
        let img = Tensor::from_vec(resized.into_raw(), (rh, rw, 3), &self.device)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?;
        let features = self.sam.embeddings(&img)?;
        Ok(Embedding {
            features,
            size: (w, h),
            resized: (rw, rh),
        })
    }

    /// The mask (255 = object, 0 = not) at the embedded image's size for `points` (image
    /// pixels; `true` = include). One point asks SAM for three masks and keeps the one with
    /// the best predicted IoU, several ask for one, as SAM's predictor recommends. No points
    /// gives an empty mask.
    pub fn mask(&self, emb: &Embedding, points: &[Point]) -> Result<GrayImage> {
        let (w, h) = emb.size;
        if points.is_empty() {
            return Ok(GrayImage::new(w, h));
        }
        if points.iter().any(|p| !p.0.is_finite() || !p.1.is_finite()) {
            return Err(Error::Input("a prompt point is not a number".into()));
        }
        let logits = self.mask_logits(emb, points)?;
        let values = logits.flatten_all()?.to_vec1::<f32>()?;
        let raw = values
            .into_iter()
            .map(|v| if v > 0.0 { 255 } else { 0 })
            .collect();
        GrayImage::from_raw(w, h, raw)
            .ok_or_else(|| Error::Input("mask size does not match the image".into()))
    }

    /// Mask logits (h, w) at the embedded image's size: SAM's postprocessing (bilinear to the
    /// padded frame, crop, bilinear to the image size).
    pub fn mask_logits(&self, emb: &Embedding, points: &[Point]) -> Result<Tensor> {
        let (w, h) = emb.size;
        let (rw, rh) = emb.resized;
        let sx = rw as f32 / w as f32;
        let sy = rh as f32 / h as f32;
        let n = points.len();
        let coords: Vec<f32> = points.iter().flat_map(|p| [p.0 * sx, p.1 * sy]).collect();
        let labels: Vec<f32> = points.iter().map(|p| f32::from(u8::from(p.2))).collect();
        let coords = Tensor::from_vec(coords, (1, n, 2), &self.device)?;
        let labels = Tensor::from_vec(labels, (1, n), &self.device)?;
        let multimask = n == 1;
        let (masks, iou) =
            self.sam
                .forward_for_embeddings(&emb.features, &coords, &labels, multimask)?;
        let best = if multimask {
            let iou = iou.flatten_all()?.to_vec1::<f32>()?;
            iou.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        } else {
            0
        };
        let low = masks.i((.., best..best + 1))?.contiguous()?;
        let full = low
            .upsample_bilinear2d(IMAGE_SIZE, IMAGE_SIZE, false)?
            .i((.., .., ..rh, ..rw))?
            .contiguous()?;
        let out = full.upsample_bilinear2d(h as usize, w as usize, false)?;
        Ok(out.i((0, 0))?)
    }
}

/// Writes MobileSAM weights drawn at random (seeded by candle's global generator) to `path`,
/// for tests and timings without the released file. Parameters the builder would initialise
/// to constants (norm scales, attention biases, the positional encoding matrix) get noise
/// around that constant, so that masks depend on the prompt.
pub fn write_random_weights(path: &Path) -> Result<()> {
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    Sam::new_tiny(vb)?;
    let data = vm
        .data()
        .lock()
        .map_err(|_| Error::Input("the variable map is poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = var.as_tensor();
        let lo = t.min_all()?.to_scalar::<f32>()?;
        let hi = t.max_all()?.to_scalar::<f32>()?;
        let noise = t.randn_like(0.0, 1.0)?;
        if name.ends_with("positional_encoding_gaussian_matrix") {
            var.set(&noise)?;
        } else if lo == hi {
            var.set(&((noise * 0.1)? + f64::from(lo))?)?;
        }
    }
    drop(data);
    vm.save(path)
        .map_err(|e| Error::bad_file(path, format!("cannot write: {e}")))
}

/// Size after resizing the longest side of a `w`×`h` image to [`IMAGE_SIZE`] (SAM's
/// `ResizeLongestSide`: scale, round half up).
pub fn resized_size(w: u32, h: u32) -> (usize, usize) {
    let scale = IMAGE_SIZE as f64 / f64::from(w.max(h));
    let r = |v: u32| ((f64::from(v) * scale + 0.5) as usize).clamp(1, IMAGE_SIZE);
    (r(w), r(h))
}
