//! Emoji data, the concept vocabulary, scenes, the concept classifier and FID (fixture only; the `#[ignore]`d tests
//! need `scripts/fetch-data.sh` to have run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_train::classifier::{
    Classifier, ClassifierConfig, ClassifierTrainConfig, fid, sym_eigen, train_classifier,
};
use tessera_train::data::{
    Background, CONCEPTS, EmojiSet, LoadOptions, SceneConfig, SceneGen, SceneItem, SceneMask,
    batch_to_tensor, class_names, concept_named, concept_of_emoji, scene_mask,
};

fn fixture() -> EmojiSet {
    EmojiSet::load_fixture(&fixture_dir()).unwrap()
}

#[test]
fn fixture_labels_join() {
    let set = fixture();
    assert_eq!(set.len(), 24);
    assert_eq!(class_names().len(), CONCEPTS.len());
    // One emoji per concept for the first 24 of the fixture's concepts, sprites 64²
    // premultiplied (colour never above alpha).
    let counts = set.class_counts();
    assert_eq!(counts.iter().sum::<usize>(), 24);
    assert!(counts.iter().all(|&n| n <= 1));
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
        assert_eq!(e.name, CONCEPTS[e.class].name);
        assert_eq!(concept_of_emoji(&e.id), Some(e.class));
        assert!(!e.short_names.is_empty() && !e.subcategory.is_empty());
    }
    let dog = &set.emoji()[set.find("1f436").unwrap()];
    assert_eq!((dog.name.as_str(), dog.class), ("dog face", 4));
    assert_eq!(dog.group, "Animals & Nature");
    assert_eq!(dog.subcategory, "animal-mammal");
    assert!(dog.short_names.iter().any(|s| s == "dog"));
    assert!(
        dog.keywords.iter().any(|k| k == "pet"),
        "{:?}",
        dog.keywords
    );
    // Every concept the issue names is in the fixture, under its own class.
    for (class, want) in [
        "red heart",
        "star",
        "sun",
        "cat face",
        "apple",
        "rocket",
        "house",
    ]
    .iter()
    .map(|w| (concept_named(w).unwrap(), w))
    {
        let e = set.emoji().iter().find(|e| e.class == class);
        assert_eq!(e.map(|e| e.name.as_str()), Some(*want));
    }
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
fn emoji_outside_the_vocabulary_are_skipped() {
    // A fixture with one known and one unknown emoji (thumbs up is no concept).
    let dir = tempfile::tempdir().unwrap();
    let set = fixture();
    let dog = set.find("1f436").unwrap();
    set.write_fixture(dir.path(), &[dog]).unwrap();
    let labels = dir.path().join("labels.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&labels).unwrap()).unwrap();
    let mut other = json["emoji"][0].clone();
    other["id"] = "1f44d".into();
    json["emoji"].as_array_mut().unwrap().push(other);
    std::fs::write(&labels, json.to_string()).unwrap();
    std::fs::copy(
        dir.path().join("sprites/1f436.png"),
        dir.path().join("sprites/1f44d.png"),
    )
    .unwrap();
    let back = EmojiSet::load_fixture(dir.path()).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back.emoji()[0].id, "1f436");
}

#[test]
fn held_out_scenes_are_other_scenes_of_the_same_concepts() {
    let set = fixture();
    let train = SceneGen::new(set.all(), SceneConfig::default()).unwrap();
    let val = SceneGen::new(set.all(), SceneConfig::default())
        .unwrap()
        .held_out();
    let (a, b) = (train.scenes(3, 0, 32, 64), val.scenes(3, 0, 32, 64));
    let again = val.scenes(3, 0, 32, 64);
    for ((t, v), w) in a.iter().zip(&b).zip(&again) {
        assert_ne!(t.image, v.image, "a held-out scene equals a training scene");
        assert_eq!(v.image, w.image, "the held-out split is deterministic");
    }
    // The training stream of another seed does not give the held-out one either.
    assert!(
        (0..64u64).all(|seed| train.scenes(seed, 0, 1, 64)[0].image != b[0].image),
        "a training seed reproduces a held-out scene"
    );
    // Both draw every concept of the set.
    let classes =
        |v: &[tessera_train::data::Scene]| v.iter().map(|s| s.class).collect::<BTreeSet<_>>();
    let all: BTreeSet<usize> = set.emoji().iter().map(|e| e.class).collect();
    assert_eq!(classes(&train.scenes(5, 0, 400, 32)), all);
    assert_eq!(classes(&val.scenes(5, 0, 400, 32)), all);
}

