//! The encoder–decoder reverse model of stages t < T: `XTransformer` and
//! `ResidualScaledXTransformer` (`imagebart/modules/xtransformers/x_transformer.py` at
//! CompVis/imagebart c11ea83, a trimmed copy of lucidrains' x-transformers).
//!
//! One file for the whole network (≈ 800 lines), as candle-transformers keeps its model files:
//! the encoder, the decoder, their caches and the training forward share the blocks and are read
//! together against the official code.
//!
//! Effective architecture of every released config (see the reference notes, §3.2):
//! - encoder: `token_emb[src] + pos_emb[0..Ls]`, `enc_depth` pre-LN blocks of
//!   (self-attention, feed-forward), final LayerNorm — the *context*;
//! - decoder: `token_emb[tgt] + pos_emb[0..Lt]`, `dec_depth` pre-LN blocks of (causal
//!   self-attention, cross-attention to the context, feed-forward), final LayerNorm, `to_logits`;
//! - attention: `heads × dim_head` (64) inner width independent of `dim`, q/k/v without bias,
//!   output projection with bias, scale `dim_head^-0.5`;
//! - the residual-scaled variant rescales the logits by `exp(log_scalors[t−1])` and adds
//!   `log(α_t·onehot(x_t[i]) + (1−α_t)/K)`.
//!
//! Decoding is incremental: [`XTransformer::start`] runs the encoder once and precomputes the
//! cross-attention keys/values of every decoder layer; [`XTransformer::step`] feeds one or more
//! decoder tokens, appending their self-attention keys/values to a preallocated cache. The
//! official sampler recomputes the whole decoder for every token; since the decoder is strictly
//! causal and pre-norm, the cached computation gives the same logits.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{
    FeedForward, KvCache, LayerNorm, Linear, MapLinear, attention, causal_mask,
    check_compute_dtype, check_token_ids, cross_attention, embed, merge_heads, self_attention,
    split_heads,
};

/// x-transformers' `DEFAULT_DIM_HEAD`: the per-head width of every attention layer.
pub const DEFAULT_DIM_HEAD: usize = 64;

fn default_dim_head() -> usize {
    DEFAULT_DIM_HEAD
}

/// `model.params.transformer_config.params` of an encoder–decoder stage.
///
/// Keys of the official YAML that do not change the computation (`tie_token_emb`,
/// `wrap_decoder`, both false in every release) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct XTransformerConfig {
    /// Model width.
    pub dim: usize,
    /// Size of the encoder token table (image codes, scale tokens and class ids share it).
    pub enc_num_tokens: usize,
    /// Number of encoder blocks.
    pub enc_depth: usize,
    /// Attention heads in the encoder.
    pub enc_heads: usize,
    /// Rows of the encoder position table: the longest encoder input.
    pub enc_max_seq_len: usize,
    /// Size of the decoder token table and of the output vocabulary (K).
    pub dec_num_tokens: usize,
    /// Number of decoder blocks.
    pub dec_depth: usize,
    /// Attention heads in the decoder.
    pub dec_heads: usize,
    /// Rows of the decoder position table: the longest decoder input.
    pub dec_max_seq_len: usize,
    /// Width of one attention head (not in the YAML; x-transformers' constant 64).
    #[serde(default = "default_dim_head")]
    pub dim_head: usize,
    /// Residual-scaled variant: position of the scale token t in `src`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_pos: Option<usize>,
    /// Residual-scaled variant: number of stages (length of `log_scalors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_scales: Option<usize>,
    /// Residual-scaled variant: position of x_t's first token in `src`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xt_start: Option<usize>,
    /// Residual-scaled variant: number of x_t tokens in `src`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xt_size: Option<usize>,
}

