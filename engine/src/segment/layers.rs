//! Layers shared by the MobileSAM networks (as in candle-transformers'
//! `models::segment_anything`): channel layer norm and the two-layer MLP. Here so that the
//! networks that use them and the `sam` module that assembles the networks do not import each
//! other.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Layer norm over the channels of an NCHW tensor.
#[derive(Debug)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    num_channels: usize,
    eps: f64,
}

impl LayerNorm2d {
    /// Loads `weight` and `bias` of `num_channels`.
    pub fn new(num_channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(num_channels, "weight")?,
            bias: vb.get(num_channels, "bias")?,
            num_channels,
            eps,
        })
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let u = xs.mean_keepdim(1)?;
        let xs = xs.broadcast_sub(&u)?;
        let s = xs.sqr()?.mean_keepdim(1)?;
        let xs = xs.broadcast_div(&(s + self.eps)?.sqrt()?)?;
        let shape = (1, self.num_channels, 1, 1);
        xs.broadcast_mul(&self.weight.reshape(shape)?)?
            .broadcast_add(&self.bias.reshape(shape)?)
    }
}

/// Two linear layers with a ReLU between them (`lin1`, `lin2`).
#[derive(Debug)]
pub struct MlpBlock {
    lin1: candle_nn::Linear,
    lin2: candle_nn::Linear,
}

impl MlpBlock {
    /// `dim → mlp_dim → dim`.
    pub fn new(dim: usize, mlp_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            lin1: candle_nn::linear(dim, mlp_dim, vb.pp("lin1"))?,
            lin2: candle_nn::linear(mlp_dim, dim, vb.pp("lin2"))?,
        })
    }
}

impl Module for MlpBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.lin1)?.relu()?.apply(&self.lin2)
    }
}
