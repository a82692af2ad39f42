//! Click segmentation (MobileSAM) with random weights: the loader, the embedding, the prompt →
//! mask path, and the worker. No released weights are needed (none are available offline);
//! what is checked is everything but the quality of the masks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::{Rgb, RgbImage};
use tessera_engine::Error;
use tessera_engine::segment::{
    SegmentEvent, SegmentWorker, Segmenter, resized_size, write_random_weights,
};

/// Random MobileSAM weights, saved as safetensors in `dir`.
fn random_weights(dir: &Path) -> PathBuf {
    let path = dir.join("mobile_sam-random.safetensors");
    write_random_weights(&path).expect("random weights written");
    path
}

/// A picture with a bright disc on a dark, textured background.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - w as f32 * 0.6, y as f32 - h as f32 * 0.5);
        if dx * dx + dy * dy < (h as f32 * 0.3).powi(2) {
            Rgb([230, 200, 40])
        } else {
            Rgb([(x * 3 % 60) as u8, (y * 5 % 70) as u8, 90])
        }
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn random_weights_load_embed_and_answer_points() {
    let dir = tempfile::tempdir().unwrap();
    let seg = Segmenter::load(&random_weights(dir.path())).expect("random weights load");
    let img = picture(100, 60);
    let emb = seg.embed(&img).expect("embedded");
    assert_eq!(emb.image_size(), (100, 60));

    let one = [(60.0, 30.0, true)];
    let mask = seg.mask(&emb, &one).unwrap();
    assert_eq!(
        mask.dimensions(),
        (100, 60),
        "the mask has the image's size"
    );
    assert!(mask.as_raw().iter().all(|&v| v == 0 || v == 255), "binary");
    assert_eq!(
        seg.mask(&emb, &one).unwrap(),
        mask,
        "same inputs, same mask"
    );

    // Random weights make no meaningful masks, so compare the logits the mask is cut from:
    // they must depend on where the point is and on whether a point excludes.
    let base = seg.mask_logits(&emb, &one).unwrap();
    assert_eq!(base.dims(), &[60, 100]);
    let moved = seg.mask_logits(&emb, &[(10.0, 50.0, true)]).unwrap();
    assert!(
        max_abs_diff(&base, &moved) > 1e-3,
        "moving the point changes the mask"
    );
    let with_exclude = [(60.0, 30.0, true), (20.0, 10.0, false)];
    let ex = seg.mask_logits(&emb, &with_exclude).unwrap();
    let inc = seg
        .mask_logits(&emb, &[(60.0, 30.0, true), (20.0, 10.0, true)])
        .unwrap();
    assert!(
        max_abs_diff(&base, &ex) > 1e-3,
        "an exclude point changes the mask"
    );
    assert!(
        max_abs_diff(&inc, &ex) > 1e-3,
        "the label of a point matters"
    );
    assert_eq!(
        seg.mask(&emb, &with_exclude).unwrap().dimensions(),
        (100, 60)
    );

    // No points: nothing selected. Bad points: an error, not a panic.
    assert!(
        seg.mask(&emb, &[])
            .unwrap()
            .as_raw()
            .iter()
            .all(|&v| v == 0)
    );
    assert!(matches!(
        seg.mask(&emb, &[(f32::NAN, 1.0, true)]),
        Err(Error::Input(_))
    ));
}

#[test]
fn resizing_keeps_the_aspect_ratio() {
    assert_eq!(resized_size(100, 60), (1024, 614));
    assert_eq!(resized_size(60, 100), (614, 1024));
    assert_eq!(resized_size(2048, 2048), (1024, 1024));
    assert_eq!(resized_size(5000, 1), (1024, 1));
}

