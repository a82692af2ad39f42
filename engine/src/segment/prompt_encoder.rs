//! SAM's prompt encoder (points → sparse embeddings, no mask → dense embedding), as in
//! candle-transformers' `models::segment_anything::prompt_encoder` (Apache-2.0 OR MIT).
//! Parameter names unchanged; box prompts are not ported (Tessera only sends points).

use candle_core::{D, DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::LayerNorm2d;

#[derive(Debug)]
struct PositionEmbeddingRandom {
    positional_encoding_gaussian_matrix: Tensor,
}

impl PositionEmbeddingRandom {
    fn new(num_pos_feats: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            positional_encoding_gaussian_matrix: vb
                .get((2, num_pos_feats), "positional_encoding_gaussian_matrix")?,
        })
    }

    fn pe_encoding(&self, coords: &Tensor) -> Result<Tensor> {
        let coords = coords.affine(2., -1.)?;
        let coords = coords.broadcast_matmul(&self.positional_encoding_gaussian_matrix)?;
        let coords = (coords * (2. * std::f64::consts::PI))?;
        Tensor::cat(&[coords.sin()?, coords.cos()?], D::Minus1)
    }

    fn forward(&self, h: usize, w: usize) -> Result<Tensor> {
        let device = self.positional_encoding_gaussian_matrix.device();
        let x_embed = (Tensor::arange(0u32, w as u32, device)?.to_dtype(DType::F32)? + 0.5)?;
        let y_embed = (Tensor::arange(0u32, h as u32, device)?.to_dtype(DType::F32)? + 0.5)?;
        let x_embed = (x_embed / w as f64)?
            .reshape((1, ()))?
            .broadcast_as((h, w))?;
        let y_embed = (y_embed / h as f64)?
            .reshape(((), 1))?
            .broadcast_as((h, w))?;
        let coords = Tensor::stack(&[&x_embed, &y_embed], D::Minus1)?;
        self.pe_encoding(&coords)?.permute((2, 0, 1))
    }

    fn forward_with_coords(&self, coords: &Tensor, image_size: (usize, usize)) -> Result<Tensor> {
        let c0 = (coords.narrow(D::Minus1, 0, 1)? / image_size.1 as f64)?;
        let c1 = (coords.narrow(D::Minus1, 1, 1)? / image_size.0 as f64)?;
        let c = coords.dim(D::Minus1)?;
        let rest = coords.narrow(D::Minus1, 2, c - 2)?;
        self.pe_encoding(&Tensor::cat(&[&c0, &c1, &rest], D::Minus1)?)
    }
}

/// Encodes point prompts.
#[derive(Debug)]
#[allow(dead_code)] // the mask-prompt convolutions are loaded (the file has them) but unused
pub struct PromptEncoder {
    pe_layer: PositionEmbeddingRandom,
    point_embeddings: Vec<candle_nn::Embedding>,
    not_a_point_embed: candle_nn::Embedding,
    mask_downscaling_conv1: candle_nn::Conv2d,
    mask_downscaling_ln1: LayerNorm2d,
    mask_downscaling_conv2: candle_nn::Conv2d,
    mask_downscaling_ln2: LayerNorm2d,
    mask_downscaling_conv3: candle_nn::Conv2d,
    no_mask_embed: candle_nn::Embedding,
    image_embedding_size: (usize, usize),
    input_image_size: (usize, usize),
}

