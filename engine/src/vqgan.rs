//! The VQGAN first stage: images ↔ remapped codebook tokens.
//!
//! A port of taming-transformers' `VQModel` (`Encoder`, `Decoder`, `VectorQuantizer2` with
//! `remap`) as ImageBART's `VQGANWrapper` uses it. Token ids everywhere else in the engine are
//! *remapped* ids: positions in the `quantize.used` table, not rows of the full codebook.
//!
//! On the CPU in float32 the convolutions run through the kernels in `vqgan/cpu.rs` (Winograd
//! F(4×4, 3×3) with GroupNorm, swish, upsampling and residual adds fused in); they keep only the
//! transformed 3×3 weights, 4× the size of the plain ones (about 1 GB for a released VQGAN).
//! Other devices and dtypes use candle ops.

mod blocks;
mod cpu;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use blocks::{Conv, Decoder, Encoder};

/// Mirrors `first_stage_config.params` of an official model YAML.
///
/// Other keys found there (`ckpt_path`, `remap`, `sane_index_shape`, `lossconfig`, …) are
/// accepted and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqganConfig {
    /// Width of a codebook entry (channels of the quantized latent).
    pub embed_dim: usize,
    /// Number of entries in the full codebook.
    pub n_embed: usize,
    /// Encoder/decoder architecture.
    pub ddconfig: DdConfig,
    /// Tessera extension, absent from every official release: the decoder's own architecture
    /// when it differs from the encoder's (a deeper decoder fine-tuned behind a frozen encoder
    /// and codebook). `None`: taming's single `ddconfig` for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_ddconfig: Option<DdConfig>,
}

/// Mirrors `ddconfig`, the `Encoder`/`Decoder` hyper-parameters.
///
/// `tanh_out` and other unknown keys are ignored, as taming's `**ignorekwargs` does: the official
/// code path never applies a tanh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdConfig {
    /// The encoder outputs `2 * z_channels` (mean and log-variance); false for every VQGAN.
    #[serde(default)]
    pub double_z: bool,
    /// Channels of the encoder output / decoder input.
    pub z_channels: usize,
    /// Training image size; decides where attention blocks sit.
    pub resolution: usize,
    /// Image channels into the encoder.
    pub in_channels: usize,
    /// Image channels out of the decoder.
    pub out_ch: usize,
    /// Base channel count.
    pub ch: usize,
    /// Channel multiplier per resolution level; one downsampling between consecutive levels.
    pub ch_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Resolutions (in the `resolution` frame) that get an attention block after each res block.
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability; inference ignores it.
    #[serde(default)]
    pub dropout: f64,
    /// Groups of every GroupNorm: taming hard-codes 32; Tessera's own narrow first stage
    /// (ch = 32) uses fewer, since 32 groups of one channel would be an instance norm.
    #[serde(default = "default_norm_groups")]
    pub norm_groups: usize,
}

fn default_norm_groups() -> usize {
    32
}

impl VqganConfig {
    /// Spatial downsampling factor f = 2^(len(ch_mult) − 1).
    pub fn downsample_factor(&self) -> usize {
        1 << self.ddconfig.ch_mult.len().saturating_sub(1).min(63)
    }

    /// Side of the latent grid for a `resolution`-sized image: resolution / f.
    pub fn latent_size(&self) -> usize {
        self.ddconfig.resolution / self.downsample_factor()
    }

    /// The decoder's architecture: [`Self::decoder_ddconfig`] if set, else `ddconfig`.
    pub fn decoder_dd(&self) -> &DdConfig {
        self.decoder_ddconfig.as_ref().unwrap_or(&self.ddconfig)
    }

    /// Rejects configurations the architecture cannot be built from (instead of panicking later).
    fn validate(&self) -> Result<()> {
        validate_dd(&self.ddconfig, self.embed_dim, self.n_embed)?;
        if let Some(dec) = &self.decoder_ddconfig {
            validate_dd(dec, self.embed_dim, self.n_embed)
                .map_err(|e| candle_core::Error::Msg(format!("decoder_ddconfig: {e}")))?;
            let dd = &self.ddconfig;
            if dec.ch_mult.len() != dd.ch_mult.len() || dec.resolution != dd.resolution {
                candle_core::bail!(
                    "vqgan: decoder_ddconfig must keep the encoder's resolution ({}) and number \
                     of levels ({}), got {} and {}",
                    dd.resolution,
                    dd.ch_mult.len(),
                    dec.resolution,
                    dec.ch_mult.len()
                );
            }
        }
        Ok(())
    }
}

