//! Pixel-space inpainting helpers: windows, token masks, tensor conversion, composite.
//!
//! One test file per module under test (each is its own test binary, and each binary links the
//! whole crate: splitting would cost CI disk and link time, not help a reader).

use candle_core::{Device, Tensor};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::inpaint::{
    PresetMask, Window, WindowOptions, colour_match_ring_px, composite, composite_window,
    crop_to_model, from_tensor, known_tokens, match_colours, plan_window, preset_mask, to_tensor,
    token_mask,
};

fn random_image(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    RgbImage::from_fn(w, h, |_, _| Rgb([rng.random(), rng.random(), rng.random()]))
}

/// A smooth image (low-frequency gradients), so resampling it changes little.
fn smooth_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f32 / w.max(1) as f32;
        let fy = y as f32 / h.max(1) as f32;
        Rgb([
            (40.0 + 170.0 * fx) as u8,
            (200.0 - 150.0 * fy) as u8,
            (128.0 + 60.0 * (fx * 3.0 + fy * 2.0).sin()) as u8,
        ])
    })
}

/// A few random discs, all at least `margin` from the image border.
fn blob_mask(w: u32, h: u32, seed: u64, margin: u32) -> GrayImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let discs: Vec<(f32, f32, f32)> = (0..4)
        .map(|_| {
            let r = rng.random_range(3.0..12.0f32);
            let lo = margin as f32 + r;
            (
                rng.random_range(lo..w as f32 - lo),
                rng.random_range(lo..h as f32 - lo),
                r,
            )
        })
        .collect();
    GrayImage::from_fn(w, h, |x, y| {
        let inside = discs.iter().any(|&(cx, cy, r)| {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            dx * dx + dy * dy <= r * r
        });
        Luma([if inside { 255 } else { 0 }])
    })
}

fn masked_pixels(mask: &GrayImage) -> Vec<(u32, u32)> {
    mask.enumerate_pixels()
        .filter(|(_, _, p)| p[0] >= 128)
        .map(|(x, y, _)| (x, y))
        .collect()
}

/// Squared Euclidean distance of every pixel to the nearest masked pixel (brute force).
fn distance2(mask: &GrayImage) -> Vec<u64> {
    let pts = masked_pixels(mask);
    let (w, h) = mask.dimensions();
    let mut out = vec![u64::MAX; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            for &(mx, my) in &pts {
                let dx = i64::from(x) - i64::from(mx);
                let dy = i64::from(y) - i64::from(my);
                let d = (dx * dx + dy * dy) as u64;
                let o = &mut out[(y * w + x) as usize];
                *o = (*o).min(d);
            }
        }
    }
    out
}

fn in_window(win: &Window, x: u32, y: u32) -> bool {
    let s = i64::from(win.size);
    let (x, y) = (i64::from(x), i64::from(y));
    x >= win.x && x < win.x + s && y >= win.y && y < win.y + s
}

#[test]
fn mask_size_mismatch_is_an_error_naming_both_sizes() {
    let mask = GrayImage::new(30, 20);
    let err = plan_window(40, 25, &mask, &WindowOptions::default()).unwrap_err();
    assert!(err.contains("30×20"), "{err}");
    assert!(err.contains("40×25"), "{err}");
}

#[test]
fn empty_image_is_an_error() {
    let mask = GrayImage::new(0, 0);
    assert!(plan_window(0, 0, &mask, &WindowOptions::default()).is_err());
    let mask = GrayImage::new(0, 5);
    assert!(plan_window(0, 5, &mask, &WindowOptions::default()).is_err());
}

#[test]
fn empty_mask_gives_none() {
    let mask = GrayImage::from_pixel(64, 48, Luma([127]));
    let opts = WindowOptions::default();
    assert_eq!(plan_window(64, 48, &mask, &opts), Ok(None));
    let whole = WindowOptions {
        whole_image: true,
        ..opts
    };
    assert_eq!(plan_window(64, 48, &mask, &whole), Ok(None));
}

