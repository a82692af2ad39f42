//! The trainable VQGAN: taming's `Encoder`, `Decoder`, `quant_conv`, `post_quant_conv` and the
//! codebook `quantize.embedding`, with the official parameter names and shapes so the weights
//! export straight into [`tessera_engine::vqgan::Vqgan`]. Parameters are candle `Var`s in a `VarMap`;
//! the modules hold the variables' tensors (same storage), so optimizer updates are seen.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use tessera_engine::vqgan::{DdConfig, VqganConfig};

use super::ops::{ConvW, NormW, conv2d, group_norm, softmax_last, upsample2};

const EPS: f64 = 1e-6;

/// `torch.nn.Conv2d` default init: U(±1/√fan_in) for weight and bias.
pub(crate) fn conv_param(vb: &VarBuilder, c_in: usize, c_out: usize, k: usize) -> Result<ConvW> {
    let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Ok(ConvW {
        weight: vb.get_with_hints((c_out, c_in, k, k), "weight", init)?,
        bias: vb.get_with_hints(c_out, "bias", init)?,
    })
}

/// A GroupNorm's parameters with its group count (`ddconfig.norm_groups`).
struct Norm {
    p: NormW,
    groups: usize,
}

impl Norm {
    fn forward(&self, x: &Tensor, swish: bool) -> Result<Tensor> {
        group_norm(x, &self.p, self.groups, EPS, swish)
    }
}

fn norm_param(vb: &VarBuilder, c: usize, groups: usize) -> Result<Norm> {
    if groups == 0 || !c.is_multiple_of(groups) {
        candle_core::bail!("vqgan: GroupNorm over {c} channels needs a multiple of {groups}");
    }
    Ok(Norm {
        p: NormW {
            weight: vb.get_with_hints(c, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.0))?,
        },
        groups,
    })
}

struct ResnetBlock {
    norm1: Norm,
    conv1: ConvW,
    norm2: Norm,
    conv2: ConvW,
    nin_shortcut: Option<ConvW>,
}

impl ResnetBlock {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, g: usize) -> Result<Self> {
        Ok(Self {
            norm1: norm_param(&vb.pp("norm1"), c_in, g)?,
            conv1: conv_param(&vb.pp("conv1"), c_in, c_out, 3)?,
            norm2: norm_param(&vb.pp("norm2"), c_out, g)?,
            conv2: conv_param(&vb.pp("conv2"), c_out, c_out, 3)?,
            nin_shortcut: match c_in != c_out {
                true => Some(conv_param(&vb.pp("nin_shortcut"), c_in, c_out, 1)?),
                false => None,
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x, true)?;
        let h = conv2d(&h, &self.conv1, 1, (1, 1))?;
        let h = self.norm2.forward(&h, true)?;
        let h = conv2d(&h, &self.conv2, 1, (1, 1))?;
        match &self.nin_shortcut {
            Some(s) => conv2d(x, s, 1, (0, 0))? + h,
            None => x + h,
        }
    }
}

struct AttnBlock {
    norm: Norm,
    q: ConvW,
    k: ConvW,
    v: ConvW,
    proj_out: ConvW,
}

impl AttnBlock {
    fn new(vb: VarBuilder, c: usize, g: usize) -> Result<Self> {
        Ok(Self {
            norm: norm_param(&vb.pp("norm"), c, g)?,
            q: conv_param(&vb.pp("q"), c, c, 1)?,
            k: conv_param(&vb.pp("k"), c, c, 1)?,
            v: conv_param(&vb.pp("v"), c, c, 1)?,
            proj_out: conv_param(&vb.pp("proj_out"), c, c, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x, false)?;
        let flat = |p: &ConvW| conv2d(&n, p, 1, (0, 0))?.reshape((b, c, h * w));
        let (q, k, v) = (flat(&self.q)?, flat(&self.k)?, flat(&self.v)?);
        let att = (q.transpose(1, 2)?.matmul(&k)? * (c as f64).powf(-0.5))?;
        let att = softmax_last(&att)?;
        let out = v.matmul(&att.t()?)?.reshape((b, c, h, w))?;
        x + conv2d(&out, &self.proj_out, 1, (0, 0))?
    }
}

struct Level {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    resample: Option<ConvW>,
}

impl Level {
    fn run_blocks(&self, mut h: Tensor) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(attn) = self.attn.get(i) {
                h = attn.forward(&h)?;
            }
        }
        Ok(h)
    }
}

struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(vb: VarBuilder, c: usize, g: usize) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(vb.pp("block_1"), c, c, g)?,
            attn_1: AttnBlock::new(vb.pp("attn_1"), c, g)?,
            block_2: ResnetBlock::new(vb.pp("block_2"), c, c, g)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.block_1.forward(x)?;
        self.block_2.forward(&self.attn_1.forward(&h)?)
    }
}