impl PromptEncoder {
    /// The encoder for `embed_dim`-wide tokens.
    pub fn new(
        embed_dim: usize,
        image_embedding_size: (usize, usize),
        input_image_size: (usize, usize),
        mask_in_chans: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let pe_layer = PositionEmbeddingRandom::new(embed_dim / 2, vb.pp("pe_layer"))?;
        let not_a_point_embed = candle_nn::embedding(1, embed_dim, vb.pp("not_a_point_embed"))?;
        let no_mask_embed = candle_nn::embedding(1, embed_dim, vb.pp("no_mask_embed"))?;
        let cfg = candle_nn::Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        let q = mask_in_chans / 4;
        let mask_downscaling_conv1 = candle_nn::conv2d(1, q, 2, cfg, vb.pp("mask_downscaling.0"))?;
        let mask_downscaling_conv2 =
            candle_nn::conv2d(q, mask_in_chans, 2, cfg, vb.pp("mask_downscaling.3"))?;
        let mask_downscaling_conv3 = candle_nn::conv2d(
            mask_in_chans,
            embed_dim,
            1,
            Default::default(),
            vb.pp("mask_downscaling.6"),
        )?;
        let mask_downscaling_ln1 = LayerNorm2d::new(q, 1e-6, vb.pp("mask_downscaling.1"))?;
        let mask_downscaling_ln2 =
            LayerNorm2d::new(mask_in_chans, 1e-6, vb.pp("mask_downscaling.4"))?;
        let vb_e = vb.pp("point_embeddings");
        let point_embeddings = (0..4)
            .map(|i| candle_nn::embedding(1, embed_dim, vb_e.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pe_layer,
            point_embeddings,
            not_a_point_embed,
            mask_downscaling_conv1,
            mask_downscaling_ln1,
            mask_downscaling_conv2,
            mask_downscaling_ln2,
            mask_downscaling_conv3,
            no_mask_embed,
            image_embedding_size,
            input_image_size,
        })
    }

    /// Positional encoding of the image embedding grid, (1, embed_dim, 64, 64).
    pub fn get_dense_pe(&self) -> Result<Tensor> {
        self.pe_layer
            .forward(self.image_embedding_size.0, self.image_embedding_size.1)?
            .unsqueeze(0)
    }

    fn embed_points(&self, points: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let points = (points + 0.5)?;
        let dev = points.device();
        // Without a box prompt SAM appends one padding point labelled -1.
        let padding_point = Tensor::zeros((points.dim(0)?, 1, 2), DType::F32, dev)?;
        let padding_label = (Tensor::ones((labels.dim(0)?, 1), DType::F32, dev)? * (-1f64))?;
        let points = Tensor::cat(&[&points, &padding_point], 1)?;
        let labels = Tensor::cat(&[labels, &padding_label], 1)?;
        let point_embedding = self
            .pe_layer
            .forward_with_coords(&points, self.input_image_size)?;
        let labels = labels.unsqueeze(2)?.broadcast_as(point_embedding.shape())?;
        let zeros = point_embedding.zeros_like()?;
        let shape = zeros.shape();
        let point_embedding = labels.lt(0f32)?.where_cond(
            &self.not_a_point_embed.embeddings().broadcast_as(shape)?,
            &point_embedding,
        )?;
        let labels0 = labels.eq(0f32)?.where_cond(
            &self.point_embeddings[0].embeddings().broadcast_as(shape)?,
            &zeros,
        )?;
        let labels1 = labels.eq(1f32)?.where_cond(
            &self.point_embeddings[1].embeddings().broadcast_as(shape)?,
            &zeros,
        )?;
        (point_embedding + labels0)? + labels1
    }

    /// Sparse and dense prompt embeddings for `points` ((b, n, 2) in the 1024 frame) with
    /// `labels` ((b, n): 1 include, 0 exclude).
    pub fn forward(&self, points: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
        let sparse = self.embed_points(points, labels)?;
        let emb = self.no_mask_embed.embeddings();
        let dense = emb.reshape((1, (), 1, 1))?.expand((
            1,
            emb.elem_count(),
            self.image_embedding_size.0,
            self.image_embedding_size.1,
        ))?;
        Ok((sparse, dense))
    }

    /// Embeds a low-resolution mask prompt (kept for completeness; unused by Tessera).
    #[allow(dead_code)]
    fn embed_masks(&self, masks: &Tensor) -> Result<Tensor> {
        masks
            .apply(&self.mask_downscaling_conv1)?
            .apply(&self.mask_downscaling_ln1)?
            .gelu_erf()?
            .apply(&self.mask_downscaling_conv2)?
            .apply(&self.mask_downscaling_ln2)?
            .gelu_erf()?
            .apply(&self.mask_downscaling_conv3)
    }
}