/// Self- or cross-attention (x-transformers `Attention`): q/k/v without bias, `to_out` with bias.
#[derive(Debug, Clone)]
struct Attention {
    /// Self-attention: fused `[to_q; to_k; to_v]`. Cross-attention: `to_q` only.
    q_or_qkv: Linear,
    /// Cross-attention: fused `[to_k; to_v]` applied to the context.
    kv: Option<Linear>,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, heads: usize, dim_head: usize, cross: bool) -> Result<Self> {
        let inner = heads * dim_head;
        let (q_or_qkv, kv) = if cross {
            (
                Linear::new(vb.pp("to_q"), dim, inner, false)?,
                Some(Linear::fused(
                    &[vb.pp("to_k"), vb.pp("to_v")],
                    dim,
                    inner,
                    false,
                )?),
            )
        } else {
            (
                Linear::fused(
                    &[vb.pp("to_q"), vb.pp("to_k"), vb.pp("to_v")],
                    dim,
                    inner,
                    false,
                )?,
                None,
            )
        };
        Ok(Self {
            q_or_qkv,
            kv,
            to_out: Linear::new(vb.pp("to_out"), inner, dim, true)?,
            heads,
            scale: (dim_head as f64).powf(-0.5),
        })
    }

    /// Cross-attention keys and values of `context` `(B, Ls, dim)`: two `(B, H, Ls, d)`.
    fn context_kv(&self, context: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some(kv) = &self.kv else {
            candle_core::bail!("context_kv called on a self-attention layer")
        };
        let mut parts = split_heads(&kv.forward(context)?, 2, self.heads)?;
        let v = parts.pop();
        let k = parts.pop();
        match (k, v) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => candle_core::bail!("context_kv: split failed"),
        }
    }

    /// Projections of `x` `(B, n, dim)` for self-attention: q, k, v `(B, H, n, d)`.
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let parts = split_heads(&self.q_or_qkv.forward(x)?, 3, self.heads)?;
        match <[Tensor; 3]>::try_from(parts) {
            Ok([q, k, v]) => Ok((q, k, v)),
            Err(_) => candle_core::bail!("qkv: split failed"),
        }
    }

    fn map_linears(&self, f: &mut MapLinear) -> Result<Self> {
        Ok(Self {
            q_or_qkv: f(&self.q_or_qkv)?,
            kv: self.kv.as_ref().map(&mut *f).transpose()?,
            to_out: f(&self.to_out)?,
            ..self.clone()
        })
    }

    /// Bytes of weight a decoding step reads: the cross-attention's key/value projection is
    /// applied once per level, not per step.
    fn step_weight_bytes(&self) -> usize {
        self.q_or_qkv.weight_bytes() + self.to_out.weight_bytes()
    }

    /// Full (non-cached) self-attention over `x` with an optional additive mask (the encoder:
    /// none; the decoder in training: causal).
    fn self_attend(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if x.track_op() || self.q_or_qkv.tracks_gradients() {
            let a = self_attention(&self.q_or_qkv.forward(x)?, self.heads, self.scale, mask)?;
            return self.to_out.forward(&a);
        }
        let (q, k, v) = self.qkv(x)?;
        let a = attention(&q, &k, &v, self.scale, mask)?;
        self.to_out.forward(&merge_heads(&a)?)
    }

    /// Causal self-attention for new tokens at `pos..pos+n`, keys/values appended to `cache`.
    fn self_attend_cached(
        &self,
        x: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x)?;
        let (k, v) = cache.write(pos, &k, &v)?;
        let a = attention(&q, &k, &v, self.scale, mask)?;
        self.to_out.forward(&merge_heads(&a)?)
    }

    /// Cross-attention of `x` to precomputed context keys/values.
    fn cross_attend(&self, x: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = split_heads(&self.q_or_qkv.forward(x)?, 1, self.heads)?;
        let Some(q) = q.first() else {
            candle_core::bail!("cross_attend: split failed")
        };
        let a = attention(q, k, v, self.scale, None)?;
        self.to_out.forward(&merge_heads(&a)?)
    }
}

/// One encoder block: `layers.{2d}` (LN, self-attention) and `layers.{2d+1}` (LN, feed-forward).
#[derive(Debug, Clone)]
struct EncoderBlock {
    attn_norm: LayerNorm,
    attn: Attention,
    ff_norm: LayerNorm,
    ff: FeedForward,
}

