//! The Tessera engine: a candle port of ImageBART (Esser, Rombach, Blattmann, Ommer, NeurIPS 2021).
//!
//! The engine knows nothing of any UI. Its parts follow the paper and the official code:
//! - [`vqgan`]: the first stage, image ↔ remapped codebook tokens;
//! - [`xtransformer`]: the encoder–decoder stages t < T (and the residual-scaled variant);
//! - [`gpt`]: the last stage T, a minGPT over the conditioning prefix;
//! - [`schedule`]: the multinomial-diffusion schedule (α_t, ᾱ_t);
//! - [`loader`]: official releases (manifest + YAML + Lightning `.ckpt`) and Tessera's own format;
//! - [`reference`](crate::reference): comparison against outputs computed by the official implementation;
//! - [`text`]: prompts → tokenizer ids for text-conditional models;
//! - [`segment`]: click segmentation (MobileSAM) for the editor's "Select object" tool.

pub mod bench;
pub mod confidence;
pub mod error;
pub mod fit;
pub mod gpt;
pub mod heap;
pub mod imagenet;
pub mod inpaint;
pub mod loader;
pub mod nn;
pub mod panic;
pub mod pipeline;
pub mod recognizer;
pub mod reference;
pub mod sampler;
pub mod schedule;
pub mod segment;
pub mod text;
pub mod threads;
pub mod vqgan;
pub mod worker;
pub mod xtransformer;

pub use error::{Error, Result};
