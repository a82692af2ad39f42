//! The decoder-only last stage T: Karpathy's minGPT as used by ImageBART
//! (`imagebart/modules/transformer/mingpt.py`, class `GPT`, at CompVis/imagebart c11ea83).
//!
//! `x = tok_emb[idx] + pos_emb[:, :L]`; `n_layer` pre-LN blocks of (attention with biased
//! key/query/value/proj and `head_dim = n_embd / n_head`, MLP `Linear → GELU (erf) → Linear`);
//! `ln_f`; `head` without bias. The attention mask is lower-triangular with the top-left
//! `n_unmasked × n_unmasked` block fully visible (the scale and class tokens of the
//! class-conditional models see each other).
//!
//! [`Gpt::step`] decodes incrementally with a preallocated key/value cache ([`GptCache`]) and
//! applies the same mask rule at absolute positions, so cached decoding equals the full forward.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{
    FeedForward, KvCache, LayerNorm, Linear, MapLinear, attention, causal_mask,
    check_compute_dtype, check_token_ids, embed, merge_heads, self_attention, split_heads,
};

/// `model.params.transformer_config.params` of a minGPT stage. The dropout keys
/// (`embd_pdrop`, `resid_pdrop`, `attn_pdrop`) are accepted and ignored (inference).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Output vocabulary (K): rows of `head`.
    pub vocab_size: usize,
    /// Rows of the position table: the longest input.
    pub block_size: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Model width.
    pub n_embd: usize,
    /// Size of the input token table when it differs from `vocab_size` (class-conditional
    /// models embed class ids 0..1000 with the image codes).
    #[serde(default)]
    pub input_vocab_size: Option<usize>,
    /// Side of the top-left block of the attention mask that is fully visible.
    #[serde(default)]
    pub n_unmasked: usize,
}

impl GptConfig {
    /// Rows of the input token table.
    pub fn input_vocab(&self) -> usize {
        self.input_vocab_size.unwrap_or(self.vocab_size)
    }
}

/// minGPT `CausalSelfAttention` with fused `[query; key; value]`.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

/// minGPT `Block`.
#[derive(Debug, Clone)]
struct Block {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    mlp: FeedForward,
}

impl Block {
    fn new(vb: VarBuilder, cfg: &GptConfig) -> Result<Self> {
        let n = cfg.n_embd;
        let a = vb.pp("attn");
        let m = vb.pp("mlp");
        Ok(Self {
            ln1: LayerNorm::new(vb.pp("ln1"), n)?,
            attn: SelfAttention {
                qkv: Linear::fused(&[a.pp("query"), a.pp("key"), a.pp("value")], n, n, true)?,
                proj: Linear::new(a.pp("proj"), n, n, true)?,
                heads: cfg.n_head,
                scale: 1.0 / ((n / cfg.n_head) as f64).sqrt(),
            },
            ln2: LayerNorm::new(vb.pp("ln2"), n)?,
            mlp: FeedForward::new(m.pp("0"), m.pp("2"), n, 4 * n)?,
        })
    }

    fn step(
        &self,
        x: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let parts = split_heads(
            &self.attn.qkv.forward(&self.ln1.forward(x)?)?,
            3,
            self.attn.heads,
        )?;
        let Ok([q, k, v]) = <[Tensor; 3]>::try_from(parts) else {
            candle_core::bail!("gpt attention: split failed")
        };
        let (k, v) = cache.write(pos, &k, &v)?;
        let a = attention(&q, &k, &v, self.attn.scale, mask)?;
        let x = (x + self.attn.proj.forward(&merge_heads(&a)?)?)?;
        &x + self.mlp.forward(&self.ln2.forward(&x)?)?
    }

    fn map_linears(&self, f: &mut MapLinear) -> Result<Self> {
        Ok(Self {
            attn: SelfAttention {
                qkv: f(&self.attn.qkv)?,
                proj: f(&self.attn.proj)?,
                ..self.attn.clone()
            },
            mlp: self.mlp.map_linears(f)?,
            ..self.clone()
        })
    }

    fn weight_bytes(&self) -> usize {
        self.attn.qkv.weight_bytes() + self.attn.proj.weight_bytes() + self.mlp.weight_bytes()
    }

    /// The whole sequence at once without a cache (training).
    fn forward_full(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.attn.qkv.forward(&self.ln1.forward(x)?)?;
        let a = self_attention(&qkv, self.attn.heads, self.attn.scale, mask)?;
        let x = (x + self.attn.proj.forward(&a)?)?;
        &x + self.mlp.forward(&self.ln2.forward(&x)?)?
    }
}

