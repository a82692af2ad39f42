//! Emoji data, scenes, the category classifier and FID (fixture only; the `#[ignore]`d tests
//! need `scripts/fetch-data.sh` to have run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_engine::train::classifier::{
    Classifier, ClassifierConfig, ClassifierTrainConfig, fid, sym_eigen, train_classifier,
};
use tessera_engine::train::data::{
    CATEGORIES, EmojiSet, LoadOptions, SceneConfig, SceneGen, SceneMask, batch_to_tensor,
    class_names, scene_mask,
};

fn fixture() -> EmojiSet {
    EmojiSet::load_fixture(&fixture_dir()).unwrap()
}

#[test]
fn fixture_labels_join() {
    let set = fixture();
    assert_eq!(set.len(), 24);
    assert_eq!(class_names(), &CATEGORIES);
    assert_eq!(set.class_names().len(), 8);
    // Three emoji per class, sprites 64² premultiplied (colour never above alpha).
    assert_eq!(set.class_counts(), [3; 8]);
    for e in set.emoji() {
        assert_eq!(e.sprite.dimensions(), (64, 64));
        assert!(
            e.sprite
                .pixels()
                .all(|p| p[0] <= p[3] && p[1] <= p[3] && p[2] <= p[3])
        );
        assert!(
            e.sprite.pixels().any(|p| p[3] == 255),
            "{} has no opaque pixel",
            e.id
        );
        assert_eq!(e.name, e.name.to_lowercase());
        assert!(!e.short_names.is_empty() && !e.subcategory.is_empty());
    }
    let dog = &set.emoji()[set.find("1f436").unwrap()];
    assert_eq!(dog.name, "dog face");
    assert_eq!(CATEGORIES[dog.category], "Animals & Nature");
    assert_eq!(dog.subcategory, "animal-mammal");
    assert!(dog.short_names.iter().any(|s| s == "dog"));
    assert!(
        dog.keywords.iter().any(|k| k == "pet"),
        "{:?}",
        dog.keywords
    );
    let heart = &set.emoji()[set.find("267b").unwrap()];
    assert_eq!(CATEGORIES[heart.category], "Symbols");
    // `load` detects the fixture layout too, and resizes sprites on request.
    let small = EmojiSet::load(
        &fixture_dir(),
        &LoadOptions {
            sprite_size: 32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(small.emoji()[0].sprite.dimensions(), (32, 32));
    assert!(EmojiSet::load(&fixture_dir().join("missing"), &LoadOptions::default()).is_err());
}

#[test]
fn split_is_disjoint_by_concept_and_deterministic() {
    let set = fixture();
    let (train, val) = set.split(3);
    assert_eq!(train.len() + val.len(), set.len());
    let (tc, vc) = (train.concepts(), val.concepts());
    assert!(tc.is_disjoint(&vc));
    // One held-out concept per class of three (at least one, never all).
    let val_classes: BTreeSet<usize> = val.iter().map(|e| e.category).collect();
    assert_eq!(val_classes.len(), 8);
    assert_eq!(val.len(), 8);
    let (train2, val2) = set.split(3);
    assert_eq!(train.indices(), train2.indices());
    assert_eq!(val.indices(), val2.indices());
    let others: Vec<Vec<usize>> = (0..8).map(|s| set.split(s).1.indices().to_vec()).collect();
    assert!(
        others.iter().any(|v| v != val.indices()),
        "the seed changes the split"
    );
}

#[test]
fn scenes_are_deterministic_and_labelled() {
    let set = fixture();
    let (train, _) = set.split(0);
    let scene_gen = SceneGen::new(train.clone(), SceneConfig::default()).unwrap();
    let a = scene_gen.scenes(11, 0, 24, 64);
    let b = scene_gen.scenes(11, 0, 24, 64);
    let c = scene_gen.scenes(12, 0, 24, 64);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let d = scene_gen.scene(&mut rng, 48);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    assert_eq!(scene_gen.scene(&mut rng, 48).image, d.image);
    assert_eq!(d.image.dimensions(), (48, 48));
    assert!(a.iter().zip(&c).any(|(x, y)| x.image != y.image));
    let mut counts = [0usize; 4];
    for (s, t) in a.iter().zip(&b) {
        assert_eq!(s.image, t.image);
        assert_eq!(s.caption, t.caption);
        assert_eq!(s.image.dimensions(), (64, 64));
        assert!((1..=3).contains(&s.boxes.len()));
        counts[s.boxes.len()] += 1;
        // Largest first; the class is the largest emoji's category; names in order.
        assert!(s.boxes.windows(2).all(|w| w[0].size >= w[1].size));
        let largest = &set.emoji()[s.boxes[0].emoji];
        assert_eq!(s.class, largest.category);
        assert!((25..=52).contains(&s.boxes[0].size), "{}", s.boxes[0].size);
        let mut at = 0;
        for b in &s.boxes {
            let e = &set.emoji()[b.emoji];
            assert!(
                train.indices().contains(&b.emoji),
                "scene uses a held-out emoji"
            );
            let pos = s.caption[at..].find(&e.name).map(|p| p + at);
            assert!(
                pos.is_some(),
                "`{}` not in order in `{}`",
                e.name,
                s.caption
            );
            at = pos.unwrap_or(0) + e.name.len();
        }
        assert!(s.caption.ends_with(&s.background.phrase()));
        // The emoji changed the background somewhere inside its box.
        let m = scene_mask(s, SceneMask::Item(0));
        assert!(m.pixels().any(|p| p[0] == 255));
    }
    assert!(
        counts[1] > 0 && counts[2] > 0 && counts[3] > 0,
        "{counts:?}"
    );
}

#[test]
fn scene_masks_and_tensors() {
    use tessera_engine::inpaint::PresetMask;
    let set = fixture();
    let scene_gen = SceneGen::new(set.all(), SceneConfig::default()).unwrap();
    let s = &scene_gen.scenes(1, 0, 1, 64)[0];
    let b = &s.boxes[0];
    let m = scene_mask(s, SceneMask::Item(0));
    let inside =
        |x: i32, y: i32| x >= b.x && x < b.x + b.size as i32 && y >= b.y && y < b.y + b.size as i32;
    for (x, y, p) in m.enumerate_pixels() {
        assert_eq!(p[0] == 255, inside(x as i32, y as i32));
    }
    assert!(
        scene_mask(s, SceneMask::Item(9))
            .pixels()
            .all(|p| p[0] == 0)
    );
    let up = scene_mask(s, SceneMask::Preset(PresetMask::UpperHalf));
    assert_eq!(up.get_pixel(0, 31)[0], 255);
    assert_eq!(up.get_pixel(0, 32)[0], 0);
    let imgs: Vec<_> = scene_gen
        .scenes(1, 0, 3, 64)
        .into_iter()
        .map(|s| s.image)
        .collect();
    let t = batch_to_tensor(&imgs, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[3, 3, 64, 64]);
    let one = tessera_engine::inpaint::to_tensor(&imgs[1], &Device::Cpu).unwrap();
    let diff = (t.narrow(0, 1, 1).unwrap() - one).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert!(batch_to_tensor(&[], &Device::Cpu).is_err());
    let odd = vec![imgs[0].clone(), image::RgbImage::new(8, 8)];
    assert!(batch_to_tensor(&odd, &Device::Cpu).is_err());
}

fn tiny_classifier_cfg() -> ClassifierTrainConfig {
    ClassifierTrainConfig {
        model: ClassifierConfig {
            work_res: 16,
            channels: vec![16, 32, 32],
            ..ClassifierConfig::default()
        },
        batch_size: 32,
        lr: 1e-2,
        warmup: 5,
        res: 32,
        // One large emoji per scene, so a few steps suffice.
        scenes: SceneConfig {
            count_weights: vec![1.0],
            largest: (0.7, 0.9),
            ..SceneConfig::default()
        },
        ..ClassifierTrainConfig::default()
    }
}

#[test]
fn classifier_trains_and_round_trips() {
    let set = EmojiSet::load(
        &fixture_dir(),
        &LoadOptions {
            sprite_size: 32,
            cache: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let (train, val) = set.split(0);
    let cfg = tiny_classifier_cfg();
    let mut losses = Vec::new();
    let model = train_classifier(&cfg, &train, 40, 1, &Device::Cpu, &mut |p| {
        losses.push(p.loss);
        assert!(p.loss.is_finite());
        true
    })
    .unwrap();
    assert_eq!(losses.len(), 40);
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    let (first, last) = (mean(&losses[..8]), mean(&losses[24..]));
    assert!(last < first * 0.9, "loss {first} -> {last}");
    // Better than chance on the training concepts.
    let scene_gen = SceneGen::new(train, cfg.scenes.clone()).unwrap();
    let ev = model.evaluate(&scene_gen, 128, 99, 32).unwrap();
    assert!(ev.accuracy > 0.25, "train-scene accuracy {}", ev.accuracy);
    assert_eq!(ev.confusion.iter().flatten().sum::<usize>(), 128);
    // Save / load gives the same logits and features.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cls.safetensors");
    model.save(&path).unwrap();
    assert!(Classifier::config_path(&path).is_file());
    let back = Classifier::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.config(), model.config());
    let val_gen = SceneGen::new(val, cfg.scenes.clone()).unwrap();
    let imgs: Vec<_> = val_gen
        .scenes(3, 0, 8, 32)
        .into_iter()
        .map(|s| s.image)
        .collect();
    let x = batch_to_tensor(&imgs, &Device::Cpu).unwrap();
    let (a, b) = (model.logits(&x).unwrap(), back.logits(&x).unwrap());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    assert_eq!(model.predict(&x).unwrap(), back.predict(&x).unwrap());
    let f = back.features_of(&imgs, 3).unwrap();
    assert_eq!((f.len(), f[0].len()), (8, 32));
    // Wrong inputs are errors, not panics.
    assert!(model.features(&x.narrow(1, 0, 2).unwrap()).is_err());
    assert!(Classifier::load(&dir.path().join("none.safetensors"), &Device::Cpu).is_err());
    let stopped = train_classifier(&cfg, &set.all(), 5, 1, &Device::Cpu, &mut |p| p.step < 2);
    assert!(matches!(stopped, Err(tessera_engine::Error::Cancelled)));
}

fn gaussian(n: usize, d: usize, shift: f32, scale: f32, seed: u64) -> Vec<Vec<f32>> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Sum of uniforms: roughly normal, correlated through a shared component.
    (0..n)
        .map(|_| {
            let common: f32 = rng.random_range(-1.0..1.0);
            (0..d)
                .map(|_| shift + scale * (common + rng.random_range(-1.0f32..1.0)))
                .collect()
        })
        .collect()
}

#[test]
fn fid_properties() {
    let a = gaussian(400, 6, 0.0, 1.0, 1);
    assert!(fid(&a, &a).unwrap().abs() < 1e-6);
    let b = gaussian(400, 6, 0.0, 1.0, 2);
    let same = fid(&a, &b).unwrap();
    let shifted: Vec<f64> = [0.5f32, 1.0, 2.0]
        .iter()
        .map(|s| fid(&a, &gaussian(400, 6, *s, 1.0, 2)).unwrap())
        .collect();
    assert!(same < shifted[0] && shifted[0] < shifted[1] && shifted[1] < shifted[2]);
    // A pure mean shift s in d dims adds d·s² (same samples, so the covariances match).
    let moved: Vec<Vec<f32>> = a
        .iter()
        .map(|r| r.iter().map(|v| v + 1.0).collect())
        .collect();
    assert!((fid(&a, &moved).unwrap() - 6.0).abs() < 1e-6);
    // Symmetric, and a wider spread costs.
    assert!((fid(&a, &b).unwrap() - fid(&b, &a).unwrap()).abs() < 1e-6);
    assert!(fid(&a, &gaussian(400, 6, 0.0, 2.0, 2)).unwrap() > same);
    assert!(fid(&a[..1], &b).is_err());
    assert!(fid(&a, &gaussian(10, 5, 0.0, 1.0, 3)).is_err());
    // Jacobi: A v = λ v for a small symmetric matrix.
    let m = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 1.0];
    let (l, v) = sym_eigen(&m, 3);
    for k in 0..3 {
        for i in 0..3 {
            let av: f64 = (0..3).map(|j| m[i * 3 + j] * v[j * 3 + k]).sum();
            assert!((av - l[k] * v[i * 3 + k]).abs() < 1e-10);
        }
    }
    assert!((l.iter().sum::<f64>() - 8.0).abs() < 1e-10);
}

fn real_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/emoji")
}

