//! Exact checks of the mask operations on small documents.

use image::{Rgba, RgbaImage};

use super::*;

fn doc(w: u32, h: u32) -> Document {
    Document::new(RgbaImage::new(w, h))
}

fn count(doc: &Document, v: u8) -> usize {
    doc.mask.as_raw().iter().filter(|&&p| p == v).count()
}

fn at(doc: &Document, x: u32, y: u32) -> u8 {
    doc.mask.get_pixel(x, y).0[0]
}

/// Undo then redo must restore the mask exactly.
fn assert_round_trip(doc: &mut Document, edit: &MaskEdit, before: &GrayImage) {
    let after = doc.mask.clone();
    assert_eq!(doc.mask_rect(edit.rect), edit.after);
    doc.apply_mask_edit(edit, false);
    assert_eq!(&doc.mask, before);
    doc.apply_mask_edit(edit, true);
    assert_eq!(doc.mask, after);
}

#[test]
fn brush_profile_hard_and_soft() {
    let hard = Brush {
        size: 20.0,
        hardness: 1.0,
    };
    assert_eq!(hard.value_at(0.0), 1.0);
    assert_eq!(hard.value_at(9.5), 1.0);
    assert_eq!(hard.value_at(10.0), 0.5);
    assert_eq!(hard.value_at(10.5), 0.0);
    let soft = Brush {
        size: 20.0,
        hardness: 0.5,
    };
    assert_eq!(soft.value_at(5.0), 1.0);
    assert_eq!(soft.value_at(7.5), 0.5);
    assert!(soft.value_at(6.0) > soft.value_at(7.0) && soft.value_at(9.0) > 0.0);
    assert_eq!(soft.value_at(10.0), 0.0);
    let softest = Brush {
        size: 20.0,
        hardness: 0.0,
    };
    assert_eq!(softest.value_at(0.0), 1.0);
    assert_eq!(softest.value_at(5.0), 0.5);
}

#[test]
fn stamp_sets_disk_and_edit_round_trips() {
    let mut d = doc(21, 21);
    let before = d.mask.clone();
    let brush = Brush {
        size: 5.0,
        hardness: 1.0,
    };
    let edit = stamp_brush(&mut d, (10.5, 10.5), brush, PaintMode::Add).expect("changed");
    assert_eq!(edit.label, "brush");
    assert_eq!(at(&d, 10, 10), 255);
    assert_eq!(at(&d, 12, 10), 255); // d = 2: inside the 2.5 radius
    assert_eq!(at(&d, 13, 10), 0); // d = 3: past the anti-aliased rim
    assert_eq!(at(&d, 0, 0), 0);
    assert!(edit.before.iter().all(|&v| v == 0));
    assert_eq!(
        edit.rect,
        super::morph::bounds_where(&d.mask, |v| v > 0).expect("painted")
    );
    assert_round_trip(&mut d, &edit, &before);
}

#[test]
fn fast_stroke_is_continuous() {
    let mut d = doc(64, 20);
    let brush = Brush {
        size: 4.0,
        hardness: 1.0,
    };
    let mut stroke = StrokeRecorder::new("brush");
    // Two far-apart pointer samples: the capsule between them must be solid.
    stroke.segment(&mut d, (5.0, 10.0), (5.0, 10.0), brush, PaintMode::Add);
    stroke.segment(&mut d, (5.0, 10.0), (55.0, 10.0), brush, PaintMode::Add);
    for x in 6..54 {
        for y in 8..12 {
            assert_eq!(at(&d, x, y), 255, "pixel {x},{y}");
        }
        assert_eq!(at(&d, x, 7), 0);
        assert_eq!(at(&d, x, 12), 0);
    }
    let edit = stroke.finish(&d).expect("changed");
    assert_eq!(edit.rect.y, 8);
    assert_eq!(edit.rect.h, 4);
}