struct Encoder {
    conv_in: ConvW,
    down: Vec<Level>,
    mid: Mid,
    norm_out: Norm,
    conv_out: ConvW,
}

impl Encoder {
    fn new(vb: VarBuilder, dd: &DdConfig) -> Result<Self> {
        let g = dd.norm_groups;
        let conv_in = conv_param(&vb.pp("conv_in"), dd.in_channels, dd.ch, 3)?;
        let (mut curr_res, mut block_in) = (dd.resolution, dd.ch);
        let mut down = Vec::new();
        for (l, &mult) in dd.ch_mult.iter().enumerate() {
            let vb = vb.pp("down").pp(l);
            let block_out = dd.ch * mult;
            let (mut blocks, mut attn) = (Vec::new(), Vec::new());
            for i in 0..dd.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    vb.pp("block").pp(i),
                    block_in,
                    block_out,
                    g,
                )?);
                block_in = block_out;
                if dd.attn_resolutions.contains(&curr_res) {
                    attn.push(AttnBlock::new(vb.pp("attn").pp(i), block_in, g)?);
                }
            }
            let resample = if l + 1 != dd.ch_mult.len() {
                curr_res /= 2;
                Some(conv_param(
                    &vb.pp("downsample").pp("conv"),
                    block_in,
                    block_in,
                    3,
                )?)
            } else {
                None
            };
            down.push(Level {
                blocks,
                attn,
                resample,
            });
        }
        Ok(Self {
            conv_in,
            down,
            mid: Mid::new(vb.pp("mid"), block_in, g)?,
            norm_out: norm_param(&vb.pp("norm_out"), block_in, g)?,
            conv_out: conv_param(&vb.pp("conv_out"), block_in, dd.z_channels, 3)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = conv2d(x, &self.conv_in, 1, (1, 1))?;
        for level in &self.down {
            h = level.run_blocks(h)?;
            if let Some(conv) = &level.resample {
                // taming's Downsample: pad right/bottom by one, 3×3 stride 2, no padding.
                h = conv2d(&h, conv, 2, (0, 1))?;
            }
        }
        let h = self.mid.forward(&h)?;
        let h = self.norm_out.forward(&h, true)?;
        conv2d(&h, &self.conv_out, 1, (1, 1))
    }
}

struct Decoder {
    conv_in: ConvW,
    mid: Mid,
    /// Indexed by level as in the state dict (`up.0` is the full-resolution level).
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: ConvW,
}

impl Decoder {
    fn new(vb: VarBuilder, dd: &DdConfig) -> Result<Self> {
        let g = dd.norm_groups;
        let n_levels = dd.ch_mult.len();
        let mut block_in = dd.ch * dd.ch_mult[n_levels - 1];
        let mut curr_res = dd.resolution >> (n_levels - 1);
        let conv_in = conv_param(&vb.pp("conv_in"), dd.z_channels, block_in, 3)?;
        let mid = Mid::new(vb.pp("mid"), block_in, g)?;
        let mut up = Vec::new();
        for l in (0..n_levels).rev() {
            let vb = vb.pp("up").pp(l);
            let block_out = dd.ch * dd.ch_mult[l];
            let (mut blocks, mut attn) = (Vec::new(), Vec::new());
            for i in 0..=dd.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    vb.pp("block").pp(i),
                    block_in,
                    block_out,
                    g,
                )?);
                block_in = block_out;
                if dd.attn_resolutions.contains(&curr_res) {
                    attn.push(AttnBlock::new(vb.pp("attn").pp(i), block_in, g)?);
                }
            }
            let resample = if l != 0 {
                curr_res *= 2;
                Some(conv_param(
                    &vb.pp("upsample").pp("conv"),
                    block_in,
                    block_in,
                    3,
                )?)
            } else {
                None
            };
            up.push(Level {
                blocks,
                attn,
                resample,
            });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: norm_param(&vb.pp("norm_out"), block_in, g)?,
            conv_out: conv_param(&vb.pp("conv_out"), block_in, dd.out_ch, 3)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&conv2d(z, &self.conv_in, 1, (1, 1))?)?;
        for level in self.up.iter().rev() {
            h = level.run_blocks(h)?;
            if let Some(conv) = &level.resample {
                h = conv2d(&upsample2(&h)?, conv, 1, (1, 1))?;
            }
        }
        let h = self.norm_out.forward(&h, true)?;
        conv2d(&h, &self.conv_out, 1, (1, 1))
    }
}