impl EncoderBlock {
    fn new(vb: &VarBuilder, d: usize, dim: usize, heads: usize, dim_head: usize) -> Result<Self> {
        let a = vb.pp(2 * d);
        let f = vb.pp(2 * d + 1);
        Ok(Self {
            attn_norm: LayerNorm::new(a.pp(0), dim)?,
            attn: Attention::new(a.pp(1), dim, heads, dim_head, false)?,
            ff_norm: LayerNorm::new(f.pp(0), dim)?,
            ff: FeedForward::new(f.pp(1).pp("net.0.0"), f.pp(1).pp("net.2"), dim, 4 * dim)?,
        })
    }

    fn map_linears(&self, f: &mut MapLinear) -> Result<Self> {
        Ok(Self {
            attn: self.attn.map_linears(f)?,
            ff: self.ff.map_linears(f)?,
            ..self.clone()
        })
    }

    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let h = (h + self.attn.self_attend(&self.attn_norm.forward(h)?, None)?)?;
        &h + self.ff.forward(&self.ff_norm.forward(&h)?)?
    }
}

/// One decoder block: `layers.{3d}` causal self-attention, `layers.{3d+1}` cross-attention,
/// `layers.{3d+2}` feed-forward, each behind its own LayerNorm.
#[derive(Debug, Clone)]
struct DecoderBlock {
    self_norm: LayerNorm,
    self_attn: Attention,
    cross_norm: LayerNorm,
    cross_attn: Attention,
    ff_norm: LayerNorm,
    ff: FeedForward,
}

impl DecoderBlock {
    fn new(vb: &VarBuilder, d: usize, dim: usize, heads: usize, dim_head: usize) -> Result<Self> {
        let s = vb.pp(3 * d);
        let c = vb.pp(3 * d + 1);
        let f = vb.pp(3 * d + 2);
        Ok(Self {
            self_norm: LayerNorm::new(s.pp(0), dim)?,
            self_attn: Attention::new(s.pp(1), dim, heads, dim_head, false)?,
            cross_norm: LayerNorm::new(c.pp(0), dim)?,
            cross_attn: Attention::new(c.pp(1), dim, heads, dim_head, true)?,
            ff_norm: LayerNorm::new(f.pp(0), dim)?,
            ff: FeedForward::new(f.pp(1).pp("net.0.0"), f.pp(1).pp("net.2"), dim, 4 * dim)?,
        })
    }

    fn map_linears(&self, f: &mut MapLinear) -> Result<Self> {
        Ok(Self {
            self_attn: self.self_attn.map_linears(f)?,
            cross_attn: self.cross_attn.map_linears(f)?,
            ff: self.ff.map_linears(f)?,
            ..self.clone()
        })
    }

    fn step_weight_bytes(&self) -> usize {
        self.self_attn.step_weight_bytes()
            + self.cross_attn.step_weight_bytes()
            + self.ff.weight_bytes()
    }

    fn step(
        &self,
        g: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        self_kv: &mut KvCache,
        cross_kv: &(Tensor, Tensor),
    ) -> Result<Tensor> {
        let g = (g + self.self_attn.self_attend_cached(
            &self.self_norm.forward(g)?,
            pos,
            mask,
            self_kv,
        )?)?;
        let g = (&g
            + self.cross_attn.cross_attend(
                &self.cross_norm.forward(&g)?,
                &cross_kv.0,
                &cross_kv.1,
            )?)?;
        &g + self.ff.forward(&self.ff_norm.forward(&g)?)?
    }

    /// The whole decoder sequence at once without a cache (training: every intermediate
    /// stays in the autograd graph).
    fn forward_full(&self, g: &Tensor, mask: Option<&Tensor>, context: &Tensor) -> Result<Tensor> {
        let s = &self.self_attn;
        let qkv = s.q_or_qkv.forward(&self.self_norm.forward(g)?)?;
        let a = self_attention(&qkv, s.heads, s.scale, mask)?;
        let g = (g + s.to_out.forward(&a)?)?;
        let c = &self.cross_attn;
        let Some(kv) = &c.kv else {
            candle_core::bail!("cross-attention layer without key/value projection")
        };
        let q = c.q_or_qkv.forward(&self.cross_norm.forward(&g)?)?;
        let a = cross_attention(&q, &kv.forward(context)?, c.heads, c.scale)?;
        let g = (&g + c.to_out.forward(&a)?)?;
        &g + self.ff.forward(&self.ff_norm.forward(&g)?)?
    }
}