/// Loads the real data twice (cold, then from the cache) and prints counts and times.
#[test]
#[ignore = "needs data/emoji (scripts/fetch-data.sh)"]
fn real_data_load() {
    let dir = real_data_dir();
    let opts = LoadOptions::default();
    let t = Instant::now();
    let set = EmojiSet::load(&dir, &opts).unwrap();
    println!("load: {} emoji in {:.2?}", set.len(), t.elapsed());
    let t = Instant::now();
    let again = EmojiSet::load(&dir, &opts).unwrap();
    println!("reload: {} emoji in {:.2?}", again.len(), t.elapsed());
    println!("per class: {:?}", set.class_counts());
    assert_eq!(set.len(), again.len());
    let (train, val) = set.split(0);
    println!("split: {} train, {} val", train.len(), val.len());
}

/// Emoji of the committed fixture: three per class.
const FIXTURE_IDS: [&str; 24] = [
    "1f600", "1f60d", "1f602", // smileys
    "1f44b", "1f44d", "1f476", // people
    "1f436", "1f431", "1f33b", // animals & nature
    "1f34e", "1f34c", "1f355", // food
    "1f697", "1f3e0", "1f680", // travel
    "26bd", "1f388", "1f3ae", // activities
    "1f4a1", "1f4da", "1f4f1", // objects
    "267b", "26a0", "2705", // symbols
];