#[test]
fn scenes_are_object_centric_deterministic_and_labelled() {
    let set = fixture();
    let scene_gen = SceneGen::new(set.all(), SceneConfig::default()).unwrap();
    let a = scene_gen.scenes(11, 0, 200, 64);
    let b = scene_gen.scenes(11, 0, 200, 64);
    let c = scene_gen.scenes(12, 0, 24, 64);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let d = scene_gen.scene(&mut rng, 48);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    assert_eq!(scene_gen.scene(&mut rng, 48).image, d.image);
    assert_eq!(d.image.dimensions(), (48, 48));
    assert!(a.iter().zip(&c).any(|(x, y)| x.image != y.image));
    let mut counts = [0usize; 3];
    let (mut phrased, mut synonyms) = (0, 0);
    for (s, t) in a.iter().zip(&b) {
        assert_eq!(s.image, t.image);
        assert_eq!(s.caption, t.caption);
        assert_eq!(s.image.dimensions(), (64, 64));
        assert!((1..=2).contains(&s.boxes.len()));
        counts[s.boxes.len()] += 1;
        // Largest first and large: 0.55–0.9 of the side; the class is its concept.
        assert!(s.boxes.windows(2).all(|w| w[0].size >= w[1].size));
        let largest = &set.emoji()[s.boxes[0].emoji];
        assert_eq!(s.class, largest.class);
        assert!((35..=58).contains(&s.boxes[0].size), "{}", s.boxes[0].size);
        // Every emoji is named in order, by its concept's name or one of its words.
        let mut at = 0;
        for bx in &s.boxes {
            let concept = &CONCEPTS[set.emoji()[bx.emoji].class];
            let found = std::iter::once(concept.name)
                .chain(concept.words.iter().copied())
                .filter_map(|w| s.caption[at..].find(w).map(|p| (p + at, w)))
                .min();
            let (pos, word) = found.unwrap_or_else(|| {
                panic!("`{}` not named in order in `{}`", concept.name, s.caption)
            });
            synonyms += usize::from(word != concept.name);
            at = pos + word.len();
        }
        if s.caption.ends_with(&s.background.phrase()) {
            phrased += 1;
        }
        // The emoji changed the background somewhere inside its box.
        let m = scene_mask(s, SceneMask::Item(0));
        assert!(m.pixels().any(|p| p[0] == 255));
    }
    // Mostly one object, sometimes two; captions mostly say the background, and sometimes
    // use another word for the concept.
    assert!(counts[1] > 120 && counts[2] > 15, "{counts:?}");
    assert!(
        (110..=170).contains(&phrased),
        "{phrased} of 200 say the background"
    );
    assert!(synonyms > 20, "{synonyms} synonyms");
}

#[test]
fn scene_options_mirror_and_choose_backgrounds() {
    let set = fixture();
    let cfg = |flip: f32, backgrounds: [f32; 5]| SceneConfig {
        count_weights: vec![1.0],
        largest: (0.5, 0.5),
        flip,
        backgrounds,
        jitter: 0,
        ..SceneConfig::default()
    };
    let plain = SceneGen::new(set.all(), cfg(0.0, [1.0, 0.0, 0.0, 0.0, 0.0])).unwrap();
    let mirrored = SceneGen::new(set.all(), cfg(1.0, [1.0, 0.0, 0.0, 0.0, 0.0])).unwrap();
    for (p, m) in plain
        .scenes(4, 0, 12, 64)
        .iter()
        .zip(&mirrored.scenes(4, 0, 12, 64))
    {
        assert_eq!(p.boxes, m.boxes);
        assert_eq!(p.background, m.background);
        assert!(matches!(p.background, Background::Solid(_)));
        // Inside the box, the mirrored scene is the plain one flipped left–right.
        let b = &p.boxes[0];
        let (x0, y0) = (b.x.max(0) as u32, b.y.max(0) as u32);
        let (x1, y1) = (
            ((b.x + b.size as i32) as u32).min(64),
            ((b.y + b.size as i32) as u32).min(64),
        );
        let mut worst = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                let mx = (b.x + b.size as i32 - 1 - (x as i32 - b.x)) as u32;
                if mx < x0 || mx >= x1 {
                    continue;
                }
                let (a, c) = (p.image.get_pixel(mx, y), m.image.get_pixel(x, y));
                for k in 0..3 {
                    worst = worst.max(a[k].abs_diff(c[k]));
                }
            }
        }
        assert!(worst <= 2, "mirror differs by {worst}");
        assert_ne!(p.image, m.image);
    }
    let noise = SceneGen::new(set.all(), cfg(0.5, [0.0, 0.0, 0.0, 0.0, 1.0])).unwrap();
    assert!(
        noise
            .scenes(1, 0, 20, 32)
            .iter()
            .all(|s| matches!(s.background, Background::Noise(..)))
    );
    for bad in [
        cfg(1.5, [1.0; 5]),
        cfg(0.5, [0.0; 5]),
        cfg(0.5, [1.0, -1.0, 0.0, 0.0, 0.0]),
        SceneConfig {
            synonym: f32::NAN,
            ..SceneConfig::default()
        },
    ] {
        assert!(SceneGen::new(set.all(), bad).is_err());
    }
}

