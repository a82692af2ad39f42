//! Tests of the candidates' fit ([`tessera_engine::fit`]): the posterior it reports against a
//! plain per-condition computation on the golden class model, when there is nothing to rank,
//! and that on the shipped model it — and the shipped recognizer — tells a fill drawn for one
//! concept from the others.

use candle_core::{D, Tensor};
use tessera_engine::fit::{contrast_set, fit, ranking, recognized, score_until, vocabulary};
use tessera_engine::loader::card::{Condition, Conditioning};
use tessera_engine::loader::{LoadOptions, Model, ModelSource, Stage};
use tessera_engine::pipeline::{ChainRequest, Silent, run_chain};
use tessera_engine::text::PromptTokenizer;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden");
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/model");

fn load(dir: &str) -> Model {
    ModelSource::open(dir)
        .unwrap()
        .load(&LoadOptions::default())
        .unwrap()
}

/// The known tokens of a grey picture with its middle `2·half`² tokens to fill.
fn grey_with_hole(model: &Model, half: usize) -> Vec<Option<u32>> {
    let side = model.card.resolution();
    let grey = Tensor::full(0.0f32, (1, 3, side, side), &model.device).unwrap();
    let x0: Vec<u32> = model
        .vqgan
        .encode_tokens(&grey)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let g = model.card.grid_side();
    let middle = g / 2 - half..g / 2 + half;
    (0..g * g)
        .map(|j| {
            let inside = middle.contains(&(j / g)) && middle.contains(&(j % g));
            (!inside).then_some(x0[j])
        })
        .collect()
}