/// Output of one training forward pass.
pub(crate) struct Forward {
    /// Reconstruction (B, 3, H, W).
    pub xrec: Tensor,
    /// Codebook loss + β · commitment loss (scalar).
    pub q_loss: Tensor,
    /// Chosen full codes, flat (B·h·w).
    pub codes: Vec<u32>,
    /// Pre-quantization latents as rows (B·h·w, embed_dim), detached.
    pub z_rows: Tensor,
}

/// taming's `VQModel` with `VectorQuantizer2` (no remap while training).
pub(crate) struct VqModel {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: ConvW,
    post_quant_conv: ConvW,
    /// `quantize.embedding.weight` (n_embed, embed_dim).
    pub embedding: Tensor,
    beta: f64,
}

impl VqModel {
    /// Creates (or, when `varmap` already holds them, reuses) the parameters.
    pub fn new(varmap: &VarMap, cfg: &VqganConfig, beta: f64, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let (dd, dec) = (&cfg.ddconfig, cfg.decoder_dd());
        let bound = 1.0 / cfg.n_embed as f64;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), dd)?,
            decoder: Decoder::new(vb.pp("decoder"), dec)?,
            quant_conv: conv_param(&vb.pp("quant_conv"), dd.z_channels, cfg.embed_dim, 1)?,
            post_quant_conv: conv_param(
                &vb.pp("post_quant_conv"),
                cfg.embed_dim,
                dec.z_channels,
                1,
            )?,
            embedding: vb.pp("quantize").pp("embedding").get_with_hints(
                (cfg.n_embed, cfg.embed_dim),
                "weight",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?,
            beta,
        })
    }

    /// Nearest full codes of latent rows (N, E): squared L2, as the engine computes them.
    pub fn nearest(&self, rows: &Tensor) -> Result<Tensor> {
        let e = self.embedding.detach();
        let d = rows
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_add(&e.sqr()?.sum_keepdim(1)?.t()?)?
            .sub(&(rows.matmul(&e.t()?)? * 2.0)?)?;
        d.argmin(1)
    }

    /// Encoder → quantizer (straight-through) → decoder.
    pub fn forward(&self, x: &Tensor) -> Result<Forward> {
        let z = conv2d(&self.encoder.forward(x)?, &self.quant_conv, 1, (0, 0))?;
        let (b, e, h, w) = z.dims4()?;
        let zf = z.permute((0, 2, 3, 1))?.reshape((b * h * w, e))?;
        let z_rows = zf.detach();
        let idx = self.nearest(&z_rows)?;
        let zq = self.embedding.index_select(&idx, 0)?;
        // Codebook term moves the codes, commitment term (β) the encoder.
        let codebook = (&zq - &z_rows)?.sqr()?.mean_all()?;
        let commit = (zq.detach() - &zf)?.sqr()?.mean_all()?;
        let q_loss = (codebook + (commit * self.beta)?)?;
        let zq_st = (&zf + (zq - &zf)?.detach())?;
        let zq_st = zq_st
            .reshape((b, h, w, e))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let xrec = self.decode(&zq_st)?;
        Ok(Forward {
            xrec,
            q_loss,
            codes: idx.to_vec1::<u32>()?,
            z_rows,
        })
    }

    /// `decoder(post_quant_conv(z_q))`.
    pub fn decode(&self, zq: &Tensor) -> Result<Tensor> {
        self.decoder
            .forward(&conv2d(zq, &self.post_quant_conv, 1, (0, 0))?)
    }

    /// Quantized latents (B, embed_dim, h, w) of images (B, 3, H, W), without gradient to the
    /// encoder or the codebook.
    pub fn quantized(&self, x: &Tensor) -> Result<Tensor> {
        let z = conv2d(&self.encoder.forward(x)?, &self.quant_conv, 1, (0, 0))?.detach();
        let (b, e, h, w) = z.dims4()?;
        let rows = z.permute((0, 2, 3, 1))?.reshape((b * h * w, e))?;
        let idx = self.nearest(&rows)?;
        self.embedding
            .detach()
            .index_select(&idx, 0)?
            .reshape((b, h, w, e))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// Pre-quantization latents of images (B, 3, H, W) as detached rows (B·h·w, embed_dim).
    pub fn encode_rows(&self, x: &Tensor) -> Result<Tensor> {
        let z = conv2d(&self.encoder.forward(x)?, &self.quant_conv, 1, (0, 0))?.detach();
        let (b, e, h, w) = z.dims4()?;
        z.permute((0, 2, 3, 1))?.reshape((b * h * w, e))
    }

    /// Full codes, raster order per image, for images (B, 3, H, W), without gradient.
    pub fn encode_codes(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.nearest(&self.encode_rows(x)?)?.to_vec1::<u32>()
    }
}
