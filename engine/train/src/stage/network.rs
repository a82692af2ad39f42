//! Stage network sizes: the encoder–decoder of levels t < T and the GPT of level T, laid out
//! for a given vocabulary, grid and conditioning prefix.

use serde::{Deserialize, Serialize};

use tessera_engine::gpt::GptConfig;
use tessera_engine::loader::card::{Conditioning, Network};
use tessera_engine::xtransformer::XTransformerConfig;

/// Sizes of a stage network, shared by the encoder–decoder and GPT stages of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NetworkSize {
    /// Width.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one encoder–decoder head (x-transformers uses 64; `dim / heads` keeps the
    /// attention as wide as the model).
    pub dim_head: usize,
    /// Encoder blocks of the encoder–decoder stages.
    pub enc_depth: usize,
    /// Decoder blocks of the encoder–decoder stages.
    pub dec_depth: usize,
    /// Blocks of the GPT stage.
    pub gpt_layers: usize,
}

impl Default for NetworkSize {
    fn default() -> Self {
        Self {
            dim: 128,
            heads: 4,
            dim_head: 32,
            enc_depth: 2,
            dec_depth: 2,
            gpt_layers: 4,
        }
    }
}

/// Rows of the input token table a stage needs: image codes `0..n_tokens`, scale tokens
/// `1..=levels`, and the condition's ids (`text_vocab` = tokenizer size for text).
pub fn input_vocab(
    n_tokens: usize,
    levels: usize,
    conditioning: &Conditioning,
    text_vocab: usize,
) -> usize {
    let base = n_tokens.max(levels + 1);
    match conditioning {
        Conditioning::None => base,
        Conditioning::Class {
            n_classes,
            null_class,
            ..
        } => base.max(*n_classes).max(null_class.map_or(0, |n| n + 1)),
        Conditioning::Text { token_offset, .. } => base.max(token_offset + text_vocab),
    }
}

/// The network of level `t` of a `levels`-stage model: an encoder–decoder for t < T, a GPT
/// for t = T, sized for `n_positions` image tokens after a prefix of `prefix_len` tokens.
pub fn stage_network(
    t: usize,
    levels: usize,
    n_tokens: usize,
    n_positions: usize,
    prefix_len: usize,
    input_vocab: usize,
    size: &NetworkSize,
) -> Network {
    if t == levels {
        Network::Gpt {
            config: GptConfig {
                vocab_size: n_tokens,
                block_size: prefix_len + n_positions - 1,
                n_layer: size.gpt_layers,
                n_head: size.heads,
                n_embd: size.dim,
                input_vocab_size: (input_vocab != n_tokens).then_some(input_vocab),
                // The prefix attends to itself in full, like the class-conditional releases.
                n_unmasked: if prefix_len > 1 { prefix_len } else { 0 },
            },
        }
    } else {
        Network::XTransformer {
            config: XTransformerConfig {
                dim: size.dim,
                enc_num_tokens: input_vocab,
                enc_depth: size.enc_depth,
                enc_heads: size.heads,
                enc_max_seq_len: prefix_len + n_positions,
                dec_num_tokens: n_tokens,
                dec_depth: size.dec_depth,
                dec_heads: size.heads,
                dec_max_seq_len: n_positions,
                dim_head: size.dim_head,
                scale_pos: None,
                n_scales: None,
                xt_start: None,
                xt_size: None,
            },
            residual_scaled: false,
        }
    }
}
