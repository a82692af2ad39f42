//! Training Tessera's own ImageBART: data (emoji scenes), the VQGAN, the chain of stages with
//! the official objective, and the concept classifier used for evaluation.
//!
//! - [`data`]: the concept vocabulary, emoji sets, object-centric scenes with captions and
//!   classes, the held-out split;
//! - [`vqgan`]: the first stage (reconstruction, patch discriminator, codebook restarts, remap);
//! - [`stage`]: one level of the chain (forward diffusion per batch, CE / posterior loss, EMA);
//! - [`optim`]: AdamW with warm-up and cosine decay, EMA of weights, checkpoints;
//! - [`classifier`]: the concept classifier and FID in its feature space.

pub mod classifier;
mod conv;
pub mod data;
pub mod eval;
pub mod optim;
pub mod recipe;
pub mod recognizer;
pub mod stage;
pub mod vqgan;