/// Parameters of the residual term of `ResidualScaledXTransformer`.
#[derive(Debug, Clone)]
struct Residual {
    scale_pos: usize,
    xt_start: usize,
    xt_size: usize,
    /// `log_scalors`, indexed by t − 1.
    log_scalors: Vec<f32>,
    /// α_t = 1 − β_t, indexed by t.
    alphas: Vec<f32>,
}

/// Per-job state of the residual term, all batch-first so rows can be selected.
#[derive(Debug)]
struct ResidualState {
    /// x_t, `(B, xt_size)` u32.
    xt: Tensor,
    /// `exp(log_scalors[t−1])`, `(B, 1, 1)` f32.
    scale: Tensor,
    /// `log(α_t + (1−α_t)/K)`, the term where `x_t[i]` is the class, `(B, 1, 1)` f32.
    hit: Tensor,
    /// `log((1−α_t)/K)`, `(B, 1, 1)` f32.
    miss: Tensor,
}

impl ResidualState {
    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            xt: f(&self.xt)?,
            scale: f(&self.scale)?,
            hit: f(&self.hit)?,
            miss: f(&self.miss)?,
        })
    }
}

/// Decoding state of one batch of jobs for an [`XTransformer`]: the cross-attention keys and
/// values of every decoder layer (computed once by [`XTransformer::start`]), the preallocated
/// self-attention cache, and what the residual term needs.
///
/// It is independent of the model, so one loaded model can serve many jobs. It is not `Clone`
/// (its buffers are written in place); use [`DecoderCache::try_clone`].
#[derive(Debug)]
pub struct DecoderCache {
    cross: Vec<(Tensor, Tensor)>,
    self_kv: Vec<KvCache>,
    residual: Option<ResidualState>,
    len: usize,
    batch: usize,
}

impl DecoderCache {
    /// Number of decoder positions fed so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no decoder token has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// A cache whose batch row `r` is row `idx[r]` of this one (u32 or i64 indices, repeats
    /// allowed): duplicates a job, or drops finished ones. The result is independent of `self`.
    pub fn index_select_batch(&self, idx: &Tensor) -> Result<Self> {
        let batch = idx.dims1()?;
        let sel = |t: &Tensor| t.index_select(idx, 0);
        Ok(Self {
            cross: self
                .cross
                .iter()
                .map(|(k, v)| Ok((sel(k)?, sel(v)?)))
                .collect::<Result<_>>()?,
            self_kv: self
                .self_kv
                .iter()
                .map(|c| c.index_select_batch(idx))
                .collect::<Result<_>>()?,
            residual: self.residual.as_ref().map(|r| r.map(sel)).transpose()?,
            len: self.len,
            batch,
        })
    }

    /// A deep copy, independent of `self`.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            cross: self.cross.clone(),
            self_kv: self
                .self_kv
                .iter()
                .map(KvCache::try_clone)
                .collect::<Result<_>>()?,
            residual: self
                .residual
                .as_ref()
                .map(|r| r.map(|t| Ok(t.clone())))
                .transpose()?,
            len: self.len,
            batch: self.batch,
        })
    }

    /// Forgets the decoder tokens fed so far (keeps the encoder context): the next step starts
    /// at position 0 again.
    pub fn rewind(&mut self) {
        self.len = 0;
    }
}

/// An encoder–decoder stage network: `XTransformer` or, with residual α's,
/// `ResidualScaledXTransformer`.
#[derive(Debug, Clone)]
pub struct XTransformer {
    cfg: XTransformerConfig,
    enc_tok: Tensor,
    enc_pos: Tensor,
    enc_blocks: Vec<EncoderBlock>,
    enc_norm: LayerNorm,
    dec_tok: Tensor,
    dec_pos: Tensor,
    dec_blocks: Vec<DecoderBlock>,
    dec_norm: LayerNorm,
    to_logits: Linear,
    residual: Option<Residual>,
    dtype: DType,
    device: Device,
}

