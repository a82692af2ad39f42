//! Where the image sits in the canvas: zoom and the image point at the canvas centre, and
//! the conversions between screen points and image pixels.

use egui::{Pos2, Rect, Vec2};

/// Smallest and largest zoom (framebuffer pixels per image pixel): 1 % to 3200 %.
pub const ZOOM_RANGE: (f32, f32) = (0.01, 32.0);

/// The view transform of the canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Framebuffer (physical) pixels per image pixel; 1 = 100 %.
    pub zoom: f32,
    /// Image point (pixels) shown at the centre of the canvas.
    pub center: Vec2,
}

impl Default for View {
    fn default() -> Self {
        Self {
            zoom: 1.0,
            center: Vec2::ZERO,
        }
    }
}

impl View {
    /// Screen points per image pixel.
    pub fn scale(&self, ppp: f32) -> f32 {
        self.zoom / ppp
    }

    /// Screen position of image point `img`.
    pub fn to_screen(&self, rect: Rect, ppp: f32, img: Pos2) -> Pos2 {
        rect.center() + (img.to_vec2() - self.center) * self.scale(ppp)
    }

    /// Image point under screen position `p`.
    pub fn to_image(&self, rect: Rect, ppp: f32, p: Pos2) -> Pos2 {
        (self.center + (p - rect.center()) / self.scale(ppp)).to_pos2()
    }

    /// Multiplies the zoom by `factor`, keeping the image point under `anchor` in place.
    pub fn zoom_around(&mut self, rect: Rect, ppp: f32, anchor: Pos2, factor: f32) {
        if !factor.is_finite() || factor <= 0.0 {
            return;
        }
        let fixed = self.to_image(rect, ppp, anchor);
        self.zoom = (self.zoom * factor).clamp(ZOOM_RANGE.0, ZOOM_RANGE.1);
        self.center = fixed.to_vec2() - (anchor - rect.center()) / self.scale(ppp);
    }

    /// Moves the image by `delta` screen points.
    pub fn pan(&mut self, ppp: f32, delta: Vec2) {
        self.center -= delta / self.scale(ppp);
    }

    /// Whole image visible and centred, with a small margin.
    pub fn fit(&mut self, rect: Rect, ppp: f32, (w, h): (u32, u32)) {
        if w == 0 || h == 0 || rect.width() <= 0.0 || rect.height() <= 0.0 {
            return;
        }
        let margin = 0.96;
        let z = (rect.width() / w as f32).min(rect.height() / h as f32) * ppp * margin;
        self.zoom = z.clamp(ZOOM_RANGE.0, ZOOM_RANGE.1);
        self.center = Vec2::new(w as f32, h as f32) * 0.5;
    }

    /// The view to draw with: at whole-number zooms the image grid is moved (by less than
    /// a framebuffer pixel) onto the framebuffer grid so every image pixel is equally wide.
    pub fn snapped(&self, rect: Rect, ppp: f32) -> Self {
        let z = self.zoom;
        if z < 1.0 || (z - z.round()).abs() > 1e-4 {
            return *self;
        }
        let c = rect.center().to_vec2() * ppp;
        let origin = c - self.center * z;
        let snapped = Vec2::new(origin.x.round(), origin.y.round());
        Self {
            zoom: z,
            center: (c - snapped) / z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect() -> Rect {
        Rect::from_min_size(Pos2::new(10.0, 20.0), Vec2::new(400.0, 300.0))
    }

    #[test]
    fn screen_and_image_round_trip() {
        let v = View {
            zoom: 2.5,
            center: Vec2::new(100.0, 50.0),
        };
        let p = Pos2::new(37.0, 211.0);
        let back = v.to_screen(rect(), 2.0, v.to_image(rect(), 2.0, p));
        assert!((back - p).length() < 1e-4);
        assert_eq!(
            v.to_image(rect(), 2.0, rect().center()),
            Pos2::new(100.0, 50.0)
        );
    }

    #[test]
    fn zoom_keeps_the_anchor_and_clamps() {
        let mut v = View::default();
        let anchor = Pos2::new(50.0, 60.0);
        let before = v.to_image(rect(), 1.0, anchor);
        v.zoom_around(rect(), 1.0, anchor, 3.0);
        assert_eq!(v.zoom, 3.0);
        assert!((v.to_image(rect(), 1.0, anchor) - before).length() < 1e-4);
        v.zoom_around(rect(), 1.0, anchor, 1e6);
        assert_eq!(v.zoom, ZOOM_RANGE.1);
        v.zoom_around(rect(), 1.0, anchor, 1e-9);
        assert_eq!(v.zoom, ZOOM_RANGE.0);
    }

    #[test]
    fn fit_shows_the_whole_image() {
        let mut v = View::default();
        v.fit(rect(), 1.0, (800, 300));
        let tl = v.to_screen(rect(), 1.0, Pos2::ZERO);
        let br = v.to_screen(rect(), 1.0, Pos2::new(800.0, 300.0));
        assert!(rect().contains(tl) && rect().contains(br));
        assert!((br.x - tl.x) > 0.9 * rect().width());
    }

    #[test]
    fn snapping_aligns_whole_zooms() {
        let v = View {
            zoom: 2.0,
            center: Vec2::new(10.3, 7.7),
        };
        let s = v.snapped(rect(), 1.0);
        let origin = rect().center().to_vec2() - s.center * 2.0;
        assert_eq!(origin, Vec2::new(origin.x.round(), origin.y.round()));
        assert!((s.center - v.center).length() < 0.5);
    }
}