#[test]
fn stroke_over_existing_mask_undoes_exactly() {
    let mut d = doc(200, 150);
    fill_rect(
        &mut d,
        PixelRect {
            x: 50,
            y: 20,
            w: 90,
            h: 100,
        },
        PaintMode::Add,
    );
    let before = d.mask.clone();
    let brush = Brush {
        size: 30.0,
        hardness: 0.3,
    };
    // An eraser stroke crossing several 64-px backup tiles.
    let mut stroke = StrokeRecorder::new("eraser");
    let pts = [(10.0, 10.0), (120.0, 60.0), (190.0, 140.0), (30.0, 130.0)];
    for w in pts.windows(2) {
        stroke.segment(&mut d, w[0], w[1], brush, PaintMode::Subtract);
    }
    assert!(at(&d, 120, 60) == 0 && at(&d, 60, 100) == 255);
    let edit = stroke.finish(&d).expect("changed");
    assert_round_trip(&mut d, &edit, &before);

    let erased = d.mask.clone();
    let mut again = StrokeRecorder::new("brush");
    again.segment(&mut d, (0.0, 0.0), (199.0, 149.0), brush, PaintMode::Add);
    assert_ne!(d.mask, erased);
    again.cancel(&mut d);
    assert_eq!(d.mask, erased);
}

#[test]
fn rectangle_fill_and_erase() {
    let mut d = doc(10, 8);
    let r = PixelRect {
        x: 2,
        y: 1,
        w: 3,
        h: 4,
    };
    let edit = fill_rect(&mut d, r, PaintMode::Add).expect("changed");
    assert_eq!(edit.rect, r);
    assert_eq!(count(&d, 255), 12);
    assert!(fill_rect(&mut d, r, PaintMode::Add).is_none());
    let inner = PixelRect {
        x: 3,
        y: 0,
        w: 5,
        h: 2,
    };
    let erase = fill_rect(&mut d, inner, PaintMode::Subtract).expect("changed");
    assert_eq!(erase.label, "erase rectangle");
    // Trimmed to the 2x1 pixels that really changed.
    assert_eq!(
        erase.rect,
        PixelRect {
            x: 3,
            y: 1,
            w: 2,
            h: 1
        }
    );
    assert_eq!(count(&d, 255), 10);
}

fn star() -> Vec<(f32, f32)> {
    // A pentagram: its centre pentagon is wound twice.
    (0..5)
        .map(|k| {
            let a = (-90.0 + 144.0 * k as f32).to_radians();
            (50.0 + 40.0 * a.cos(), 50.0 + 40.0 * a.sin())
        })
        .collect()
}

#[test]
fn polygon_fill_rules() {
    let mut d = doc(100, 100);
    let square = [(10.0, 10.0), (30.0, 10.0), (30.0, 20.0), (10.0, 20.0)];
    fill_polygon(&mut d, &square, FillRule::NonZero, PaintMode::Add).expect("changed");
    assert_eq!(count(&d, 255), 200);
    assert_eq!(at(&d, 10, 10), 255);
    assert_eq!(at(&d, 29, 19), 255);
    assert_eq!(at(&d, 30, 19), 0);

    let mut nonzero = doc(100, 100);
    fill_polygon(&mut nonzero, &star(), FillRule::NonZero, PaintMode::Add).expect("changed");
    let mut evenodd = doc(100, 100);
    fill_polygon(&mut evenodd, &star(), FillRule::EvenOdd, PaintMode::Add).expect("changed");
    assert_eq!(at(&nonzero, 50, 50), 255);
    assert_eq!(at(&evenodd, 50, 50), 0);
    // A spike tip (top point at y = 10) is filled under both rules.
    assert_eq!(at(&nonzero, 50, 16), 255);
    assert_eq!(at(&evenodd, 50, 16), 255);
    assert!(count(&nonzero, 255) > count(&evenodd, 255));
    assert!(fill_polygon(&mut d, &square[..2], FillRule::NonZero, PaintMode::Add).is_none());
}

