//! The MobileSAM network (TinyViT image encoder, prompt encoder, mask decoder), as in
//! candle-transformers' `models::segment_anything::sam` (Apache-2.0 OR MIT), reduced to the
//! tiny variant and point prompts. Parameter names are unchanged.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::mask_decoder::MaskDecoder;
use super::prompt_encoder::PromptEncoder;
use super::tiny_vit::{TinyViT, tiny_vit_5m};

const PROMPT_EMBED_DIM: usize = 256;
/// Side of the square the image encoder sees (the longest image side is resized to it).
pub const IMAGE_SIZE: usize = 1024;
const VIT_PATCH_SIZE: usize = 16;

/// MobileSAM: TinyViT-5M image encoder, SAM prompt encoder and mask decoder.
#[derive(Debug)]
pub struct Sam {
    image_encoder: TinyViT,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    pixel_mean: Tensor,
    pixel_std: Tensor,
}

impl Sam {
    /// Builds MobileSAM from `vb` (keys `image_encoder.*`, `prompt_encoder.*`,
    /// `mask_decoder.*`, as in `mobile_sam-tiny-vitt.safetensors`).
    pub fn new_tiny(vb: VarBuilder) -> Result<Self> {
        let grid = IMAGE_SIZE / VIT_PATCH_SIZE;
        let image_encoder = tiny_vit_5m(vb.pp("image_encoder"))?;
        let prompt_encoder = PromptEncoder::new(
            PROMPT_EMBED_DIM,
            (grid, grid),
            (IMAGE_SIZE, IMAGE_SIZE),
            16,
            vb.pp("prompt_encoder"),
        )?;
        let mask_decoder = MaskDecoder::new(PROMPT_EMBED_DIM, 3, 3, 256, vb.pp("mask_decoder"))?;
        let pixel_mean =
            Tensor::new(&[123.675f32, 116.28, 103.53], vb.device())?.reshape((3, 1, 1))?;
        let pixel_std =
            Tensor::new(&[58.395f32, 57.12, 57.375], vb.device())?.reshape((3, 1, 1))?;
        Ok(Self {
            image_encoder,
            prompt_encoder,
            mask_decoder,
            pixel_mean,
            pixel_std,
        })
    }

    /// Normalises a (3, h, w) image with values 0–255 (h, w ≤ [`IMAGE_SIZE`]) and pads it at
    /// the bottom and right to [`IMAGE_SIZE`]².
    pub fn preprocess(&self, img: &Tensor) -> Result<Tensor> {
        let (_c, h, w) = img.dims3()?;
        if h > IMAGE_SIZE || w > IMAGE_SIZE {
            candle_core::bail!("image is too large ({w}, {h}), maximum size {IMAGE_SIZE}")
        }
        let img = img
            .to_dtype(DType::F32)?
            .broadcast_sub(&self.pixel_mean)?
            .broadcast_div(&self.pixel_std)?;
        img.pad_with_zeros(1, 0, IMAGE_SIZE - h)?
            .pad_with_zeros(2, 0, IMAGE_SIZE - w)
    }

    /// Image embeddings (1, 256, 64, 64) of a (3, h, w) image with values 0–255 whose longest
    /// side is (at most) [`IMAGE_SIZE`].
    pub fn embeddings(&self, img: &Tensor) -> Result<Tensor> {
        let img = self.preprocess(img)?.unsqueeze(0)?;
        self.image_encoder.forward(&img)
    }

    /// Low-resolution mask logits (1, k, 256, 256) over the padded [`IMAGE_SIZE`]² frame and
    /// predicted IoUs (1, k) for point prompts: `points` (1, n, 2) in that frame's pixels,
    /// `labels` (1, n) with 1 = include, 0 = exclude. k = 3 with `multimask_output`, else 1.
    pub fn forward_for_embeddings(
        &self,
        img_embeddings: &Tensor,
        points: &Tensor,
        labels: &Tensor,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor)> {
        let image_pe = self.prompt_encoder.get_dense_pe()?;
        let (sparse, dense) = self.prompt_encoder.forward(points, labels)?;
        self.mask_decoder
            .forward(img_embeddings, &image_pe, &sparse, &dense, multimask_output)
    }
}