/// Decoding state of one batch of jobs for a [`Gpt`]: per-layer key/value caches (allocated at
/// the first step, when the batch size is known) and the first `n_unmasked` token ids.
///
/// Not `Clone` (written in place); use [`GptCache::try_clone`].
#[derive(Debug, Default)]
pub struct GptCache {
    layers: Vec<KvCache>,
    /// The ids at positions `0..min(len, n_unmasked)`, `(B, ·)` u32; needed to recompute the
    /// fully visible block when it is fed in several calls.
    unmasked_ids: Option<Tensor>,
    len: usize,
}

impl GptCache {
    /// Number of positions fed so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything: the next step starts at position 0 (the batch size may change).
    pub fn reset(&mut self) {
        self.layers.clear();
        self.unmasked_ids = None;
        self.len = 0;
    }

    /// Batch size, once the first step has run.
    pub fn batch_size(&self) -> Option<usize> {
        self.layers.first().map(KvCache::batch_size)
    }

    /// A cache whose batch row `r` is row `idx[r]` of this one (u32 or i64 indices, repeats
    /// allowed). The result is independent of `self`.
    pub fn index_select_batch(&self, idx: &Tensor) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|c| c.index_select_batch(idx))
                .collect::<Result<_>>()?,
            unmasked_ids: self
                .unmasked_ids
                .as_ref()
                .map(|t| t.index_select(idx, 0))
                .transpose()?,
            len: self.len,
        })
    }

    /// A deep copy, independent of `self`.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(KvCache::try_clone)
                .collect::<Result<_>>()?,
            unmasked_ids: self.unmasked_ids.clone(),
            len: self.len,
        })
    }
}

/// The minGPT network of the last stage.
#[derive(Debug, Clone)]
pub struct Gpt {
    cfg: GptConfig,
    tok_emb: Tensor,
    /// `pos_emb[0]`, `(block_size, n_embd)`.
    pos_emb: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    dtype: DType,
    device: Device,
}