#[test]
fn flood_fill_follows_similar_colour() {
    let mut image = RgbaImage::from_pixel(20, 10, Rgba([200, 30, 30, 255]));
    for y in 0..10 {
        for x in 10..20 {
            image.put_pixel(x, y, Rgba([20, 40, 220, 255]));
        }
    }
    // A blue island inside the red half, and a slightly different red stripe.
    image.put_pixel(3, 3, Rgba([20, 40, 220, 255]));
    for y in 0..10 {
        image.put_pixel(8, y, Rgba([210, 30, 30, 255]));
    }
    let mut d = Document::new(image);
    let edit = flood_fill(&mut d, (0, 0), 16, PaintMode::Add).expect("changed");
    assert_eq!(count(&d, 255), 99);
    assert_eq!(at(&d, 3, 3), 0);
    assert_eq!(at(&d, 9, 5), 255);
    assert_eq!(at(&d, 10, 5), 0);
    assert_eq!(edit.rect, PixelRect::full(10, 10));

    let mut strict = Document::new(d.image.clone());
    flood_fill(&mut strict, (0, 0), 5, PaintMode::Add).expect("changed");
    assert_eq!(count(&strict, 255), 79);
    assert!(flood_fill(&mut strict, (50, 0), 5, PaintMode::Add).is_none());

    let erase = flood_fill(&mut d, (15, 5), 0, PaintMode::Subtract);
    assert!(erase.is_none(), "blue half had no mask to remove");
}

#[test]
fn grow_makes_euclidean_disks() {
    let mut d = doc(21, 21);
    d.mask.put_pixel(10, 10, image::Luma([255]));
    let before = d.mask.clone();
    let edit = apply_global(&mut d, GlobalOp::Grow(2)).expect("changed");
    // x² + y² <= 4: 13 pixels.
    assert_eq!(count(&d, 255), 13);
    assert_eq!(at(&d, 12, 10), 255);
    assert_eq!(at(&d, 11, 11), 255);
    assert_eq!(at(&d, 12, 11), 0);
    assert_eq!(edit.label, "grow mask");
    assert_round_trip(&mut d, &edit, &before);
    assert!(apply_global(&mut d, GlobalOp::Grow(0)).is_none());
}

/// Pseudo-random binary mask (fixed LCG, so the test is deterministic).
fn speckles(w: u32, h: u32, density: u32) -> Document {
    let mut d = doc(w, h);
    let mut s = 12345u32;
    for p in d.mask.pixels_mut() {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        p.0[0] = if (s >> 16) % 100 < density { 255 } else { 0 };
    }
    d
}

fn brute_within(mask: &GrayImage, x: u32, y: u32, r: u32, source: impl Fn(u8) -> bool) -> bool {
    let r = r as i64;
    (-r..=r).any(|dy| {
        (-r..=r).any(|dx| {
            let (px, py) = (x as i64 + dx, y as i64 + dy);
            dx * dx + dy * dy <= r * r
                && px >= 0
                && py >= 0
                && px < mask.width() as i64
                && py < mask.height() as i64
                && source(mask.get_pixel(px as u32, py as u32).0[0])
        })
    })
}

#[test]
fn grow_and_shrink_match_brute_force() {
    for (r, density) in [(1, 3), (3, 2), (5, 60)] {
        let original = speckles(37, 23, density);
        let mut grown = original.clone();
        apply_global(&mut grown, GlobalOp::Grow(r));
        let mut shrunk = original.clone();
        apply_global(&mut shrunk, GlobalOp::Shrink(r));
        for y in 0..23 {
            for x in 0..37 {
                let g = brute_within(&original.mask, x, y, r, |v| v >= 128);
                assert_eq!(at(&grown, x, y) == 255, g, "grow {r} at {x},{y}");
                let s = brute_within(&original.mask, x, y, r, |v| v < 128);
                assert_eq!(at(&shrunk, x, y) == 0, s, "shrink {r} at {x},{y}");
            }
        }
    }
}

