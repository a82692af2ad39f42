//! Encoder/decoder building blocks of taming's `diffusionmodules/model.py`, with the official
//! parameter names.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::DdConfig;
use super::cpu;

/// A convolution with bias; the variant records how it is computed.
pub(crate) enum Conv {
    /// 1×1: a matmul, weight (out, in).
    Pointwise { weight: Tensor, bias: Tensor },
    /// 3×3, stride 1, zero padding 1, through candle (other devices and dtypes).
    Same { weight: Tensor, bias: Tensor },
    /// 3×3, stride 1, zero padding 1, as Winograd on the CPU in f32. Only the transformed
    /// weights are kept (4× the plain ones: the released VQGAN holds about 1 GB of them).
    Winograd(cpu::Winograd),
    /// taming's `Downsample`: zero-pad right and bottom by 1, then 3×3 stride 2 padding 0.
    Down {
        weight: Tensor,
        bias: Tensor,
        fast: Option<cpu::Strided>,
    },
}

impl Conv {
    /// A 1×1 or 3×3 (stride 1, padding 1) convolution named like `torch.nn.Conv2d`.
    pub(crate) fn new(vb: VarBuilder, c_in: usize, c_out: usize, k: usize) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        if k == 1 {
            let weight = weight.reshape((c_out, c_in))?;
            let bias = bias.reshape((c_out, 1))?;
            return Ok(Self::Pointwise { weight, bias });
        }
        Ok(match cpu::Winograd::new(&weight, &bias)? {
            Some(fast) => Self::Winograd(fast),
            None => Self::Same { weight, bias },
        })
    }

    /// The strided convolution of `Downsample`.
    fn down(vb: VarBuilder, c: usize) -> Result<Self> {
        let weight = vb.get((c, c, 3, 3), "weight")?;
        let bias = vb.get(c, "bias")?;
        let fast = cpu::Strided::new(&weight, &bias)?;
        Ok(Self::Down { weight, bias, fast })
    }

    /// `conv(upsample?(norm?(x))) + residual?`: on the fast path the optional steps happen
    /// inside the convolution's transforms instead of as separate tensors.
    fn forward_fused(
        &self,
        x: &Tensor,
        norm: Option<&Norm>,
        upsample: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if let Self::Winograd(fast) = self {
            let prologue = match norm {
                Some(n) => n.prologue(x)?,
                None => None,
            };
            if prologue.is_some() || norm.is_none() {
                let fused = cpu::Fused {
                    prologue: prologue.as_ref(),
                    upsample,
                    residual,
                };
                if let Some(y) = fast.forward(x, fused)? {
                    return Ok(y);
                }
            }
        }
        let mut h = match norm {
            Some(n) => n.forward(x, true)?,
            None => x.clone(),
        };
        if upsample {
            let (_, _, hh, ww) = h.dims4()?;
            h = h.upsample_nearest2d(2 * hh, 2 * ww)?;
        }
        let y = self.forward(&h)?;
        match residual {
            Some(r) => r + y,
            None => Ok(y),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Pointwise { weight, bias } => {
                let (b, c, h, w) = x.dims4()?;
                let y = weight.broadcast_matmul(&x.reshape((b, c, h * w))?)?;
                y.broadcast_add(bias)?.reshape((b, (), h, w))
            }
            Self::Same { weight, bias } => x
                .conv2d(weight, 1, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, (), 1, 1))?),
            Self::Winograd(fast) => {
                let plain = cpu::Fused {
                    prologue: None,
                    upsample: false,
                    residual: None,
                };
                fast.forward(x, plain)?.ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "vqgan: a float32 CPU model got a {:?} input on {:?}",
                        x.dtype(),
                        x.device().location()
                    ))
                })
            }
            Self::Down { fast, .. }
                if let Some(fast) = fast
                    && let Some(y) = fast.forward(x)? =>
            {
                Ok(y)
            }
            Self::Down { weight, bias, .. } => x
                .pad_with_zeros(2, 0, 1)?
                .pad_with_zeros(3, 0, 1)?
                .conv2d(weight, 0, 2, 1, 1)?
                .broadcast_add(&bias.reshape((1, (), 1, 1))?),
        }
    }
}