impl XTransformer {
    /// Loads the network from `vb` (official dotted parameter names, e.g.
    /// `encoder.attn_layers.layers.0.1.to_q.weight`).
    ///
    /// `residual_alphas`: `Some(α)` with `α[t] = 1 − β_t` for `t = 0..=T` builds the
    /// residual-scaled variant (then `log_scalors` `[n_scales]` is loaded and the config must
    /// carry `scale_pos`, `n_scales`, `xt_start`, `xt_size`); `None` the plain one.
    /// `encoder.to_logits` is never loaded.
    pub fn new(
        vb: VarBuilder,
        cfg: &XTransformerConfig,
        residual_alphas: Option<Vec<f32>>,
    ) -> Result<Self> {
        let c = cfg;
        if c.dim == 0 || c.dim_head == 0 || c.enc_heads == 0 || c.dec_heads == 0 {
            candle_core::bail!("xtransformer config: dim, dim_head and heads must be positive")
        }
        let enc = vb.pp("encoder");
        let dec = vb.pp("decoder");
        let enc_tok = enc
            .pp("token_emb")
            .get((c.enc_num_tokens, c.dim), "weight")?;
        check_compute_dtype(enc_tok.dtype(), vb.device())?;
        let enc_layers = enc.pp("attn_layers").pp("layers");
        let dec_layers = dec.pp("attn_layers").pp("layers");
        let enc_blocks = (0..c.enc_depth)
            .map(|d| EncoderBlock::new(&enc_layers, d, c.dim, c.enc_heads, c.dim_head))
            .collect::<Result<_>>()?;
        let dec_blocks = (0..c.dec_depth)
            .map(|d| DecoderBlock::new(&dec_layers, d, c.dim, c.dec_heads, c.dim_head))
            .collect::<Result<_>>()?;
        let residual = match residual_alphas {
            None => None,
            Some(alphas) => {
                let (Some(scale_pos), Some(n_scales), Some(xt_start), Some(xt_size)) =
                    (c.scale_pos, c.n_scales, c.xt_start, c.xt_size)
                else {
                    candle_core::bail!(
                        "ResidualScaledXTransformer needs scale_pos, n_scales, xt_start and \
                         xt_size in its config"
                    )
                };
                let log_scalors = vb
                    .get(n_scales, "log_scalors")?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?;
                Some(Residual {
                    scale_pos,
                    xt_start,
                    xt_size,
                    log_scalors,
                    alphas,
                })
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            dtype: enc_tok.dtype(),
            enc_tok,
            enc_pos: enc
                .pp("pos_emb")
                .pp("emb")
                .get((c.enc_max_seq_len, c.dim), "weight")?,
            enc_blocks,
            enc_norm: LayerNorm::new(enc.pp("norm"), c.dim)?,
            dec_tok: dec
                .pp("token_emb")
                .get((c.dec_num_tokens, c.dim), "weight")?,
            dec_pos: dec
                .pp("pos_emb")
                .pp("emb")
                .get((c.dec_max_seq_len, c.dim), "weight")?,
            dec_blocks,
            dec_norm: LayerNorm::new(dec.pp("norm"), c.dim)?,
            to_logits: Linear::new(dec.pp("to_logits"), c.dim, c.dec_num_tokens, true)?,
            residual,
            device: vb.device().clone(),
        })
    }

    /// This network with the weights of every linear layer (attention projections,
    /// feed-forward, `to_logits`) quantized to `dtype` (e.g. `Q8_0`, `Q4K`); embeddings and
    /// LayerNorms stay as they are. The network must compute in f32.
    pub fn quantized(&self, dtype: GgmlDType) -> Result<Self> {
        if self.dtype != DType::F32 {
            candle_core::bail!("quantizing needs f32 weights, not {:?}", self.dtype)
        }
        self.map_linears(&mut |l| l.quantized(dtype))
    }