/// Regenerates `tests/fixtures/emoji` from the real data (run with `--ignored` and
/// `TESSERA_WRITE_FIXTURE=1`).
#[test]
#[ignore = "needs data/emoji; writes the fixture"]
fn regenerate_fixture() {
    if std::env::var_os("TESSERA_WRITE_FIXTURE").is_none() {
        return;
    }
    let set = EmojiSet::load(&real_data_dir(), &LoadOptions::default()).unwrap();
    let idx: Vec<usize> = FIXTURE_IDS.iter().map(|id| set.find(id).unwrap()).collect();
    set.write_fixture(&fixture_dir(), &idx).unwrap();
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/emoji")
}

/// Writes a contact sheet of 64 scenes from the real training split to
/// `target/emoji_scenes.png` and prints their captions.
#[test]
#[ignore = "needs data/emoji (scripts/fetch-data.sh)"]
fn real_scene_sheet() {
    use tessera_engine::train::data::{SceneConfig, SceneGen};
    let set = EmojiSet::load(&real_data_dir(), &LoadOptions::default()).unwrap();
    let (train, _) = set.split(0);
    let scene_gen = SceneGen::new(train, SceneConfig::default()).unwrap();
    let scenes = scene_gen.scenes(7, 0, 64, 64);
    let mut sheet = image::RgbImage::new(8 * 66, 8 * 66);
    for (i, s) in scenes.iter().enumerate() {
        let (x, y) = ((i % 8) as i64 * 66 + 1, (i / 8) as i64 * 66 + 1);
        image::imageops::overlay(&mut sheet, &s.image, x, y);
        println!("{i:2} [{}] {}", s.class, s.caption);
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/emoji_scenes.png");
    sheet.save(&out).unwrap();
    println!("wrote {}", out.display());
}

/// Trains the default classifier on the real training split (steps from
/// `TESSERA_CLS_STEPS`, default `DEFAULT_CLASSIFIER_STEPS`; `TESSERA_CLS_{CHANNELS,WORKRES,LR,
/// BATCH}` override the configuration), reports time and held-out-concept accuracy, FID reference
/// values, and saves it to `target/emoji_classifier.safetensors`. Run in release.
#[test]
#[ignore = "needs data/emoji; minutes in release"]
fn real_classifier() {
    let steps: usize = std::env::var("TESSERA_CLS_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(tessera_engine::train::classifier::DEFAULT_CLASSIFIER_STEPS);
    let set = EmojiSet::load(&real_data_dir(), &LoadOptions::default()).unwrap();
    let (train, val) = set.split(0);
    let mut cfg = ClassifierTrainConfig::default();
    let env = |k: &str| std::env::var(k).ok();
    if let Some(c) = env("TESSERA_CLS_CHANNELS") {
        cfg.model.channels = c.split(',').map(|v| v.parse().unwrap()).collect();
    }
    if let Some(v) = env("TESSERA_CLS_WORKRES") {
        cfg.model.work_res = v.parse().unwrap();
    }
    if let Some(v) = env("TESSERA_CLS_LR") {
        cfg.lr = v.parse().unwrap();
    }
    if let Some(v) = env("TESSERA_CLS_BATCH") {
        cfg.batch_size = v.parse().unwrap();
    }
    println!("{cfg:?}");
    let t = Instant::now();
    let mut window = Vec::new();
    let model = train_classifier(&cfg, &train, steps, 0, &Device::Cpu, &mut |p| {
        window.push((p.loss, p.batch_accuracy));
        if p.step % 50 == 0 || p.step == p.steps {
            let n = window.len() as f32;
            let (l, a) = window
                .iter()
                .fold((0.0, 0.0), |s, w| (s.0 + w.0, s.1 + w.1));
            println!(
                "step {:4} {:6.1}s loss {:.3} batch acc {:.3} lr {:.2e}",
                p.step,
                t.elapsed().as_secs_f32(),
                l / n,
                a / n,
                p.lr
            );
            window.clear();
        }
        true
    })
    .unwrap();
    println!("trained {steps} steps in {:.1?}", t.elapsed());
    let val_gen = SceneGen::new(val.clone(), cfg.scenes.clone()).unwrap();
    let train_gen = SceneGen::new(train.clone(), cfg.scenes.clone()).unwrap();
    let t = Instant::now();
    let ev = model.evaluate(&val_gen, 2000, 12345, 64).unwrap();
    println!(
        "val (held-out concepts) top-1: {:.3} ({:.1?})",
        ev.accuracy,
        t.elapsed()
    );
    for (c, row) in ev.confusion.iter().enumerate() {
        println!("  {:18} {:?}", CATEGORIES[c], row);
    }
    let single = SceneConfig {
        count_weights: vec![1.0],
        ..cfg.scenes.clone()
    };
    let ev1 = model
        .evaluate(
            &SceneGen::new(val.clone(), single).unwrap(),
            2000,
            12345,
            64,
        )
        .unwrap();
    println!("val single-emoji scenes top-1: {:.3}", ev1.accuracy);
    let evt = model.evaluate(&train_gen, 2000, 54321, 64).unwrap();
    println!("train-concept scenes top-1: {:.3}", evt.accuracy);
    // FID references: two independent val streams; val vs train concepts; val vs blurred val.
    let imgs = |g: &SceneGen, seed| -> Vec<image::RgbImage> {
        g.scenes(seed, 0, 1000, 64)
            .into_iter()
            .map(|s| s.image)
            .collect()
    };
    let (va, vb, tr) = (imgs(&val_gen, 1), imgs(&val_gen, 2), imgs(&train_gen, 3));
    let blurred: Vec<_> = vb.iter().map(|i| image::imageops::blur(i, 1.5)).collect();
    let f = |v: &[image::RgbImage]| model.features_of(v, 128).unwrap();
    let (fa, fb, ft, fbl) = (f(&va), f(&vb), f(&tr), f(&blurred));
    let t = Instant::now();
    println!("FID val/val {:.3}", fid(&fa, &fb).unwrap());
    println!("FID val/train {:.3}", fid(&fa, &ft).unwrap());
    println!(
        "FID val/blurred val {:.3} ({:.1?} per FID)",
        fid(&fa, &fbl).unwrap(),
        t.elapsed() / 3
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/emoji_classifier.safetensors");
    model.save(&out).unwrap();
    println!("saved {}", out.display());
}
