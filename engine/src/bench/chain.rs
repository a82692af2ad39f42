//! `tessera bench --chain cin5`: the class-conditional ImageNet release's whole chain (five
//! levels: the minGPT stage, then four encoder–decoder stages, at released sizes with random
//! weights) sampled through the pipeline as a job samples it — four candidates in one batch,
//! one pass per level — then decoded by the VQGAN; once with f32 weights and once with every
//! stage's linear layers in q8_0.

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use super::{
    Usage, peak_rss, random_net, released_encdec_config, released_gpt_config, released_vqgan_config,
};
use crate::gpt::Gpt;
use crate::loader::card::{CARD_FORMAT, Condition, Conditioning, ModelCard, Network, StageCard};
use crate::loader::{Model, Stage};
use crate::pipeline::{ChainRequest, Observer, Progress, run_chain};
use crate::schedule::Schedule;
use crate::vqgan::Vqgan;
use crate::xtransformer::XTransformer;
use crate::{Error, Result};

/// Chains `tessera bench --chain` knows.
pub const CHAINS: [&str; 1] = ["cin5"];

/// Candidates sampled together, as the target states them.
const BATCH: usize = 4;

/// The card of the class-conditional ImageNet release with five levels
/// (`configs/imagenet/5_scales`, schedule `bernoulli_PSIM`), without weights.
pub fn cin5_card() -> Result<ModelCard> {
    let levels = 5;
    let stages = (1..=levels)
        .map(|t| StageCard {
            level: t,
            network: if t < levels {
                Network::XTransformer {
                    config: released_encdec_config(),
                    residual_scaled: false,
                }
            } else {
                Network::Gpt {
                    config: released_gpt_config(),
                }
            },
            weights: String::new(),
            parameters: 0,
        })
        .collect();
    let card = ModelCard {
        format: CARD_FORMAT.into(),
        name: "cin5 (random weights)".into(),
        description: "class-conditional ImageNet, 5 levels, released sizes".into(),
        vqgan: released_vqgan_config(),
        n_tokens: 973,
        stages,
        schedule: Schedule::from_redraw_prob("bernoulli_PSIM", levels).map_err(Error::Input)?,
        conditioning: Conditioning::Class {
            n_classes: crate::imagenet::N_CLASSES,
            class_names: crate::imagenet::class_names(),
            null_class: None,
        },
        dtype: "f32".into(),
        provenance: "tessera bench".into(),
        license: String::new(),
        sampling: None,
        guidance_scale: None,
        chains: None,
        recognizer: None,
    };
    card.validate().map_err(Error::Input)?;
    Ok(card)
}

/// Times when each level finished.
struct LevelClock {
    start: Instant,
    done: Vec<(usize, f64)>,
}

impl Observer for LevelClock {
    fn progress(&mut self, p: Progress<'_>) {
        if let Progress::Level { level, .. } = p {
            self.done.push((level, self.start.elapsed().as_secs_f64()));
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
}

/// Runs the chain benchmark `name` (one of [`CHAINS`]), writing lines to `out`.
pub fn run(name: &str, out: &mut dyn FnMut(String)) -> Result<()> {
    if name != "cin5" {
        return Err(Error::Input(format!(
            "unknown chain `{name}` (known: {})",
            CHAINS.join(", ")
        )));
    }
    let dev = Device::Cpu;
    let card = cin5_card()?;
    let (mut vqgan, _) = random_net(DType::F32, &dev, |vb| {
        Vqgan::new(vb, &card.vqgan, card.n_tokens)
    })?;
    out(format!(
        "chain cin5: {} levels (minGPT level {}, encoder–decoder levels below), {} candidates \
         in one batch, class-conditional, one pass per level, random weights",
        card.levels(),
        card.levels(),
        BATCH
    ));
    for quantize in [None, Some(GgmlDType::Q8_0)] {
        let format = quantize.map_or("f32", |_| "q8_0");
        let t = Instant::now();
        let stages = (1..=card.levels())
            .map(|level| build_stage(&card, level, quantize, &dev))
            .collect::<Result<Vec<_>>>()?;
        out(format!(
            "  {format}: built {} random stages in {:.1} s (not timed below)",
            stages.len(),
            t.elapsed().as_secs_f64()
        ));
        let model = Model::from_networks(card.clone(), vqgan, stages, dev.clone())?;
        let mut req = ChainRequest::new(&card);
        req.condition = Condition::Class(1);
        req.candidates = BATCH;
        let mut clock = LevelClock {
            start: Instant::now(),
            done: Vec::new(),
        };
        let u = Usage::now();
        let grids = run_chain(&model, &req, &mut clock)?;
        let chain = clock.start.elapsed().as_secs_f64();
        let usage = Usage::now().since(u);
        let mut prev = 0.0;
        let levels: Vec<String> = clock
            .done
            .iter()
            .map(|&(level, at)| {
                let s = format!("level {level} {:.1} s", at - prev);
                prev = at;
                s
            })
            .collect();
        let x0 = grids
            .last()
            .ok_or_else(|| Error::Input("the chain returned no grids".into()))?;
        let ids: Vec<u32> = x0.iter().flatten().copied().collect();
        let tokens = Tensor::from_vec(ids, (x0.len(), card.n_positions()), &dev)?;
        let t = Instant::now();
        drop(model.vqgan.decode_tokens(&tokens)?);
        let decode = t.elapsed().as_secs_f64();
        out(format!(
            "  {format}: {}; chain {chain:.1} s + VQGAN decode {decode:.1} s = {:.1} s ({usage})",
            levels.join(", "),
            chain + decode
        ));
        vqgan = model.vqgan;
    }
    out(format!("peak resident memory: {}", peak_rss()));
    Ok(())
}

/// Level `level`'s network with random weights, its linear layers in `quantize` if given.
fn build_stage(
    card: &ModelCard,
    level: usize,
    quantize: Option<GgmlDType>,
    dev: &Device,
) -> Result<Stage> {
    Ok(match &card.stages[level - 1].network {
        Network::XTransformer { config, .. } => {
            let (net, _) = random_net(DType::F32, dev, |vb| XTransformer::new(vb, config, None))?;
            Stage::EncDec(match quantize {
                Some(q) => net.quantized(q)?,
                None => net,
            })
        }
        Network::Gpt { config } => {
            let (net, _) = random_net(DType::F32, dev, |vb| Gpt::new(vb, config))?;
            Stage::Gpt(match quantize {
                Some(q) => net.quantized(q)?,
                None => net,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cin5_card_is_the_release() {
        let card = cin5_card().unwrap();
        assert_eq!(card.levels(), 5);
        assert_eq!(card.n_positions(), 256);
        assert!(matches!(card.stages[4].network, Network::Gpt { .. }));
        // The release's data-driven schedule (imagebart.md §1.3).
        assert!((card.schedule.alphacum[4] - 0.514_983_8).abs() < 1e-6);
        assert_eq!(card.prefix(5, &Condition::Class(7)), Ok(vec![5, 7]));
    }

    #[test]
    fn unknown_chains_are_named() {
        let e = run("cin4", &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("cin4") && e.contains("cin5"), "{e}");
    }
}