/// Half-precision inputs are normalized and soft-maxed in f32, as torch does internally.
fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `Normalize`: GroupNorm with `norm_groups` groups (32 in every release) and eps 1e-6,
/// optionally followed by swish.
pub(crate) struct Norm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

const EPS: f64 = 1e-6;

impl Norm {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        if groups == 0 || !c.is_multiple_of(groups) {
            candle_core::bail!("vqgan: GroupNorm over {c} channels needs a multiple of {groups}");
        }
        Ok(Self {
            weight: vb.get(c, "weight")?,
            bias: vb.get(c, "bias")?,
            groups,
        })
    }

    /// The GroupNorm + swish as per-channel coefficients for a fused convolution (f32 CPU).
    fn prologue(&self, x: &Tensor) -> Result<Option<cpu::Prologue>> {
        cpu::group_norm_prologue(x, &self.weight, &self.bias, self.groups, EPS, true)
    }

    fn forward(&self, x: &Tensor, swish: bool) -> Result<Tensor> {
        if let Some(y) = cpu::group_norm(x, &self.weight, &self.bias, self.groups, EPS, swish)? {
            return Ok(y);
        }
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        // Statistics in f32 at least, as torch does for half inputs.
        let xs = x.to_dtype(compute_dtype(dtype))?.reshape((
            b,
            self.groups,
            (c / self.groups) * h * w,
        ))?;
        let mean = xs.mean_keepdim(2)?;
        let xs = xs.broadcast_sub(&mean)?;
        let var = xs.sqr()?.mean_keepdim(2)?;
        let xs = xs
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .reshape((b, c, h, w))?;
        let y = xs
            .broadcast_mul(&self.weight.to_dtype(xs.dtype())?.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.to_dtype(xs.dtype())?.reshape((1, c, 1, 1))?)?;
        let y = if swish { candle_nn::ops::silu(&y)? } else { y };
        y.to_dtype(dtype)
    }
}

