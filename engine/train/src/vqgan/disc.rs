//! A PatchGAN discriminator after taming's `NLayerDiscriminator` (pix2pix): 4×4 convolutions,
//! stride 2 then 1, LeakyReLU 0.2, one logit per patch. GroupNorm stands in for BatchNorm so
//! the output of an image does not depend on the rest of the batch. It is not exported.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::model::conv_param;
use super::ops::{ConvW, NormW, conv2d, group_norm, leaky_relu};

/// The discriminator: `n_layers` strided convolutions, one stride-1 convolution, a 1-channel head.
pub(crate) struct Discriminator {
    convs: Vec<(ConvW, Option<NormW>, usize)>,
    head: ConvW,
}

impl Discriminator {
    /// Creates (or reuses) parameters under `disc.` in `varmap`: width `ndf`, `n_layers` ≥ 1.
    pub fn new(varmap: &VarMap, ndf: usize, n_layers: usize, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev).pp("disc");
        let mut convs = Vec::new();
        let mut c_in = 3;
        for l in 0..=n_layers {
            let c_out = ndf * (1 << l.min(3));
            let stride = if l < n_layers { 2 } else { 1 };
            let vb = vb.pp(l);
            let norm = match l {
                0 => None,
                _ => Some(NormW {
                    weight: vb.pp("norm").get_with_hints(
                        c_out,
                        "weight",
                        candle_nn::Init::Const(1.0),
                    )?,
                    bias: vb.pp("norm").get_with_hints(
                        c_out,
                        "bias",
                        candle_nn::Init::Const(0.0),
                    )?,
                }),
            };
            convs.push((conv_param(&vb.pp("conv"), c_in, c_out, 4)?, norm, stride));
            c_in = c_out;
        }
        let head = conv_param(&vb.pp("head"), c_in, 1, 4)?;
        Ok(Self { convs, head })
    }

    /// Patch logits (B, 1, h, w) for images (B, 3, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (conv, norm, stride) in &self.convs {
            h = conv2d(&h, conv, *stride, (1, 1))?;
            if let Some(n) = norm {
                let groups = n.weight.dim(0)?.min(32);
                h = group_norm(&h, n, groups, 1e-5, false)?;
            }
            h = leaky_relu(&h, 0.2)?;
        }
        conv2d(&h, &self.head, 1, (1, 1))
    }
}

/// Hinge loss of the discriminator: ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂))).
pub(crate) fn hinge_d_loss(logits_real: &Tensor, logits_fake: &Tensor) -> Result<Tensor> {
    let real = (1.0 - logits_real)?.relu()?.mean_all()?;
    let fake = (logits_fake + 1.0)?.relu()?.mean_all()?;
    (real + fake)? * 0.5
}