/// Checks one `ddconfig` (with the codebook sizes of its VQGAN).
fn validate_dd(dd: &DdConfig, embed_dim: usize, n_embed: usize) -> Result<()> {
    if dd.ch_mult.is_empty() || dd.ch_mult.len() > 16 {
        candle_core::bail!(
            "vqgan: ch_mult must have 1 to 16 entries, got {:?}",
            dd.ch_mult
        );
    }
    let sizes = [
        embed_dim,
        n_embed,
        dd.z_channels,
        dd.ch,
        dd.in_channels,
        dd.out_ch,
    ];
    if sizes.contains(&0) {
        candle_core::bail!(
            "vqgan: embed_dim, n_embed, z_channels, ch, in_channels and out_ch must be positive"
        );
    }
    if dd.double_z {
        // quant_conv takes z_channels inputs, so taming's VQModel cannot run with double_z.
        candle_core::bail!("vqgan: double_z = true is not supported by VQModel");
    }
    let g = dd.norm_groups;
    if g == 0 || !dd.ch.is_multiple_of(g) {
        candle_core::bail!(
            "vqgan: ch = {} must be a multiple of norm_groups = {g}",
            dd.ch
        );
    }
    for &m in &dd.ch_mult {
        if m == 0 || !(dd.ch * m).is_multiple_of(g) {
            candle_core::bail!(
                "vqgan: ch * ch_mult must be a positive multiple of norm_groups = {g} \
                     (GroupNorm), got {}",
                dd.ch * m
            );
        }
    }
    Ok(())
}

/// The VQGAN: encoder, quantizer with remap table, decoder.
pub struct Vqgan {
    cfg: VqganConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
    /// Full codebook (n_embed, embed_dim) in the model dtype.
    embedding: Tensor,
    /// Full codebook in f32, for the distance computation.
    embedding_f32: Tensor,
    /// ‖e‖² per full codebook entry.
    embedding_sq: Tensor,
    /// The remap table: `used[i]` is the full code of remapped token i.
    used: Vec<u32>,
    /// Inverse of `used`: position of a full code in the table (first occurrence), if any.
    position_of: Vec<Option<u32>>,
}

