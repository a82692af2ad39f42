//! SAM's two-way transformer (prompt tokens ↔ image embeddings), as in candle-transformers'
//! `models::segment_anything::transformer` (Apache-2.0 OR MIT). Parameter names unchanged.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm};

use super::layers::MlpBlock;

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn new(dim: usize, num_heads: usize, downsample_rate: usize, vb: VarBuilder) -> Result<Self> {
        let internal = dim / downsample_rate;
        Ok(Self {
            q_proj: candle_nn::linear(dim, internal, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(dim, internal, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(dim, internal, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(internal, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    fn separate_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        x.reshape((b, n, self.num_heads, c / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn recombine_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n_heads, n_tokens, c_per_head) = x.dims4()?;
        x.transpose(1, 2)?
            .reshape((b, n_tokens, n_heads * c_per_head))
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.separate_heads(&self.q_proj.forward(&q.contiguous()?)?)?;
        let k = self.separate_heads(&self.k_proj.forward(&k.contiguous()?)?)?;
        let v = self.separate_heads(&self.v_proj.forward(&v.contiguous()?)?)?;
        let (_, _, _, c_per_head) = q.dims4()?;
        let attn = (q.matmul(&k.t()?)? / (c_per_head as f64).sqrt())?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        self.recombine_heads(&attn.matmul(&v)?)?
            .apply(&self.out_proj)
    }
}

#[derive(Debug)]
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn new(
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
        skip_first_layer_pe: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            norm4: layer_norm(dim, 1e-5, vb.pp("norm4"))?,
            self_attn: Attention::new(dim, num_heads, 1, vb.pp("self_attn"))?,
            cross_attn_token_to_image: Attention::new(
                dim,
                num_heads,
                2,
                vb.pp("cross_attn_token_to_image"),
            )?,
            cross_attn_image_to_token: Attention::new(
                dim,
                num_heads,
                2,
                vb.pp("cross_attn_image_to_token"),
            )?,
            mlp: MlpBlock::new(dim, mlp_dim, vb.pp("mlp"))?,
            skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // Self attention of the tokens.
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            let attn_out = self.self_attn.forward(&q, &q, queries)?;
            (queries + attn_out)?
        };
        let queries = self.norm1.forward(&queries)?;
        // Tokens attend to the image.
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let attn_out = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
        let queries = self.norm2.forward(&(&queries + attn_out)?)?;
        // MLP.
        let mlp_out = self.mlp.forward(&queries)?;
        let queries = self.norm3.forward(&(queries + mlp_out)?)?;
        // The image attends to the tokens.
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let attn_out = self.cross_attn_image_to_token.forward(&k, &q, &queries)?;
        let keys = self.norm4.forward(&(keys + attn_out)?)?;
        Ok((queries, keys))
    }
}

/// The two-way transformer of SAM's mask decoder.
#[derive(Debug)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// `depth` blocks of width `dim`.
    pub fn new(
        depth: usize,
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb_l = vb.pp("layers");
        let layers = (0..depth)
            .map(|i| TwoWayAttentionBlock::new(dim, num_heads, mlp_dim, i == 0, vb_l.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                dim,
                num_heads,
                2,
                vb.pp("final_attn_token_to_image"),
            )?,
            norm_final_attn: layer_norm(dim, 1e-5, vb.pp("norm_final_attn"))?,
        })
    }

    /// (tokens, image) after the transformer: `(b, n_tokens, dim)` and `(b, h·w, dim)`.
    pub fn forward(
        &self,
        image_embedding: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let image_embedding = image_embedding.flatten_from(2)?.permute((0, 2, 1))?;
        let image_pe = image_pe.flatten_from(2)?.permute((0, 2, 1))?;
        let mut queries = point_embedding.clone();
        let mut keys = image_embedding;
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, point_embedding, &image_pe)?
        }
        let q = (&queries + point_embedding)?;
        let k = (&keys + image_pe)?;
        let attn_out = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = (queries + attn_out)?.apply(&self.norm_final_attn)?;
        Ok((queries, keys))
    }
}