#[test]
fn shrink_erodes_from_unmasked_pixels_only() {
    let mut d = doc(20, 20);
    fill_rect(
        &mut d,
        PixelRect {
            x: 5,
            y: 5,
            w: 5,
            h: 5,
        },
        PaintMode::Add,
    );
    apply_global(&mut d, GlobalOp::Shrink(1)).expect("changed");
    assert_eq!(count(&d, 255), 9);
    assert_eq!(at(&d, 6, 6), 255);
    assert_eq!(at(&d, 5, 6), 0);
    // The image border does not erode a full mask.
    let mut full = doc(10, 10);
    apply_global(&mut full, GlobalOp::SelectAll).expect("changed");
    assert!(apply_global(&mut full, GlobalOp::Shrink(3)).is_none());
}

#[test]
fn invert_clear_select_all() {
    let mut d = speckles(16, 9, 30);
    let original = d.mask.clone();
    let edit = apply_global(&mut d, GlobalOp::Invert).expect("changed");
    assert_eq!(edit.rect, PixelRect::full(16, 9));
    for (a, b) in d.mask.as_raw().iter().zip(original.as_raw()) {
        assert_eq!(*a, 255 - *b);
    }
    assert_round_trip(&mut d, &edit, &original);

    let mut small = doc(8, 8);
    small.mask.put_pixel(2, 3, image::Luma([7]));
    small.mask.put_pixel(5, 4, image::Luma([200]));
    let clear = apply_global(&mut small, GlobalOp::Clear).expect("changed");
    assert_eq!(
        clear.rect,
        PixelRect {
            x: 2,
            y: 3,
            w: 4,
            h: 2
        }
    );
    assert!(!small.has_mask() && count(&small, 0) == 64);
    assert!(apply_global(&mut small, GlobalOp::Clear).is_none());
    apply_global(&mut small, GlobalOp::SelectAll).expect("changed");
    assert_eq!(count(&small, 255), 64);
    assert!(apply_global(&mut small, GlobalOp::SelectAll).is_none());
}

#[test]
fn feather_blurs_an_edge_symmetrically() {
    let mut d = doc(40, 6);
    fill_rect(
        &mut d,
        PixelRect {
            x: 20,
            y: 0,
            w: 20,
            h: 6,
        },
        PaintMode::Add,
    );
    let before = d.mask.clone();
    let edit = apply_global(&mut d, GlobalOp::Feather(3.0)).expect("changed");
    let row: Vec<u8> = (0..40).map(|x| at(&d, x, 3)).collect();
    assert!(row.windows(2).all(|w| w[0] <= w[1]), "monotonic: {row:?}");
    assert_eq!(row[0], 0);
    assert_eq!(row[39], 255);
    assert!(
        row[17] > 0 && row[22] < 255,
        "soft over several pixels: {row:?}"
    );
    for k in 0..8 {
        let sum = i32::from(row[19 - k]) + i32::from(row[20 + k]);
        assert!((sum - 255).abs() <= 2, "symmetric around the edge: {row:?}");
    }
    // Every row of a vertical edge is the same.
    assert!((0..6).all(|y| (0..40).all(|x| at(&d, x, y) == row[x as usize])));
    assert_round_trip(&mut d, &edit, &before);
    assert!(apply_global(&mut d, GlobalOp::Feather(0.0)).is_none());
    assert!(apply_global(&mut d, GlobalOp::Feather(f32::NAN)).is_none());
}

#[test]
fn gauss_boxes_match_the_variance() {
    for sigma in [1.0f32, 2.5, 8.0, 40.0] {
        let boxes = morph::gauss_boxes(sigma).expect("blurs");
        assert!(boxes.iter().all(|b| b % 2 == 1));
        let var: f32 = boxes.iter().map(|&b| ((b * b) as f32 - 1.0) / 12.0).sum();
        assert!(
            (var.sqrt() - sigma).abs() < 0.3 * sigma.max(1.0),
            "{sigma}: {boxes:?}"
        );
    }
    assert!(morph::gauss_boxes(0.2).is_none());
}