#[test]
fn scenes_snap_to_the_token_grid() {
    let set = fixture();
    let snapped = |grid: u32| {
        SceneGen::new(
            set.all(),
            SceneConfig {
                grid,
                ..SceneConfig::default()
            },
        )
        .unwrap()
        .scenes(3, 0, 300, 128)
    };
    let on_grid = |b: &SceneItem, g: i32| b.x % g == 0 && b.y % g == 0 && b.size as i32 % g == 0;
    let (mut sizes, mut corners) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for s in snapped(8) {
        for b in &s.boxes {
            assert!(on_grid(b, 8), "{b:?} is off the 8 px grid");
        }
        // The largest keeps its range (0.55–0.9 of 128 px, rounded to the grid) and at most
        // 1/8 of its side (rounded to the grid) outside.
        let l = &s.boxes[0];
        assert!((72..=112).contains(&l.size), "{}", l.size);
        assert!(
            l.x >= -(l.size as i32 / 8 + 4) && l.x + l.size as i32 <= 128 + l.size as i32 / 8 + 4
        );
        sizes.insert(l.size);
        corners.insert((l.x, l.y));
        // The emoji is drawn where its box says.
        assert!(
            scene_mask(&s, SceneMask::Item(0))
                .pixels()
                .any(|p| p[0] == 255)
        );
    }
    // Every size of the range occurs, and many places.
    assert_eq!(
        sizes.into_iter().collect::<Vec<_>>(),
        vec![72, 80, 88, 96, 104, 112]
    );
    assert!(corners.len() > 20, "{} corners", corners.len());
    // Unsnapped (the default), most boxes are off the grid.
    let off = snapped(0)
        .iter()
        .flat_map(|s| s.boxes.clone())
        .filter(|b| !on_grid(b, 8))
        .count();
    assert!(off > 200, "{off} boxes off the grid");
    let bad = SceneConfig {
        grid: 65,
        ..SceneConfig::default()
    };
    assert!(SceneGen::new(set.all(), bad).is_err());
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
        },
    )
    .unwrap();
    let (train, val) = (set.all(), set.all());
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
    // Well above chance (1 in 24 concepts) on training scenes after 40 steps.
    let scene_gen = SceneGen::new(train, cfg.scenes.clone()).unwrap();
    let ev = model.evaluate(&scene_gen, 128, 99, 32).unwrap();
    assert!(
        ev.accuracy > 4.0 / 24.0,
        "train-scene accuracy {}",
        ev.accuracy
    );
    assert_eq!(ev.confusion.iter().flatten().sum::<usize>(), 128);
    // Save / load gives the same logits and features.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cls.safetensors");
    model.save(&path).unwrap();
    assert!(Classifier::config_path(&path).is_file());
    let back = Classifier::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.config(), model.config());
    let val_gen = SceneGen::new(val, cfg.scenes.clone()).unwrap().held_out();
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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/emoji")
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
    assert_eq!(set.len(), CONCEPTS.len(), "one emoji per concept");
}

/// Emoji of the committed fixture: the sixteen concepts issue 16 names, and eight more.
const FIXTURE_IDS: [&str; 24] = [
    "2764", "2b50", "2600", "1f431", "1f436", "1f34e", "1f355", "1f680", "1f333", "1f4a7", "1f525",
    "2744", "1f319", "1f33c", "1f697", "1f3e0", "1f34c", "1f388", "26bd", "1f308", "2601", "1f3b8",
    "1f41f", "1f47b",
];

/// Regenerates `tests/fixtures/emoji` from the real data (run with `--ignored` and
/// `TESSERA_WRITE_FIXTURE=1`).
#[test]
#[ignore = "needs data/emoji; writes the fixture"]
fn regenerate_fixture() {
    if std::env::var_os("TESSERA_WRITE_FIXTURE").is_none() {
        return;
    }
    let set = EmojiSet::load(
        &real_data_dir(),
        &LoadOptions {
            sprite_size: 64,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(fixture_dir());
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
    use tessera_train::data::{SceneConfig, SceneGen};
    let set = EmojiSet::load(&real_data_dir(), &LoadOptions::default()).unwrap();
    let scene_gen = SceneGen::new(set.all(), SceneConfig::default()).unwrap();
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
        .unwrap_or(tessera_train::classifier::DEFAULT_CLASSIFIER_STEPS);
    let set = EmojiSet::load(&real_data_dir(), &LoadOptions::default()).unwrap();
    let (train, val) = (set.all(), set.all());
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
    let val_gen = SceneGen::new(val.clone(), cfg.scenes.clone())
        .unwrap()
        .held_out();
    let train_gen = SceneGen::new(train.clone(), cfg.scenes.clone()).unwrap();
    let t = Instant::now();
    let ev = model.evaluate(&val_gen, 2000, 12345, 64).unwrap();
    println!(
        "held-out scenes top-1: {:.3} ({:.1?})",
        ev.accuracy,
        t.elapsed()
    );
    for (c, row) in ev.confusion.iter().enumerate() {
        println!("  {:18} {:?}", CONCEPTS[c].name, row);
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