    /// This network with every linear layer replaced by `f(layer)`, in construction order
    /// (quantizing, loading stored quantized weights, listing the layers).
    pub fn map_linears(&self, f: &mut MapLinear) -> Result<Self> {
        Ok(Self {
            enc_blocks: self
                .enc_blocks
                .iter()
                .map(|b| b.map_linears(f))
                .collect::<Result<_>>()?,
            dec_blocks: self
                .dec_blocks
                .iter()
                .map(|b| b.map_linears(f))
                .collect::<Result<_>>()?,
            to_logits: f(&self.to_logits)?,
            ..self.clone()
        })
    }

    /// Bytes of weight one decoder step reads (the decoder's linear layers and `to_logits`;
    /// the cross-attention keys/values are computed once per level).
    pub fn step_weight_bytes(&self) -> usize {
        self.dec_blocks
            .iter()
            .map(DecoderBlock::step_weight_bytes)
            .sum::<usize>()
            + self.to_logits.weight_bytes()
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &XTransformerConfig {
        &self.cfg
    }

    /// Whether this is the residual-scaled variant.
    pub fn is_residual(&self) -> bool {
        self.residual.is_some()
    }

    /// The dtype of the weights (the compute dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of the decoder's key/value caches (self- and cross-attention): the compute
    /// dtype, except f16 for a quantized network on the CPU — a step there reads its weights
    /// at about a byte per parameter, and an f32 cache would be a quarter to half of what it
    /// reads (the few-query kernel widens the f16 rows as it reads them).
    pub fn cache_dtype(&self) -> DType {
        let quantized = self.to_logits.is_quantized()
            || self
                .dec_blocks
                .iter()
                .any(|b| b.self_attn.q_or_qkv.is_quantized());
        if quantized && self.dtype == DType::F32 && matches!(self.device, Device::Cpu) {
            DType::F16
        } else {
            self.dtype
        }
    }

    /// Encoder over `src` `(B, Ls)` = `[t, (class), x_t]` → context `(B, Ls, dim)`, after the
    /// encoder's final LayerNorm, in the weights' dtype.
    pub fn encode(&self, src: &Tensor) -> Result<Tensor> {
        let ids = check_token_ids(src, self.cfg.enc_num_tokens, "encoder input (src)")?;
        let (_, ls) = ids.dims2()?;
        if ls == 0 || ls > self.cfg.enc_max_seq_len {
            candle_core::bail!(
                "encoder input (src) has length {ls}; it must be 1..={} (enc_max_seq_len)",
                self.cfg.enc_max_seq_len
            )
        }
        let mut h = embed(&self.enc_tok, &ids)?.broadcast_add(&self.enc_pos.narrow(0, 0, ls)?)?;
        for block in &self.enc_blocks {
            h = block.forward(&h)?;
        }
        self.enc_norm.forward(&h)
    }

    /// Teacher-forced forward: `src` `(B, Ls)`, `tgt` `(B, Lt)` = `[0, y_0, …]` → logits
    /// `(B, Lt, dec_num_tokens)` f32 (with the residual term for the residual variant). Row i
    /// is the distribution of token i of x_{t−1}.
    pub fn forward(&self, src: &Tensor, tgt: &Tensor) -> Result<Tensor> {
        let mut cache = self.start(src)?;
        self.step(tgt, &mut cache)
    }

    /// Teacher-forced forward for training: the same logits as [`XTransformer::forward`]
    /// (up to rounding), computed without the key/value cache so that gradients flow to the
    /// weights when they are variables. Only the plain variant (the residual-scaled one keeps
    /// `log_scalors` outside the graph).
    pub fn forward_train(&self, src: &Tensor, tgt: &Tensor) -> Result<Tensor> {
        if self.residual.is_some() {
            candle_core::bail!("training the residual-scaled XTransformer is not supported")
        }
        let context = self.encode(src)?;
        let ids = check_token_ids(tgt, self.cfg.dec_num_tokens, "decoder input")?;
        let (_, n) = ids.dims2()?;
        if n == 0 || n > self.cfg.dec_max_seq_len {
            candle_core::bail!(
                "decoder input has length {n}; it must be 1..={} (dec_max_seq_len)",
                self.cfg.dec_max_seq_len
            )
        }
        let mut g = embed(&self.dec_tok, &ids)?.broadcast_add(&self.dec_pos.narrow(0, 0, n)?)?;
        let mask = causal_mask(n, 0, 0, &self.device)?;
        for block in &self.dec_blocks {
            g = block.forward_full(&g, mask.as_ref(), &context)?;
        }
        self.to_logits
            .forward(&self.dec_norm.forward(&g)?)?
            .to_dtype(DType::F32)
    }

    /// Runs the encoder once over `src` and precomputes the cross-attention keys/values of
    /// every decoder layer; keeps t and x_t for the residual term.
    pub fn start(&self, src: &Tensor) -> Result<DecoderCache> {
        self.device.with_context(|| self.start_in_pool(src))
    }

    fn start_in_pool(&self, src: &Tensor) -> Result<DecoderCache> {
        let context = self.encode(src)?;
        let (batch, ls, _) = context.dims3()?;
        let cache_dtype = self.cache_dtype();
        let cross = self
            .dec_blocks
            .iter()
            .map(|b| {
                let (k, v) = b.cross_attn.context_kv(&context)?;
                Ok((k.to_dtype(cache_dtype)?, v.to_dtype(cache_dtype)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let self_kv = self
            .dec_blocks
            .iter()
            .map(|_| {
                KvCache::new(
                    batch,
                    self.cfg.dec_heads,
                    self.cfg.dec_max_seq_len,
                    self.cfg.dim_head,
                    cache_dtype,
                    &self.device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let residual = match &self.residual {
            None => None,
            Some(r) => Some(self.residual_state(r, src, ls)?),
        };
        Ok(DecoderCache {
            cross,
            self_kv,
            residual,
            len: 0,
            batch,
        })
    }

    fn residual_state(&self, r: &Residual, src: &Tensor, ls: usize) -> Result<ResidualState> {
        if r.scale_pos >= ls || r.xt_start + r.xt_size > ls {
            candle_core::bail!(
                "encoder input (src) of length {ls} has no scale token at {} or no x_t at {}..{}",
                r.scale_pos,
                r.xt_start,
                r.xt_start + r.xt_size
            )
        }
        let k = self.cfg.dec_num_tokens as f64;
        let ts = src
            .i((.., r.scale_pos))?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        let batch = ts.len();
        let (mut scale, mut hit, mut miss) = (
            Vec::with_capacity(batch),
            Vec::with_capacity(batch),
            Vec::with_capacity(batch),
        );
        for &t in &ts {
            let (Some(&log_scalor), Some(&alpha)) = (
                usize::try_from(t - 1)
                    .ok()
                    .and_then(|i| r.log_scalors.get(i)),
                usize::try_from(t).ok().and_then(|i| r.alphas.get(i)),
            ) else {
                candle_core::bail!(
                    "residual term: scale token t = {t} at src position {} is out of range \
                     (1..={} for log_scalors, 0..{} for the α table)",
                    r.scale_pos,
                    r.log_scalors.len(),
                    r.alphas.len()
                )
            };
            let alpha = alpha as f64;
            scale.push(log_scalor.exp());
            hit.push((alpha + (1.0 - alpha) / k).ln() as f32);
            miss.push(((1.0 - alpha) / k).ln() as f32);
        }
        let col = |v: Vec<f32>| Tensor::from_vec(v, (batch, 1, 1), &self.device);
        Ok(ResidualState {
            xt: src
                .narrow(1, r.xt_start, r.xt_size)?
                .to_dtype(DType::U32)?
                .contiguous()?,
            scale: col(scale)?,
            hit: col(hit)?,
            miss: col(miss)?,
        })
    }

    /// Feeds `tokens` `(B, n)`, n ≥ 1, at decoder positions `cache.len()..cache.len()+n`,
    /// appending their self-attention keys/values, and returns their logits `(B, n, K)` f32
    /// (with the residual term). Feeding several known tokens at once equals feeding them one
    /// by one. On error the cache is left as it was.
    pub fn step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        // Inside candle's pool, so the ~30 parallel products of a step are handed between
        // warm workers instead of waking them from this thread each time.
        self.device
            .with_context(|| self.step_in_pool(tokens, cache))
    }

    /// The logits of [`XTransformer::forward`] at decoder positions `at` `(P,)` u32 only:
    /// `(B, P, K)` f32. The vocabulary projection — most of a long teacher-forced pass's output
    /// — runs for those rows alone (the residual variant computes all and selects).
    pub fn forward_at(&self, src: &Tensor, tgt: &Tensor, at: &Tensor) -> Result<Tensor> {
        if self.residual.is_some() {
            return self.forward(src, tgt)?.index_select(at, 1);
        }
        self.device.with_context(|| {
            let mut cache = self.start_in_pool(src)?;
            let g = self.decode_in_pool(tgt, &mut cache)?;
            self.to_logits
                .forward(&self.dec_norm.forward(&g.index_select(at, 1)?)?)?
                .to_dtype(DType::F32)
        })
    }

    fn step_in_pool(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let g = self.decode_in_pool(tokens, cache)?;
        let (b, n, _) = g.dims3()?;
        let pos = cache.len - n;
        let logits = self
            .to_logits
            .forward(&self.dec_norm.forward(&g)?)?
            .to_dtype(DType::F32)?;
        Ok(match &cache.residual {
            None => logits,
            Some(r) => {
                let k = self.cfg.dec_num_tokens;
                let classes = Tensor::arange(0u32, k as u32, &self.device)?.reshape((1, 1, k))?;
                let is_xt =
                    r.xt.narrow(1, pos, n)?
                        .unsqueeze(2)?
                        .broadcast_eq(&classes)?;
                // log(α·onehot + (1−α)/K), selected rather than computed so that α = 1
                // gives 0 / −∞ like the official code, not NaN.
                let term = is_xt.where_cond(
                    &r.hit.broadcast_as((b, n, k))?,
                    &r.miss.broadcast_as((b, n, k))?,
                )?;
                (logits.broadcast_mul(&r.scale)? + term)?
            }
        })
    }

    /// The decoder blocks over `tokens` at positions `cache.len()..`: their hidden states
    /// `(B, n, dim)` before the final norm; advances the cache.
    fn decode_in_pool(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let ids = check_token_ids(tokens, self.cfg.dec_num_tokens, "decoder input")?;
        let (b, n) = ids.dims2()?;
        if b != cache.batch {
            candle_core::bail!(
                "decoder input has batch size {b}, the cache was started with {}",
                cache.batch
            )
        }
        if n == 0 {
            candle_core::bail!("decoder input is empty: feed at least one token")
        }
        let pos = cache.len;
        if cache.self_kv.len() != self.dec_blocks.len()
            || cache.cross.len() != self.dec_blocks.len()
        {
            candle_core::bail!("decoder cache was made by a network of another depth")
        }
        if self.residual.is_some() != cache.residual.is_some() {
            candle_core::bail!("decoder cache was made by a network of another variant")
        }
        if pos + n > self.cfg.dec_max_seq_len {
            candle_core::bail!(
                "decoder input too long: positions {pos}..{} exceed dec_max_seq_len {}",
                pos + n,
                self.cfg.dec_max_seq_len
            )
        }
        if let Some(r) = &self.residual
            && pos + n > r.xt_size
        {
            candle_core::bail!(
                "decoder positions {pos}..{} exceed xt_size {} (the residual term has no x_t \
                 token there)",
                pos + n,
                r.xt_size
            )
        }
        let mut g = embed(&self.dec_tok, &ids)?.broadcast_add(&self.dec_pos.narrow(0, pos, n)?)?;
        let mask = causal_mask(n, pos, 0, &self.device)?;
        for ((block, kv), cross) in self
            .dec_blocks
            .iter()
            .zip(cache.self_kv.iter_mut())
            .zip(cache.cross.iter())
        {
            g = block.step(&g, pos, mask.as_ref(), kv, cross)?;
        }
        cache.len = pos + n;
        Ok(g)
    }
}