impl Gpt {
    /// Loads the network from `vb` (official names: `tok_emb.weight`, `pos_emb`,
    /// `blocks.{i}.attn.key.weight`, …, `head.weight`). The `attn.mask` buffers are not read;
    /// the mask is recomputed from `n_unmasked`.
    pub fn new(vb: VarBuilder, cfg: &GptConfig) -> Result<Self> {
        if cfg.n_head == 0 || cfg.n_embd == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            candle_core::bail!(
                "gpt config: n_embd {} must be a positive multiple of n_head {}",
                cfg.n_embd,
                cfg.n_head
            )
        }
        let tok_emb = vb
            .pp("tok_emb")
            .get((cfg.input_vocab(), cfg.n_embd), "weight")?;
        check_compute_dtype(tok_emb.dtype(), vb.device())?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(vb.pp("blocks").pp(i), cfg))
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype: tok_emb.dtype(),
            tok_emb,
            pos_emb: vb
                .get((1, cfg.block_size, cfg.n_embd), "pos_emb")?
                .squeeze(0)?,
            blocks,
            ln_f: LayerNorm::new(vb.pp("ln_f"), cfg.n_embd)?,
            head: Linear::new(vb.pp("head"), cfg.n_embd, cfg.vocab_size, false)?,
            device: vb.device().clone(),
        })
    }

    /// This network with the weights of every linear layer (attention, MLP, head) quantized
    /// to `dtype` (e.g. `Q8_0`, `Q4K`); embeddings and LayerNorms stay as they are. The
    /// network must compute in f32.
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
            blocks: self
                .blocks
                .iter()
                .map(|b| b.map_linears(f))
                .collect::<Result<_>>()?,
            head: f(&self.head)?,
            ..self.clone()
        })
    }

    /// Bytes of weight one decoding step reads (every linear layer once).
    pub fn step_weight_bytes(&self) -> usize {
        self.blocks.iter().map(Block::weight_bytes).sum::<usize>() + self.head.weight_bytes()
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The dtype of the weights (the compute dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype of the key/value caches: the compute dtype, except f16 for a quantized
    /// network on the CPU (see [`crate::xtransformer::XTransformer::cache_dtype`]).
    pub fn cache_dtype(&self) -> DType {
        let quantized =
            self.head.is_quantized() || self.blocks.iter().any(|b| b.attn.qkv.is_quantized());
        if quantized && self.dtype == DType::F32 && matches!(self.device, Device::Cpu) {
            DType::F16
        } else {
            self.dtype
        }
    }

    /// An empty cache for [`Gpt::step`].
    pub fn new_cache(&self) -> GptCache {
        GptCache::default()
    }

    /// Full forward with the training mask: `idx` `(B, L)` → logits `(B, L, vocab_size)` f32.
    pub fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        let mut cache = self.new_cache();
        self.step(idx, &mut cache)
    }

    /// Full forward for training: the same logits as [`Gpt::forward`] (up to rounding),
    /// computed without the key/value cache so that gradients flow to the weights when they
    /// are variables.
    pub fn forward_train(&self, idx: &Tensor) -> Result<Tensor> {
        let ids = check_token_ids(idx, self.cfg.input_vocab(), "GPT input (idx)")?;
        let (_, n) = ids.dims2()?;
        if n == 0 || n > self.cfg.block_size {
            candle_core::bail!(
                "GPT input has length {n}; it must be 1..={} (block_size)",
                self.cfg.block_size
            )
        }
        let mut x = embed(&self.tok_emb, &ids)?.broadcast_add(&self.pos_emb.narrow(0, 0, n)?)?;
        let mask = causal_mask(n, 0, self.cfg.n_unmasked, &self.device)?;
        for block in &self.blocks {
            x = block.forward_full(&x, mask.as_ref())?;
        }
        self.head
            .forward(&self.ln_f.forward(&x)?)?
            .to_dtype(DType::F32)
    }

    /// Feeds `idx` `(B, n)`, n ≥ 1, at positions `cache.len()..cache.len()+n` and returns their
    /// logits `(B, n, vocab_size)` f32, with the training mask at absolute positions. Feeding
    /// several tokens at once equals feeding them one by one, except inside the fully visible
    /// `n_unmasked` block: its rows see the whole block, so a block fed in pieces is recomputed
    /// when its later tokens arrive (rows returned before that saw only the tokens known then).
    /// On error the cache is left as it was.
    pub fn step(&self, idx: &Tensor, cache: &mut GptCache) -> Result<Tensor> {
        // Inside candle's pool, so the ~25 parallel products of a step are handed between
        // warm workers instead of waking them from this thread each time.
        self.device.with_context(|| self.step_in_pool(idx, cache))
    }

    fn step_in_pool(&self, idx: &Tensor, cache: &mut GptCache) -> Result<Tensor> {
        let ids = check_token_ids(idx, self.cfg.input_vocab(), "GPT input (idx)")?;
        let (b, n) = ids.dims2()?;
        if n == 0 {
            candle_core::bail!("GPT input is empty: feed at least one token")
        }
        if let Some(cb) = cache.batch_size()
            && cb != b
        {
            candle_core::bail!("GPT input has batch size {b}, the cache holds {cb}")
        }
        let pos = cache.len;
        if pos + n > self.cfg.block_size {
            candle_core::bail!(
                "GPT input too long: positions {pos}..{} exceed block_size {}",
                pos + n,
                self.cfg.block_size
            )
        }
        if pos > 0 && pos < self.cfg.n_unmasked {
            // The fully visible block is being fed in pieces: recompute it as a whole.
            let Some(prev) = &cache.unmasked_ids else {
                candle_core::bail!("GPT cache lost the ids of its first positions")
            };
            let all = Tensor::cat(&[prev, &ids], 1)?;
            let mut fresh = self.new_cache();
            let logits = self.step_from_start(&all, &mut fresh)?;
            *cache = fresh;
            return logits.narrow(1, pos, n);
        }
        if pos == 0 {
            return self.step_from_start(&ids, cache);
        }
        self.run(&ids, pos, cache)
    }

    /// `step` at position 0 on an empty cache (allocates the layer caches).
    fn step_from_start(&self, ids: &Tensor, cache: &mut GptCache) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let hd = self.cfg.n_embd / self.cfg.n_head;
        let mut fresh = GptCache {
            layers: self
                .blocks
                .iter()
                .map(|_| {
                    KvCache::new(
                        b,
                        self.cfg.n_head,
                        self.cfg.block_size,
                        hd,
                        self.cache_dtype(),
                        &self.device,
                    )
                })
                .collect::<Result<_>>()?,
            unmasked_ids: None,
            len: 0,
        };
        let logits = self.run(ids, 0, &mut fresh)?;
        if self.cfg.n_unmasked > 0 {
            fresh.unmasked_ids = Some(ids.narrow(1, 0, n.min(self.cfg.n_unmasked))?.contiguous()?);
        }
        *cache = fresh;
        Ok(logits)
    }

    /// Runs the blocks for `ids` (u32, validated) at `pos..`, writing the layer caches, and
    /// advances `cache.len` on success.
    fn run(&self, ids: &Tensor, pos: usize, cache: &mut GptCache) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        if cache.layers.len() != self.blocks.len() {
            candle_core::bail!("GPT cache was made by a network of another depth")
        }
        let mut x = embed(&self.tok_emb, ids)?.broadcast_add(&self.pos_emb.narrow(0, pos, n)?)?;
        let mask = causal_mask(n, pos, self.cfg.n_unmasked, &self.device)?;
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.step(&x, pos, mask.as_ref(), kv)?;
        }
        let logits = self
            .head
            .forward(&self.ln_f.forward(&x)?)?
            .to_dtype(DType::F32)?;
        cache.len = pos + n;
        Ok(logits)
    }
}