/// `ResnetBlock` without time embedding; `nin_shortcut` (1×1) when the channel count changes.
struct ResnetBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    nin_shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, g: usize) -> Result<Self> {
        let nin_shortcut = if c_in != c_out {
            Some(Conv::new(vb.pp("nin_shortcut"), c_in, c_out, 1)?)
        } else {
            None
        };
        Ok(Self {
            norm1: Norm::new(vb.pp("norm1"), c_in, g)?,
            conv1: Conv::new(vb.pp("conv1"), c_in, c_out, 3)?,
            norm2: Norm::new(vb.pp("norm2"), c_out, g)?,
            conv2: Conv::new(vb.pp("conv2"), c_out, c_out, 3)?,
            nin_shortcut,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward_fused(x, Some(&self.norm1), false, None)?;
        // Dropout is the identity at inference.
        let shortcut = match &self.nin_shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        self.conv2
            .forward_fused(&h, Some(&self.norm2), false, Some(&shortcut))
    }
}

/// `AttnBlock`: single-head attention over the H·W positions, scaled by C^-1/2.
struct AttnBlock {
    norm: Norm,
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
    scale: f64,
}

impl AttnBlock {
    fn new(vb: VarBuilder, c: usize, g: usize) -> Result<Self> {
        Ok(Self {
            norm: Norm::new(vb.pp("norm"), c, g)?,
            q: Conv::new(vb.pp("q"), c, c, 1)?,
            k: Conv::new(vb.pp("k"), c, c, 1)?,
            v: Conv::new(vb.pp("v"), c, c, 1)?,
            proj_out: Conv::new(vb.pp("proj_out"), c, c, 1)?,
            scale: (c as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x, false)?;
        let flat = |t: Tensor| t.reshape((b, c, h * w));
        let q = flat(self.q.forward(&n)?)?;
        let k = flat(self.k.forward(&n)?)?;
        let v = flat(self.v.forward(&n)?)?;
        // weights[i, j] = softmax_j(q_i · k_j / √C); out[:, i] = Σ_j v[:, j] weights[i, j].
        let att = (q.transpose(1, 2)?.matmul(&k)? * self.scale)?;
        let dtype = att.dtype();
        let att = candle_nn::ops::softmax_last_dim(&att.to_dtype(compute_dtype(dtype))?)?
            .to_dtype(dtype)?;
        let out = v.matmul(&att.t()?)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

/// One resolution level: res blocks, each optionally followed by attention, then a resampling.
struct Level {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    resample: Option<Conv>,
}

impl Level {
    fn forward(&self, mut h: Tensor, upsample: bool) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(attn) = self.attn.get(i) {
                h = attn.forward(&h)?;
            }
        }
        match &self.resample {
            Some(conv) if upsample => conv.forward_fused(&h, None, true, None),
            Some(conv) => conv.forward(&h),
            None => Ok(h),
        }
    }
}

/// `mid.block_1`, `mid.attn_1`, `mid.block_2`.
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
        let h = self.attn_1.forward(&h)?;
        self.block_2.forward(&h)
    }
}

/// taming's `Encoder`: image → z (B, z_channels, R/f, R/f).
pub(crate) struct Encoder {
    conv_in: Conv,
    down: Vec<Level>,
    mid: Mid,
    norm_out: Norm,
    conv_out: Conv,
}

impl Encoder {
    pub(crate) fn new(vb: VarBuilder, dd: &DdConfig) -> Result<Self> {
        let g = dd.norm_groups;
        let n_levels = dd.ch_mult.len();
        let conv_in = Conv::new(vb.pp("conv_in"), dd.in_channels, dd.ch, 3)?;
        let mut curr_res = dd.resolution;
        let mut block_in = dd.ch;
        let mut down = Vec::with_capacity(n_levels);
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
            let resample = if l + 1 != n_levels {
                curr_res /= 2;
                Some(Conv::down(vb.pp("downsample").pp("conv"), block_in)?)
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
            norm_out: Norm::new(vb.pp("norm_out"), block_in, g)?,
            conv_out: Conv::new(vb.pp("conv_out"), block_in, dd.z_channels, 3)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            h = level.forward(h, false)?;
        }
        let h = self.mid.forward(&h)?;
        self.conv_out
            .forward_fused(&h, Some(&self.norm_out), false, None)
    }
}

/// taming's `Decoder`: z (B, z_channels, r, r) → image; `num_res_blocks + 1` blocks per level.
pub(crate) struct Decoder {
    conv_in: Conv,
    mid: Mid,
    /// Indexed by level as in the state dict (`up.0` is the full-resolution level).
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv,
}

impl Decoder {
    pub(crate) fn new(vb: VarBuilder, dd: &DdConfig) -> Result<Self> {
        let g = dd.norm_groups;
        let n_levels = dd.ch_mult.len();
        let mut block_in = dd.ch * dd.ch_mult[n_levels - 1];
        let mut curr_res = dd.resolution >> (n_levels - 1);
        let conv_in = Conv::new(vb.pp("conv_in"), dd.z_channels, block_in, 3)?;
        let mid = Mid::new(vb.pp("mid"), block_in, g)?;
        let mut up = Vec::with_capacity(n_levels);
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
                Some(Conv::new(
                    vb.pp("upsample").pp("conv"),
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
            norm_out: Norm::new(vb.pp("norm_out"), block_in, g)?,
            conv_out: Conv::new(vb.pp("conv_out"), block_in, dd.out_ch, 3)?,
        })
    }

    pub(crate) fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for level in self.up.iter().rev() {
            h = level.forward(h, true)?;
        }
        self.conv_out
            .forward_fused(&h, Some(&self.norm_out), false, None)
    }
}