/// log p(x_0 | x_1, c) over the `generated` positions, one condition at a time, every
/// position fed: what the fit's batched, truncated pass must equal.
fn log_likelihood(
    model: &Model,
    c: &Condition,
    x1: &[u32],
    x0: &[u32],
    generated: &[usize],
) -> f64 {
    let stage = model.stage(1).unwrap();
    let Stage::EncDec(net) = &*stage else {
        panic!("stage 1 of the golden class model is an encoder–decoder")
    };
    let mut src = model.card.prefix(1, c).unwrap();
    src.extend_from_slice(x1);
    let mut tgt = vec![0u32];
    tgt.extend_from_slice(&x0[..x0.len() - 1]);
    let (ls, lt) = (src.len(), tgt.len());
    let src = Tensor::from_vec(src, (1, ls), &model.device).unwrap();
    let tgt = Tensor::from_vec(tgt, (1, lt), &model.device).unwrap();
    let logp = candle_nn::ops::log_softmax(&net.forward(&src, &tgt).unwrap(), D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    generated
        .iter()
        .map(|&j| f64::from(logp[j][x0[j] as usize]))
        .sum()
}

#[test]
fn fit_is_the_posterior_among_the_contrast_set() {
    let model = load(&format!("{GOLDEN}/class_custom"));
    let mut req = ChainRequest::new(&model.card);
    req.condition = Condition::Class(3);
    req.candidates = 3;
    req.seed = 11;
    // Generate the last rows only: the scoring pass stops at the last generated position.
    let p = model.card.n_positions();
    let x = run_chain(&model, &req, &mut Silent).unwrap();
    let generated: Vec<usize> = (8..40).collect();
    req.known = Some(
        (0..p)
            .map(|j| (!generated.contains(&j)).then_some(x[1][0][j]))
            .collect(),
    );
    // The request's own class among the contrast and a repeat are dropped, not counted twice.
    req.contrast = [3, 7, 0, 7, 12].map(Condition::Class).to_vec();
    let grids = run_chain(&model, &req, &mut Silent).unwrap();
    let got = fit(&model, &req, &grids).unwrap().expect("a ranking");
    assert_eq!(got.len(), 3);
    for (i, &f) in got.iter().enumerate() {
        let ll: Vec<f64> = [3, 7, 0, 12]
            .map(|c| {
                log_likelihood(
                    &model,
                    &Condition::Class(c),
                    &grids[0][i],
                    &grids[1][i],
                    &generated,
                )
            })
            .to_vec();
        let max = ll.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let want = (ll[0] - max).exp() / ll.iter().map(|v| (v - max).exp()).sum::<f64>();
        assert!(
            (f64::from(f) - want).abs() < 1e-4,
            "candidate {i}: fit {f}, per-condition computation {want} ({ll:?})"
        );
    }
    assert_eq!(ranking(&got)[0], {
        let mut best = 0;
        for i in 1..got.len() {
            if got[i] > got[best] {
                best = i;
            }
        }
        best
    });
}

#[test]
fn nothing_to_rank_gives_none() {
    let model = load(&format!("{GOLDEN}/class_custom"));
    let mut req = ChainRequest::new(&model.card);
    req.condition = Condition::Class(3);
    let grids = run_chain(&model, &req, &mut Silent).unwrap();
    // No contrast, and the negative (none) is not a condition this model takes.
    assert!(contrast_set(&req, |c| model.card.prefix(1, c).is_ok()).is_empty());
    assert_eq!(fit(&model, &req, &grids).unwrap(), None);
    // Only the request's own condition to compare with.
    req.contrast = vec![Condition::Class(3)];
    assert_eq!(fit(&model, &req, &grids).unwrap(), None);
    // A contrast condition the model does not take is refused up front.
    req.contrast = vec![Condition::Class(100)];
    let err = req.validate(&model.card).unwrap_err().to_string();
    assert!(err.contains("contrast condition 1"), "{err}");
    // A class model with more classes than can be compared has no vocabulary to send.
    let Conditioning::Class { n_classes, .. } = &model.card.conditioning else {
        panic!("class model")
    };
    assert!(*n_classes > tessera_engine::fit::MAX_CONTRAST);
    assert!(vocabulary(&model.card, None).unwrap().is_empty());
    // Grids that are not the model's are refused, not sliced.
    let short = vec![vec![vec![0u32; 10]]];
    let err = fit(
        &model,
        &ChainRequest {
            contrast: vec![Condition::Class(4)],
            ..req.clone()
        },
        &short,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("10 tokens"), "{err}");
    // Unconditional requests have nothing to be judged against.
    let uncond = load(&format!("{GOLDEN}/uncond_geometric"));
    let req = ChainRequest::new(&uncond.card);
    let grids = run_chain(&uncond, &req, &mut Silent).unwrap();
    assert_eq!(fit(&uncond, &req, &grids).unwrap(), None);
}

/// On the shipped model, fills drawn for one concept fit it better than they fit another:
/// the fit tells concepts apart, which is what ranking candidates by it relies on.
#[test]
fn shipped_fills_fit_the_concept_they_were_drawn_for() {
    let model = load(SHIPPED);
    let tokenizer = PromptTokenizer::for_model(std::path::Path::new(SHIPPED), &model.card)
        .unwrap()
        .expect("the shipped model has a tokenizer");
    let vocab = vocabulary(&model.card, Some(&tokenizer)).unwrap();
    assert_eq!(vocab.len(), model.card.class_names().len());
    let names = model.card.class_names().to_vec();
    let index = |name: &str| names.iter().position(|n| n == name).unwrap();
    // A grey picture with its middle 8×8 tokens to fill (a quarter of the grid: cheap enough
    // for a debug build, large enough for an object).
    let known = grey_with_hole(&model, 4);
    let (mut own, mut other) = (0.0f64, 0.0f64);
    for (a, b) in [("red heart", "snowflake"), ("snowflake", "red heart")] {
        let mut req = ChainRequest::new(&model.card);
        req.known = Some(known.clone());
        req.condition = vocab[index(a)].clone();
        req.guidance_scale = model.card.guidance_scale.unwrap_or(3.0);
        req.candidates = 3;
        req.seed = 5;
        req.contrast = vocab.clone();
        let grids = run_chain(&model, &req, &mut Silent).unwrap();
        let mine = fit(&model, &req, &grids).unwrap().unwrap();
        req.condition = vocab[index(b)].clone();
        let theirs = fit(&model, &req, &grids).unwrap().unwrap();
        own += mine.iter().map(|&f| f64::from(f)).sum::<f64>() / mine.len() as f64;
        other += theirs.iter().map(|&f| f64::from(f)).sum::<f64>() / theirs.len() as f64;
        assert!(mine.iter().chain(&theirs).all(|f| (0.0..=1.0).contains(f)));
    }
    eprintln!("mean fit to the concept drawn for {own:.3}, to the other {other:.3}");
    assert!(
        own > 4.0 * other,
        "mean fit to the concept drawn for {own:.3}, to the other {other:.3}"
    );
}

/// The shipped recognizer tells the shipped model's fills apart by the concept they were
/// drawn for, and it is what the worker ranks by when the request names a concept.
#[test]
fn shipped_recognizer_recognizes_what_the_fills_were_drawn_for() {
    let model = load(SHIPPED);
    let rec = model
        .recognizer
        .as_ref()
        .expect("the shipped model has a recognizer");
    let tokenizer = PromptTokenizer::for_model(std::path::Path::new(SHIPPED), &model.card)
        .unwrap()
        .expect("the shipped model has a tokenizer");
    let vocab = vocabulary(&model.card, Some(&tokenizer)).unwrap();
    let names = model.card.class_names().to_vec();
    assert_eq!(rec.card().concepts.len(), names.len());
    let index = |name: &str| names.iter().position(|n| n == name).unwrap();
    // A prompt names its concept by one of its words.
    let card = &model.card;
    assert_eq!(
        tessera_engine::recognizer::request_concept(card, None, "a kitten on blue"),
        Some(index("cat face"))
    );
    // A grey picture with its middle 12×12 tokens to fill: an object of the size the
    // training scenes' objects have (55–90 % of the side).
    let known = grey_with_hole(&model, 6);
    let (mut own, mut other) = (0.0f64, 0.0f64);
    for (a, b) in [("red heart", "snowflake"), ("snowflake", "red heart")] {
        let mut req = ChainRequest::new(&model.card);
        req.known = Some(known.clone());
        req.condition = vocab[index(a)].clone();
        req.guidance_scale = model.card.guidance_scale.unwrap_or(3.0);
        req.candidates = 3;
        req.seed = 5;
        req.contrast = vocab.clone();
        req.concept = Some(index(a));
        let grids = run_chain(&model, &req, &mut Silent).unwrap();
        let mine = recognized(&model, &req, &grids).unwrap().unwrap();
        // What the worker ranks by.
        assert_eq!(
            score_until(&model, &req, &grids, &|| false)
                .unwrap()
                .unwrap(),
            mine
        );
        let mut theirs_req = req.clone();
        theirs_req.concept = Some(index(b));
        let theirs = recognized(&model, &theirs_req, &grids).unwrap().unwrap();
        own += mine.iter().map(|&f| f64::from(f)).sum::<f64>() / mine.len() as f64;
        other += theirs.iter().map(|&f| f64::from(f)).sum::<f64>() / theirs.len() as f64;
        assert!(mine.iter().chain(&theirs).all(|f| (0.0..=1.0).contains(f)));
    }
    eprintln!(
        "mean recognizer probability of the concept drawn for {own:.3}, of the other {other:.3}"
    );
    assert!(
        own > 4.0 * other,
        "mean recognizer probability of the concept drawn for {own:.3}, of the other {other:.3}"
    );
    // A concept the recognizer does not know is refused.
    let mut req = ChainRequest::new(&model.card);
    req.concept = Some(names.len());
    assert!(req.validate(&model.card).is_err());
}

/// A recognizer that does not match its card is refused by name, key and both shapes, as a
/// stage is; one whose file is gone is refused naming the file.
#[test]
fn a_mismatched_recognizer_is_refused_with_the_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(SHIPPED).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let card_path = dir.path().join("model.json");
    let mut card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card["recognizer"]["channels"] = serde_json::json!([64, 128, 64]);
    std::fs::write(&card_path, card.to_string()).unwrap();
    let err = ModelSource::open(dir.path())
        .unwrap()
        .load(&LoadOptions::default())
        .err()
        .expect("a mismatched recognizer loads")
        .to_string();
    assert!(
        err.contains("conv2.weight")
            && err.contains("[128, 128, 3, 3]")
            && err.contains("[64, 128, 3, 3]"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("recognizer.safetensors")).unwrap();
    let err = ModelSource::open(dir.path())
        .unwrap()
        .load(&LoadOptions::default())
        .err()
        .expect("a model without its recognizer file loads")
        .to_string();
    assert!(err.contains("recognizer.safetensors"), "{err}");
}
