//! The recognizer phase: the concept recognizer trained on the pool's grids, each labelled with
//! its largest object's concept and that object's token box (from the pool's own scene stream,
//! drawn again: the pool keeps only tokens, classes and captions).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use tessera_engine::recognizer::{Concept, RecognizerCard};
use tessera_engine::vqgan::Vqgan;
use tessera_engine::{Error, Result};

use super::files::{read_json, write_json};
use super::pool::{Pool, pool_seed};
use super::{Recipe, TrainEvent, val_scenes};
use crate::data::{CONCEPTS, EmojiSet, SceneGen, batch_to_tensor};
use crate::recognizer::{LabelledGrid, RECOGNIZER_FILE, token_box, train_recognizer};

const CARD: &str = "recognizer.json";

/// Held-out scenes the phase reports the recognizer's accuracy on.
const HELD_OUT: usize = 512;

/// Trains (or reads back) the recognizer; `None` when the recipe has none.
#[allow(clippy::too_many_arguments)] // private; each argument a different part of the run
pub(super) fn recognizer(
    recipe: &Recipe,
    set: &EmojiSet,
    scenes: &SceneGen,
    pool: &Pool,
    vqgan: &Vqgan,
    n_tokens: usize,
    work: &Path,
    events: &mut dyn FnMut(TrainEvent) -> bool,
) -> Result<Option<RecognizerCard>> {
    let cfg = &recipe.recognizer;
    if cfg.steps == 0 {
        return Ok(None);
    }
    let (path, card_path) = (work.join(RECOGNIZER_FILE), work.join(CARD));
    let done = path.is_file() && card_path.is_file();
    events(TrainEvent::Phase {
        name: "recognizer".into(),
        done,
    });
    if done {
        return Ok(Some(read_json(&card_path)?));
    }
    let start = Instant::now();
    let positions = pool.tokens[0].len();
    let side = (positions as f64).sqrt() as usize;
    if side * side != positions {
        return Err(Error::Input(format!(
            "recognizer: pool grids of {positions} tokens are not square"
        )));
    }
    // The pool's scenes again, for their boxes (in chunks, as the pool drew them).
    let seed = pool_seed(recipe);
    let mut boxes = Vec::with_capacity(pool.tokens.len());
    let chunk = 256;
    let mut at = 0;
    while at < pool.tokens.len() {
        let n = chunk.min(pool.tokens.len() - at);
        for (i, s) in scenes
            .scenes(seed, at as u64, n, recipe.res)
            .into_iter()
            .enumerate()
        {
            if s.class != pool.classes[at + i] {
                return Err(Error::Input(format!(
                    "recognizer: pool scene {} has class {}, its scene stream {} — the pool was \
                     made from other scenes; delete {} and rerun",
                    at + i,
                    pool.classes[at + i],
                    s.class,
                    work.join("pool.safetensors").display()
                )));
            }
            let b = &s.boxes[0];
            boxes.push(token_box(b.x, b.y, b.size, recipe.res, side));
        }
        at += n;
    }
    let grids: Vec<LabelledGrid> = pool
        .tokens
        .iter()
        .zip(&pool.classes)
        .zip(&boxes)
        .map(|((t, &class), &tokens_box)| LabelledGrid {
            tokens: t,
            class,
            tokens_box,
        })
        .collect();
    let concepts: Vec<Concept> = CONCEPTS
        .iter()
        .map(|c| Concept {
            name: c.name.to_string(),
            words: c.words.iter().map(|w| (*w).to_string()).collect(),
        })
        .collect();
    let mut last = None;
    let trained = train_recognizer(
        cfg,
        &grids,
        n_tokens,
        side,
        concepts,
        recipe.seed ^ 0x5245_434f,
        &mut |p| {
            last = Some(*p);
            events(TrainEvent::Recognizer(*p))
        },
    )?;
    // Accuracy on held-out scenes, each shown as a request's region would be: the object's
    // box grown by the margin.
    let val = val_scenes(set, recipe)?.scenes(recipe.seed ^ 0x5245_4356, 0, HELD_OUT, recipe.res);
    let mut ids = Vec::with_capacity(HELD_OUT * positions);
    let mut labels = Vec::with_capacity(HELD_OUT);
    for batch in val.chunks(64) {
        let images: Vec<_> = batch.iter().map(|s| s.image.clone()).collect();
        let x = batch_to_tensor(&images, &Device::Cpu)?;
        let t = vqgan
            .encode_tokens(&x)?
            .flatten_from(1)?
            .to_dtype(DType::U32)?;
        for (s, g) in batch.iter().zip(t.to_vec2::<u32>()?) {
            let b = &s.boxes[0];
            let (y0, x0, y1, x1) = token_box(b.x, b.y, b.size, recipe.res, side);
            let m = tessera_engine::recognizer::MARGIN;
            let (y0, x0) = (y0.saturating_sub(m), x0.saturating_sub(m));
            let (y1, x1) = ((y1 + m).min(side - 1), (x1 + m).min(side - 1));
            ids.extend(g.iter().enumerate().map(|(p, &tok)| {
                let (y, x) = (p / side, p % side);
                if (y0..=y1).contains(&y) && (x0..=x1).contains(&x) {
                    tok
                } else {
                    n_tokens as u32
                }
            }));
            labels.push(s.class as u32);
        }
    }
    let x = Tensor::from_vec(ids, (labels.len(), positions), &Device::Cpu)?;
    let pred = trained.predict(&x)?;
    let hits = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    let card = trained.export(&path)?;
    write_json(&card_path, &card)?;
    events(TrainEvent::Note(format!(
        "recognizer: {} steps in {:.1} min, last batch accuracy {:.2}; held-out top-1 {:.1}% \
         over {} scenes",
        cfg.steps,
        start.elapsed().as_secs_f64() / 60.0,
        last.map_or(0.0, |p| p.batch_accuracy),
        100.0 * hits as f64 / labels.len().max(1) as f64,
        labels.len()
    )));
    Ok(Some(card))
}