#[test]
fn bad_weight_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = random_weights(dir.path());

    let missing = dir.path().join("nope.safetensors");
    let err = Segmenter::load(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.safetensors"), "{err}");

    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Segmenter::load(&truncated).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    assert!(err.to_string().contains("truncated.safetensors"), "{err}");

    let mut tensors = candle_core::safetensors::load(&good, &Device::Cpu).unwrap();
    let key = "mask_decoder.iou_token.weight";
    assert_eq!(tensors[key].dims(), &[1, 256]);
    tensors.insert(
        key.into(),
        Tensor::zeros((1, 255), DType::F32, &Device::Cpu).unwrap(),
    );
    let wrong = dir.path().join("wrong.safetensors");
    candle_core::safetensors::save(&tensors, &wrong).unwrap();
    let err = Segmenter::load(&wrong).unwrap_err();
    match &err {
        Error::ShapeMismatch {
            key: k,
            expected,
            found,
            ..
        } => {
            assert_eq!(k, key);
            assert_eq!(expected, &[1, 256]);
            assert_eq!(found, &[1, 255]);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(key) && text.contains("[1, 256]") && text.contains("[1, 255]"));

    tensors.remove(key);
    let short = dir.path().join("short.safetensors");
    candle_core::safetensors::save(&tensors, &short).unwrap();
    let err = Segmenter::load(&short).unwrap_err();
    assert!(
        matches!(&err, Error::MissingKey { key: k, .. } if k == key),
        "{err}"
    );
}

fn next(w: &SegmentWorker) -> SegmentEvent {
    w.recv_timeout(Duration::from_secs(300))
        .expect("the worker answers")
}

#[test]
fn worker_loads_embeds_and_answers_the_newest_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let weights = random_weights(dir.path());
    let w = SegmentWorker::spawn();

    // Before any weights: a clear failure, not a hang.
    w.segment(1, vec![(1.0, 1.0, true)]);
    match next(&w) {
        SegmentEvent::Failed { image_id, error } => {
            assert_eq!(image_id, Some(1));
            assert!(error.contains("weights"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    w.load(dir.path().join("missing.safetensors"));
    assert!(matches!(next(&w), SegmentEvent::LoadFailed { .. }));

    // Everything queued at once: the three prompts arrive while the weights load, so only
    // the newest is answered.
    w.load(&weights);
    w.embed(7, Arc::new(picture(100, 60)));
    let prompts: Vec<Vec<(f32, f32, bool)>> = vec![
        vec![(10.0, 10.0, true)],
        vec![(10.0, 10.0, true), (50.0, 30.0, false)],
        vec![(60.0, 30.0, true)],
    ];
    for p in &prompts {
        w.segment(7, p.clone());
    }
    assert!(matches!(next(&w), SegmentEvent::Loaded(p) if p == weights));
    assert!(matches!(
        next(&w),
        SegmentEvent::Embedded { image_id: 7, .. }
    ));
    match next(&w) {
        SegmentEvent::Mask {
            image_id,
            points,
            mask,
        } => {
            assert_eq!(image_id, 7);
            assert_eq!(points, prompts[2], "the newest prompt is answered");
            assert_eq!(mask.dimensions(), (100, 60));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        w.recv_timeout(Duration::from_millis(300)).is_none(),
        "superseded prompts are dropped"
    );

    // A prompt on an image that is not embedded fails.
    w.segment(8, vec![(1.0, 1.0, true)]);
    assert!(matches!(
        next(&w),
        SegmentEvent::Failed {
            image_id: Some(8),
            ..
        }
    ));
}

/// Prints the embedding time of a 1024×1024 image (run with `--ignored --nocapture`).
#[test]
#[ignore = "timing only"]
fn embedding_time_1024() {
    let dir = tempfile::tempdir().unwrap();
    let seg = Segmenter::load(&random_weights(dir.path())).unwrap();
    let img = picture(1024, 1024);
    let _ = seg.embed(&img).unwrap();
    let start = Instant::now();
    let emb = seg.embed(&img).unwrap();
    let embed = start.elapsed();
    let start = Instant::now();
    let _ = seg.mask(&emb, &[(500.0, 500.0, true)]).unwrap();
    let prompt = start.elapsed();
    eprintln!("embed 1024²: {embed:?}, one prompt → mask: {prompt:?}");
}