impl Vqgan {
    /// Builds the VQGAN from weights rooted at the model (official key names without the
    /// `first_stage_model.` prefix: `encoder.conv_in.weight`, `quantize.embedding.weight`,
    /// `quantize.used`, `post_quant_conv.weight`, …). `n_used` is K, the length of the remap table
    /// `quantize.used` (int64). Computation runs in the dtype of `vb`.
    pub fn new(vb: VarBuilder, cfg: &VqganConfig, n_used: usize) -> Result<Self> {
        cfg.validate()?;
        let dd = &cfg.ddconfig;
        let encoder = Encoder::new(vb.pp("encoder"), dd)?;
        let dec = cfg.decoder_dd();
        let decoder = Decoder::new(vb.pp("decoder"), dec)?;
        let quant_conv = Conv::new(vb.pp("quant_conv"), dd.z_channels, cfg.embed_dim, 1)?;
        let post_quant_conv =
            Conv::new(vb.pp("post_quant_conv"), cfg.embed_dim, dec.z_channels, 1)?;
        let qvb = vb.pp("quantize");
        let embedding = qvb
            .pp("embedding")
            .get((cfg.n_embed, cfg.embed_dim), "weight")?;
        let embedding_f32 = embedding.to_dtype(DType::F32)?;
        let embedding_sq = embedding_f32.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;

        if n_used == 0 {
            candle_core::bail!("vqgan: the remap table quantize.used is empty");
        }
        let used_t = qvb.get_with_hints_dtype(n_used, "used", Init::Const(0.), DType::I64)?;
        let mut used = Vec::with_capacity(n_used);
        let mut position_of = vec![None; cfg.n_embed];
        for (i, &code) in used_t.to_vec1::<i64>()?.iter().enumerate() {
            let code = usize::try_from(code)
                .ok()
                .filter(|&c| c < cfg.n_embed)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "vqgan: quantize.used[{i}] = {code} is outside the codebook [0, {})",
                        cfg.n_embed
                    ))
                })?;
            used.push(code as u32);
            // The official `remap_to_used` takes the first match (argmax of a 0/1 vector).
            if position_of[code].is_none() {
                position_of[code] = Some(i as u32);
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            embedding,
            embedding_f32,
            embedding_sq,
            used,
            position_of,
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &VqganConfig {
        &self.cfg
    }

    /// The remap table: `used()[i]` is the full-codebook entry of remapped token i.
    pub fn used(&self) -> &[u32] {
        &self.used
    }

    /// K, the number of remapped tokens (length of the remap table).
    pub fn n_used(&self) -> usize {
        self.used.len()
    }

    /// `quant_conv(encoder(x))`: images (B, 3, R, R) in [-1, 1] → latents (B, embed_dim, r, r)
    /// before quantization, in the model dtype.
    pub fn encode_prequant(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if h < 2 || w < 2 {
            candle_core::bail!("vqgan: image of {h}×{w} pixels is too small to encode");
        }
        if c != self.cfg.ddconfig.in_channels {
            candle_core::bail!(
                "vqgan: image has {c} channels, the encoder expects {}",
                self.cfg.ddconfig.in_channels
            );
        }
        let x = x.to_dtype(self.embedding.dtype())?;
        self.quant_conv.forward(&self.encoder.forward(&x)?)
    }

    /// Squared distances (in f32) of every latent vector of `h` (B, E, h, w) to every full
    /// codebook entry, as the official code computes them: ‖z‖² + ‖e‖² − 2 z·e.
    /// Returns the row-major (B·h·w, n_embed) matrix, batch count and tokens per image.
    fn distances(&self, h: &Tensor) -> Result<(Vec<f32>, usize, usize)> {
        let (b, e, hh, ww) = h.dims4()?;
        if e != self.cfg.embed_dim {
            candle_core::bail!(
                "vqgan: latent has {e} channels, expected {}",
                self.cfg.embed_dim
            );
        }
        let z = h
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .reshape((b * hh * ww, e))?;
        let zz = z.sqr()?.sum_keepdim(1)?;
        let ze = z.matmul(&self.embedding_f32.t()?)?;
        let d = zz.broadcast_add(&self.embedding_sq)?.sub(&(ze * 2.0)?)?;
        Ok((d.flatten_all()?.to_vec1::<f32>()?, b, hh * ww))
    }

    /// Index of the first minimum of `row` among `candidates` (all entries when `None`).
    fn argmin(row: &[f32], candidates: Option<&[u32]>) -> u32 {
        let mut best = (0u32, f32::INFINITY);
        match candidates {
            None => row.iter().enumerate().for_each(|(i, &d)| {
                if d < best.1 || i == 0 {
                    best = (i as u32, d);
                }
            }),
            Some(c) => c.iter().enumerate().for_each(|(i, &full)| {
                let d = row[full as usize];
                if d < best.1 || i == 0 {
                    best = (i as u32, d);
                }
            }),
        }
        best.0
    }

    /// Nearest entry of the *full* codebook (squared L2, first minimum on ties, distances in f32)
    /// for each latent vector of `h` (B, embed_dim, r, r), in raster order: (B, r·r) u32.
    pub fn nearest_codes(&self, h: &Tensor) -> Result<Tensor> {
        let (d, b, l) = self.distances(h)?;
        let n = self.cfg.n_embed;
        let codes: Vec<u32> = d.chunks(n).map(|row| Self::argmin(row, None)).collect();
        Tensor::from_vec(codes, (b, l), h.device())
    }

    /// Maps full codes (B, L) (u32 or i64) to positions in the remap table.
    ///
    /// Returns `(remapped, in_used)`: remapped tokens (B, L) u32 and a (B, L) u8 mask that is 1
    /// where the full code is in the table. The official `remap_to_used` replaces a code outside
    /// the table by a *uniformly random* position; here it becomes, deterministically, the table
    /// entry whose codebook vector is nearest to the latent vector itself (the argmin of the
    /// distance to `h` restricted to used entries, first minimum on ties). `h` (B, embed_dim, r, r)
    /// is the latent the codes came from and is only read when some code is outside the table.
    pub fn remap(&self, h: &Tensor, full: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l) = full.dims2()?;
        let codes = full.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        let (remapped, in_used) = self.remap_codes(&codes, || {
            let (d, hb, hl) = self.distances(h)?;
            if (hb, hl) != (b, l) {
                candle_core::bail!("vqgan: latent has {hb}×{hl} vectors, codes are {b}×{l}");
            }
            Ok(d)
        })?;
        let dev = full.device();
        Ok((
            Tensor::from_vec(remapped, (b, l), dev)?,
            Tensor::from_vec(in_used, (b, l), dev)?,
        ))
    }

    /// Remaps flat full codes; `distances` is called at most once, when a code is not in the
    /// table.
    fn remap_codes(
        &self,
        codes: &[i64],
        distances: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<(Vec<u32>, Vec<u8>)> {
        let mut remapped = Vec::with_capacity(codes.len());
        let mut in_used = Vec::with_capacity(codes.len());
        let mut missing = Vec::new();
        for (i, &code) in codes.iter().enumerate() {
            let pos = usize::try_from(code)
                .ok()
                .and_then(|c| self.position_of.get(c))
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "vqgan: code {code} is outside the codebook [0, {})",
                        self.cfg.n_embed
                    ))
                })?;
            remapped.push(pos.unwrap_or(0));
            in_used.push(pos.is_some() as u8);
            if pos.is_none() {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let d = distances()?;
            let n = self.cfg.n_embed;
            for i in missing {
                let row = d.get(i * n..(i + 1) * n).ok_or_else(|| {
                    candle_core::Error::Msg("vqgan: latent and codes disagree in size".into())
                })?;
                remapped[i] = Self::argmin(row, Some(&self.used));
            }
        }
        Ok((remapped, in_used))
    }

    /// Images (B, 3, R, R) in [-1, 1] → remapped tokens (B, r·r) u32, raster order.
    /// Codes outside the remap table follow the rule documented at [`Vqgan::remap`].
    pub fn encode_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.encode_prequant(x)?;
        let (d, b, l) = self.distances(&h)?;
        let n = self.cfg.n_embed;
        let codes: Vec<i64> = d
            .chunks(n)
            .map(|row| Self::argmin(row, None) as i64)
            .collect();
        let (remapped, _) = self.remap_codes(&codes, move || Ok(d))?;
        Tensor::from_vec(remapped, (b, l), x.device())
    }

    /// Codebook vectors of remapped tokens (B, r·r) (u32 or i64): `embedding[used[token]]`
    /// arranged as latents (B, embed_dim, r, r) in the model dtype. The token count must be a
    /// square.
    pub fn embed_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, l) = tokens.dims2()?;
        let r = (l as f64).sqrt().round() as usize;
        if r * r != l || l == 0 {
            candle_core::bail!("vqgan: {l} tokens per image do not form a square grid");
        }
        let toks = tokens
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let full = toks
            .iter()
            .map(|&t| {
                usize::try_from(t)
                    .ok()
                    .and_then(|t| self.used.get(t).copied())
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "vqgan: token {t} is outside [0, {})",
                            self.used.len()
                        ))
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let ids = Tensor::from_vec(full, b * l, self.embedding.device())?;
        self.embedding
            .index_select(&ids, 0)?
            .reshape((b, r, r, self.cfg.embed_dim))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// Remapped tokens (B, r·r) (u32 or i64) → images (B, 3, R, R): `used[token]` → codebook →
    /// `post_quant_conv` → decoder. No clamp and no tanh (the official output, nominally in
    /// [-1, 1]).
    pub fn decode_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let z = self.embed_tokens(tokens)?;
        self.decoder.forward(&self.post_quant_conv.forward(&z)?)
    }
}