#[test]
fn a_fixed_window_is_used_as_given_and_must_contain_the_mask() {
    let mut mask = GrayImage::new(64, 48);
    for y in 20..30 {
        for x in 24..34 {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    let planned = plan_window(64, 48, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    let fixed = Window {
        x: -4,
        y: 8,
        size: 40,
    };
    assert_ne!(planned, fixed);
    let opts = WindowOptions {
        fixed: Some(fixed),
        whole_image: true,
        ..WindowOptions::default()
    };
    assert_eq!(plan_window(64, 48, &mask, &opts), Ok(Some(fixed)));
    // A mask reaching past it (x = 36 ≥ −4 + 40) is refused, naming the window.
    mask.put_pixel(36, 25, Luma([255]));
    let err = plan_window(64, 48, &mask, &opts).unwrap_err();
    assert!(err.contains("fixed window"), "{err}");
    // No mask, no window, fixed or not.
    let empty = GrayImage::new(64, 48);
    assert_eq!(plan_window(64, 48, &empty, &opts), Ok(None));
}

#[test]
fn window_is_square_and_contains_the_padded_mask_box() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..300 {
        let w = rng.random_range(1..400u32);
        let h = rng.random_range(1..400u32);
        let bx0 = rng.random_range(0..w);
        let by0 = rng.random_range(0..h);
        let bx1 = rng.random_range(bx0 + 1..=w);
        let by1 = rng.random_range(by0 + 1..=h);
        let mut mask = GrayImage::new(w, h);
        // Mark the box's corners only: the bbox is what counts.
        for (x, y) in [
            (bx0, by0),
            (bx1 - 1, by1 - 1),
            (bx0, by1 - 1),
            (bx1 - 1, by0),
        ] {
            mask.put_pixel(x, y, Luma([200]));
        }
        let opts = WindowOptions {
            padding: rng.random_range(0.0..2.0),
            min_padding_px: rng.random_range(0..40),
            feather_px: rng.random_range(0..20),
            ..WindowOptions::default()
        };
        let win = plan_window(w, h, &mask, &opts).unwrap().unwrap();
        let side = (bx1 - bx0).max(by1 - by0) as f32;
        let pad = ((opts.padding * side).ceil() as i64)
            .max(i64::from(opts.min_padding_px))
            .max(i64::from(opts.feather_px));
        let s = i64::from(win.size);
        assert!(
            win.size >= 1 && win.size <= w.max(h),
            "case {case}: {win:?}"
        );
        // (bbox ± pad) ∩ image ⊆ window.
        let need_x0 = (i64::from(bx0) - pad).max(0);
        let need_y0 = (i64::from(by0) - pad).max(0);
        let need_x1 = (i64::from(bx1) + pad).min(i64::from(w));
        let need_y1 = (i64::from(by1) + pad).min(i64::from(h));
        assert!(
            win.x <= need_x0 && win.x + s >= need_x1,
            "case {case}: {w}×{h}, box x {bx0}..{bx1}, pad {pad}, {win:?}"
        );
        assert!(
            win.y <= need_y0 && win.y + s >= need_y1,
            "case {case}: {w}×{h}, box y {by0}..{by1}, pad {pad}, {win:?}"
        );
        // The window only leaves the image along an axis where it is larger than the image.
        if s <= i64::from(w) {
            assert!(win.x >= 0 && win.x + s <= i64::from(w), "case {case}");
        }
        if s <= i64::from(h) {
            assert!(win.y >= 0 && win.y + s <= i64::from(h), "case {case}");
        }
    }
}

#[test]
fn full_mask_and_whole_image_give_the_covering_square() {
    let mask = GrayImage::from_pixel(300, 120, Luma([255]));
    let win = plan_window(300, 120, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        win,
        Window {
            x: 0,
            y: -90,
            size: 300
        }
    );
    assert_eq!(win, Window::covering(300, 120));
    let mut small = GrayImage::new(300, 120);
    small.put_pixel(10, 10, Luma([255]));
    let opts = WindowOptions {
        whole_image: true,
        ..WindowOptions::default()
    };
    assert_eq!(plan_window(300, 120, &small, &opts), Ok(Some(win)));
    assert_eq!(win.clip_to(300, 120), Some((0, 0, 300, 120)));
}

#[test]
fn composite_keeps_pixels_beyond_the_feather_bit_identical() {
    let (w, h) = (180, 140);
    let original = random_image(w, h, 1);
    for (seed, feather) in [(2u64, 6u32), (3, 0), (4, 15)] {
        let mask = blob_mask(w, h, seed, 0);
        let opts = WindowOptions {
            feather_px: feather,
            padding: 0.3,
            ..WindowOptions::default()
        };
        let win = plan_window(w, h, &mask, &opts).unwrap().unwrap();
        let generated = random_image(64, 64, seed + 100);
        let out = composite(&original, &mask, &win, &generated, feather);
        assert_eq!(out.dimensions(), (w, h));
        let d2 = distance2(&mask);
        let f2 = u64::from(feather) * u64::from(feather);
        let mut changed_in_ramp = 0;
        for y in 0..h {
            for x in 0..w {
                let d = d2[(y * w + x) as usize];
                let (a, b) = (original.get_pixel(x, y), out.get_pixel(x, y));
                if d > f2 || !in_window(&win, x, y) {
                    assert_eq!(a, b, "feather {feather}: ({x},{y}) at d²={d} changed");
                } else if d > 0 && a != b {
                    changed_in_ramp += 1;
                }
            }
        }
        if feather > 1 {
            assert!(changed_in_ramp > 0, "feather {feather}: no blending at all");
        }
    }
}

#[test]
fn composite_puts_the_generated_content_on_the_mask() {
    let (w, h) = (400, 300);
    let original = random_image(w, h, 11);
    let target = smooth_image(w, h);
    let mask = blob_mask(w, h, 12, 40);
    for res in [256u32, 64, 512] {
        let win = plan_window(w, h, &mask, &WindowOptions::default())
            .unwrap()
            .unwrap();
        let generated = crop_to_model(&target, &win, res);
        assert_eq!(generated.dimensions(), (res, res));
        let out = composite(&original, &mask, &win, &generated, 8);
        let mut worst = 0i32;
        for (x, y) in masked_pixels(&mask) {
            let (a, b) = (out.get_pixel(x, y), target.get_pixel(x, y));
            for c in 0..3 {
                worst = worst.max((i32::from(a[c]) - i32::from(b[c])).abs());
            }
        }
        assert!(worst <= 4, "res {res}: worst difference {worst}");
        let (crop, origin) = composite_window(&original, &mask, &win, &generated, 8);
        let (cx, cy, cw, ch) = win.clip_to(w, h).unwrap();
        assert_eq!(origin, (cx, cy));
        assert_eq!(crop.dimensions(), (cw, ch));
        for (x, y, p) in crop.enumerate_pixels() {
            assert_eq!(p, out.get_pixel(x + cx, y + cy));
        }
    }
}

#[test]
fn window_of_model_size_round_trips_exactly() {
    let (w, h) = (600, 500);
    let original = random_image(w, h, 21);
    let target = random_image(w, h, 22);
    let mut mask = GrayImage::new(w, h);
    for y in 200..260 {
        for x in 250..300 {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    let win = Window {
        x: 150,
        y: 100,
        size: 256,
    };
    let generated = crop_to_model(&target, &win, 256);
    assert_eq!(
        generated,
        image::imageops::crop_imm(&target, 150, 100, 256, 256).to_image()
    );
    let out = composite(&original, &mask, &win, &generated, 4);
    for (x, y) in masked_pixels(&mask) {
        assert_eq!(out.get_pixel(x, y), target.get_pixel(x, y));
    }
}

#[test]
fn crop_matches_imageops_catmull_rom() {
    let img = random_image(300, 300, 31);
    let win = Window {
        x: 0,
        y: 0,
        size: 300,
    };
    for res in [256u32, 64, 500] {
        let ours = crop_to_model(&img, &win, res);
        let theirs =
            image::imageops::resize(&img, res, res, image::imageops::FilterType::CatmullRom);
        let worst = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap();
        assert!(worst <= 1, "res {res}: worst {worst}");
    }
}

#[test]
fn crop_edge_replicates_outside_the_image() {
    let img = smooth_image(40, 10);
    let win = Window::covering(40, 10);
    assert_eq!(
        win,
        Window {
            x: 0,
            y: -15,
            size: 40
        }
    );
    let crop = crop_to_model(&img, &win, 40);
    for x in 0..40 {
        for y in 0..15 {
            assert_eq!(crop.get_pixel(x, y), img.get_pixel(x, 0));
        }
        for y in 25..40 {
            assert_eq!(crop.get_pixel(x, y), img.get_pixel(x, 9));
        }
        for y in 15..25 {
            assert_eq!(crop.get_pixel(x, y), img.get_pixel(x, y - 15));
        }
    }
}

#[test]
fn one_pixel_stroke_marks_its_token() {
    // A single pixel in a small window (upscaled into the model).
    let mut mask = GrayImage::new(1000, 1000);
    mask.put_pixel(500, 500, Luma([255]));
    let win = plan_window(1000, 1000, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    let grid = 16;
    let tm = token_mask(&mask, &win, grid, 0.0);
    let s = f64::from(win.size);
    let (u, v) = (500.5 - win.x as f64, 500.5 - win.y as f64);
    let (tc, tr) = (
        (u * grid as f64 / s) as usize,
        (v * grid as f64 / s) as usize,
    );
    assert!(tm[tr * grid + tc], "{win:?}");
    // Every marked token's patch overlaps the pixel.
    for (i, &m) in tm.iter().enumerate() {
        if m {
            let (r, c) = ((i / grid) as f64, (i % grid) as f64);
            let p = s / grid as f64;
            assert!(c * p < u + 0.5 && (c + 1.0) * p > u - 0.5, "{i}");
            assert!(r * p < v + 0.5 && (r + 1.0) * p > v - 0.5, "{i}");
        }
    }

    // A one-pixel-wide diagonal line in a big window (downscaled into the model): every token
    // the line's pixels touch is marked, no other (patches are 187.5 px here, so the line also
    // clips the corners of the tokens next to the diagonal).
    let n = 3000u32;
    let mut mask = GrayImage::new(n, n);
    for i in 0..n {
        mask.put_pixel(i, i, Luma([255]));
    }
    let win = plan_window(n, n, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(win, Window::covering(n, n));
    let tm = token_mask(&mask, &win, grid, 0.0);
    let p = f64::from(n) / grid as f64;
    let overlaps =
        |i: u32, t: usize| f64::from(i + 1) > t as f64 * p && f64::from(i) < (t + 1) as f64 * p;
    for r in 0..grid {
        for c in 0..grid {
            let expect = (0..n).any(|i| overlaps(i, r) && overlaps(i, c));
            assert_eq!(tm[r * grid + c], expect, "token ({r},{c})");
        }
    }
    assert!((0..grid).all(|t| tm[t * grid + t]));
}

#[test]
fn threshold_ignores_sparse_patches() {
    let win = Window {
        x: 0,
        y: 0,
        size: 256,
    };
    let mut mask = GrayImage::new(256, 256);
    mask.put_pixel(37, 200, Luma([255]));
    let tm = token_mask(&mask, &win, 16, 0.0);
    assert_eq!(tm.iter().filter(|&&m| m).count(), 1);
    assert!(tm[(200 / 16) * 16 + 37 / 16]);
    assert!(token_mask(&mask, &win, 16, 0.5).iter().all(|&m| !m));
    // Exactly half of a patch: marked at 0.5 (at least the threshold), not at 0.51.
    let mut mask = GrayImage::new(256, 256);
    for y in 16..32 {
        for x in 32..40 {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    let tm = token_mask(&mask, &win, 16, 0.5);
    assert_eq!(tm.iter().filter(|&&m| m).count(), 1);
    assert!(tm[16 + 2]);
    assert!(token_mask(&mask, &win, 16, 0.51).iter().all(|&m| !m));
    // A fully covered patch at threshold 1.
    assert!(
        token_mask(&GrayImage::from_pixel(256, 256, Luma([255])), &win, 16, 1.0)
            .iter()
            .all(|&m| m)
    );
}

#[test]
fn presets_on_the_paper_grid() {
    let opts = WindowOptions::default();
    let grid = 16;
    for (kind, expect) in [
        (
            PresetMask::UpperHalf,
            Box::new(|r: usize, _c: usize| r < 8) as Box<dyn Fn(_, _) -> _>,
        ),
        (
            PresetMask::KeepCentre,
            Box::new(|r: usize, c: usize| !((4..12).contains(&r) && (4..12).contains(&c))),
        ),
        (
            PresetMask::CentreWindow,
            Box::new(|r: usize, c: usize| (6..10).contains(&r) && (6..10).contains(&c)),
        ),
    ] {
        let mask = preset_mask(kind, 256, 256);
        let win = if kind == PresetMask::CentreWindow {
            // Around a small mask the planner picks a smaller window; use the paper's view.
            Window {
                x: 0,
                y: 0,
                size: 256,
            }
        } else {
            plan_window(256, 256, &mask, &opts).unwrap().unwrap()
        };
        assert_eq!(
            win,
            Window {
                x: 0,
                y: 0,
                size: 256
            },
            "{kind:?}"
        );
        let tm = token_mask(&mask, &win, grid, 0.0);
        for r in 0..grid {
            for c in 0..grid {
                assert_eq!(tm[r * grid + c], expect(r, c), "{kind:?} token ({r},{c})");
            }
        }
    }
    // Odd and degenerate sizes do not panic and are never empty where a pixel exists.
    for (w, h) in [(1, 1), (3, 7), (0, 5), (5, 0), (1000, 2)] {
        for kind in [
            PresetMask::UpperHalf,
            PresetMask::KeepCentre,
            PresetMask::CentreWindow,
        ] {
            let m = preset_mask(kind, w, h);
            assert_eq!(m.dimensions(), (w, h));
            if w > 0 && h > 0 && kind != PresetMask::KeepCentre {
                assert!(!masked_pixels(&m).is_empty(), "{kind:?} {w}×{h}");
            }
        }
    }
}

#[test]
fn tensor_round_trip_is_exact_or_one_lower() {
    let img = RgbImage::from_fn(256, 3, |x, y| {
        Rgb([x as u8, (x as u8).wrapping_add(y as u8), 255 - x as u8])
    });
    let t = to_tensor(&img, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[1, 3, 3, 256]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v[0], -1.0);
    assert_eq!(v[255], 1.0);
    let back = from_tensor(&t).unwrap();
    assert_eq!(back.len(), 1);
    // The official truncation makes the round trip exact or one lower (f32 rounding of
    // x/127.5 − 1 then (x + 1)/2·255 lands just below the integer for some values).
    let mut lower = Vec::new();
    for (a, b) in back[0].as_raw().iter().zip(img.as_raw()) {
        assert!(*a == *b || *a + 1 == *b, "{b} came back as {a}");
        if a != b && !lower.contains(b) {
            lower.push(*b);
        }
    }
    lower.sort_unstable();
    assert!(!lower.contains(&0) && !lower.contains(&255) && !lower.contains(&128));
    assert_eq!(lower.len(), 95, "documented in from_tensor");
    // Batches, out-of-range values, f64 and rank 3.
    let b = Tensor::cat(&[&t, &(t.clone() * 3.0).unwrap()], 0).unwrap();
    let imgs = from_tensor(&b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    assert_eq!(imgs.len(), 2);
    assert_eq!(imgs[0], back[0]);
    assert_eq!(imgs[1].get_pixel(0, 0), &Rgb([0, 0, 255]));
    assert_eq!(from_tensor(&t.squeeze(0).unwrap()).unwrap()[0], back[0]);
    // Wrong shapes are errors, not panics.
    assert!(
        from_tensor(&Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap())
            .is_err()
    );
    assert!(
        from_tensor(&Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap())
            .is_err()
    );
    // Empty image.
    let e = to_tensor(&RgbImage::new(0, 0), &Device::Cpu).unwrap();
    assert_eq!(from_tensor(&e).unwrap()[0].dimensions(), (0, 0));
}

#[test]
fn tiny_image_works() {
    let img = RgbImage::from_pixel(1, 1, Rgb([10, 200, 30]));
    let mask = GrayImage::from_pixel(1, 1, Luma([255]));
    let win = plan_window(1, 1, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        win,
        Window {
            x: 0,
            y: 0,
            size: 1
        }
    );
    let crop = crop_to_model(&img, &win, 256);
    assert!(crop.pixels().all(|p| *p == Rgb([10, 200, 30])));
    assert!(token_mask(&mask, &win, 16, 0.0).iter().all(|&m| m));
    let generated = RgbImage::from_pixel(256, 256, Rgb([99, 98, 97]));
    let out = composite(&img, &mask, &win, &generated, 8);
    assert_eq!(out.get_pixel(0, 0), &Rgb([99, 98, 97]));
    let (crop, origin) = composite_window(&img, &mask, &win, &generated, 8);
    assert_eq!((crop.get_pixel(0, 0), origin), (&Rgb([99, 98, 97]), (0, 0)));
    // Unmasked 1×1: nothing to do.
    assert_eq!(
        plan_window(1, 1, &GrayImage::new(1, 1), &WindowOptions::default()),
        Ok(None)
    );
}

#[test]
fn long_thin_image_works() {
    let (w, h) = (5000, 300);
    let img = smooth_image(w, h);
    // A mask near the right edge.
    let mut mask = GrayImage::new(w, h);
    for y in 100..180 {
        for x in 4950..4990 {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    for whole_image in [false, true] {
        let opts = WindowOptions {
            whole_image,
            ..WindowOptions::default()
        };
        let win = plan_window(w, h, &mask, &opts).unwrap().unwrap();
        assert!(win.size <= w);
        if whole_image {
            assert_eq!(
                win,
                Window {
                    x: 0,
                    y: -2350,
                    size: 5000
                }
            );
        } else {
            assert!(
                win.x >= 0 && win.x + i64::from(win.size) <= i64::from(w),
                "{win:?}"
            );
        }
        let crop = crop_to_model(&img, &win, 256);
        assert_eq!(crop.dimensions(), (256, 256));
        let tm = token_mask(&mask, &win, 16, 0.0);
        assert!(tm.iter().any(|&m| m));
        let generated = RgbImage::from_pixel(256, 256, Rgb([1, 2, 3]));
        let out = composite(&img, &mask, &win, &generated, 8);
        assert_eq!(out.dimensions(), (w, h));
        assert_eq!(out.get_pixel(4960, 150), &Rgb([1, 2, 3]));
        assert_eq!(out.get_pixel(4900, 150), img.get_pixel(4900, 150));
        assert_eq!(out.get_pixel(10, 10), img.get_pixel(10, 10));
    }
}

#[test]
fn big_image_small_mask() {
    let n = 4096;
    let img = RgbImage::from_fn(n, n, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
    let mut mask = GrayImage::new(n, n);
    for y in 2000..2010 {
        for x in 3000..3030 {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    let win = plan_window(n, n, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    assert!(win.size < 200, "{win:?}");
    let generated = RgbImage::from_pixel(256, 256, Rgb([7, 7, 7]));
    let out = composite(&img, &mask, &win, &generated, 8);
    assert_eq!(out.get_pixel(3010, 2005), &Rgb([7, 7, 7]));
    let changed = out
        .as_raw()
        .iter()
        .zip(img.as_raw())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| ((i / 3) as u32 % n, (i / 3) as u32 / n))
        .collect::<Vec<_>>();
    assert!(!changed.is_empty());
    assert!(
        changed
            .iter()
            .all(|&(x, y)| (2992..3038).contains(&x) && (1992..2018).contains(&y))
    );
}

#[test]
fn odd_inputs_do_not_panic() {
    let img = random_image(50, 40, 41);
    let mask = blob_mask(50, 40, 42, 0);
    let gen_img = random_image(32, 32, 43);
    let windows = [
        Window {
            x: 0,
            y: 0,
            size: 0,
        },
        Window {
            x: -1000,
            y: -1000,
            size: 10,
        },
        Window {
            x: 45,
            y: 35,
            size: 30,
        },
        Window {
            x: i64::MAX - 5,
            y: i64::MIN,
            size: u32::MAX,
        },
        Window {
            x: -20,
            y: -20,
            size: 100,
        },
    ];
    let other_masks = [GrayImage::new(0, 0), blob_mask(30, 70, 44, 0), mask.clone()];
    for win in &windows {
        for m in &other_masks {
            let _ = crop_to_model(&img, win, 16);
            let _ = crop_to_model(&RgbImage::new(0, 0), win, 16);
            assert_eq!(crop_to_model(&img, win, 0).dimensions(), (0, 0));
            for grid in [0, 1, 3, 16] {
                for thr in [0.0, 0.5, f32::NAN, -1.0, 2.0] {
                    assert_eq!(token_mask(m, win, grid, thr).len(), grid * grid);
                }
            }
            for g in [&gen_img, &RgbImage::new(0, 0), &random_image(7, 300, 45)] {
                let out = composite(&img, m, win, g, 5);
                assert_eq!(out.dimensions(), img.dimensions());
                let (c, _) = composite_window(&img, m, win, g, u32::MAX);
                assert!(c.width() <= 50 && c.height() <= 40);
            }
        }
    }
    // No generated content → the original.
    let win = plan_window(50, 40, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(composite(&img, &mask, &win, &RgbImage::new(0, 0), 8), img);
    // Extreme options.
    for padding in [f32::NAN, f32::INFINITY, -3.0, 1e30] {
        let opts = WindowOptions {
            padding,
            min_padding_px: u32::MAX,
            feather_px: u32::MAX,
            ..WindowOptions::default()
        };
        let w = plan_window(50, 40, &mask, &opts).unwrap().unwrap();
        assert_eq!(w, Window::covering(50, 40));
    }
}

#[test]
fn known_tokens_keeps_unmasked() {
    assert_eq!(
        known_tokens(&[5, 6, 7, 8], &[false, true, false]),
        vec![Some(5), None, Some(7), Some(8)]
    );
}

#[test]
fn options_default_and_serde() {
    let d = WindowOptions::default();
    assert!(!d.whole_image);
    assert_eq!(
        (d.padding, d.min_padding_px, d.feather_px, d.token_threshold),
        (1.0, 16, 8, 0.0)
    );
    let parsed: WindowOptions = serde_json::from_str(r#"{"feather_px": 3}"#).unwrap();
    assert_eq!(parsed, WindowOptions { feather_px: 3, ..d });
    // Colour match is off by default and when absent from older settings files.
    assert!(!d.colour_match);
    assert!(!parsed.colour_match);
    let on: WindowOptions = serde_json::from_str(r#"{"colour_match": true}"#).unwrap();
    assert_eq!(
        on,
        WindowOptions {
            colour_match: true,
            ..d
        }
    );
}

/// Mean absolute per-channel difference between `a` and `b` over `pixels`.
fn mean_error(a: &RgbImage, b: &RgbImage, pixels: &[(u32, u32)]) -> f64 {
    let mut sum = 0.0;
    for &(x, y) in pixels {
        let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
        for c in 0..3 {
            sum += (f64::from(p[c]) - f64::from(q[c])).abs();
        }
    }
    sum / (3 * pixels.len()) as f64
}

#[test]
fn colour_match_corrects_a_cast_and_keeps_unmasked_pixels() {
    let (w, h) = (300, 220);
    let original = smooth_image(w, h);
    let mask = blob_mask(w, h, 21, 30);
    let masked = masked_pixels(&mask);
    let feather = 8;
    let win = plan_window(w, h, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    // The "generated" window: the original, but with a strong colour cast and lower contrast.
    let mut generated = crop_to_model(&original, &win, 128);
    for p in generated.pixels_mut() {
        let [r, g, b] = p.0;
        p.0 = [
            (f32::from(r) * 0.6 + 70.0) as u8,
            g.saturating_add(35),
            b.saturating_sub(30),
        ];
    }
    let before = composite(&original, &mask, &win, &generated, feather);
    let matched = match_colours(
        &original,
        &mask,
        &win,
        &generated,
        colour_match_ring_px(feather),
    );
    let after = composite(&original, &mask, &win, &matched, feather);
    let (e0, e1) = (
        mean_error(&before, &original, &masked),
        mean_error(&after, &original, &masked),
    );
    assert!(e0 > 20.0, "the cast should be visible: {e0}");
    assert!(e1 < e0 / 4.0, "mean error before {e0}, after {e1}");
    // Pixels beyond the feather (and outside the window) are bit-identical to the original.
    let d2 = distance2(&mask);
    let f2 = u64::from(feather) * u64::from(feather);
    for y in 0..h {
        for x in 0..w {
            if d2[(y * w + x) as usize] > f2 || !in_window(&win, x, y) {
                assert_eq!(original.get_pixel(x, y), after.get_pixel(x, y), "({x},{y})");
            }
        }
    }
}

#[test]
fn colour_match_leaves_matching_content_nearly_unchanged() {
    let (w, h) = (200, 200);
    let original = smooth_image(w, h);
    let mask = blob_mask(w, h, 5, 30);
    let win = plan_window(w, h, &mask, &WindowOptions::default())
        .unwrap()
        .unwrap();
    let generated = crop_to_model(&original, &win, 64);
    let matched = match_colours(&original, &mask, &win, &generated, 16);
    for (a, b) in generated.pixels().zip(matched.pixels()) {
        for c in 0..3 {
            assert!(
                (i32::from(a[c]) - i32::from(b[c])).abs() <= 3,
                "{a:?} vs {b:?}"
            );
        }
    }
    // A mask covering everything leaves no reference ring: nothing changes.
    let full = GrayImage::from_pixel(w, h, Luma([255]));
    let win = plan_window(w, h, &full, &WindowOptions::default())
        .unwrap()
        .unwrap();
    let generated = random_image(64, 64, 9);
    assert_eq!(
        match_colours(&original, &full, &win, &generated, 16),
        generated
    );
}

/// Timing of the worst cases on an 8192² image (run with `--ignored --nocapture`, preferably
/// with `--release`): whole-image window with a full mask, and a small mask.
#[test]
#[ignore]
fn timing_8192() {
    use std::time::Instant;
    let n = 8192;
    let img = RgbImage::from_fn(n, n, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
    let generated = RgbImage::from_pixel(256, 256, Rgb([7, 7, 7]));
    let mut small = GrayImage::new(n, n);
    for y in 4000..4100 {
        for x in 5000..5050 {
            small.put_pixel(x, y, Luma([255]));
        }
    }
    let full = GrayImage::from_pixel(n, n, Luma([255]));
    for (name, mask) in [("small mask", &small), ("full mask", &full)] {
        let t = Instant::now();
        let win = plan_window(n, n, mask, &WindowOptions::default())
            .unwrap()
            .unwrap();
        let t_plan = t.elapsed();
        let t = Instant::now();
        let crop = crop_to_model(&img, &win, 256);
        let t_crop = t.elapsed();
        let t = Instant::now();
        let tm = token_mask(mask, &win, 16, 0.0);
        let t_tok = t.elapsed();
        let t = Instant::now();
        let out = composite(&img, mask, &win, &generated, 8);
        let t_comp = t.elapsed();
        eprintln!(
            "{name}: window {win:?}, plan {t_plan:?}, crop {t_crop:?}, tokens {t_tok:?}, composite {t_comp:?}"
        );
        assert_eq!((crop.width(), tm.len(), out.width()), (256, 256, n));
    }
}
