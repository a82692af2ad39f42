// The editor canvas: one quad per image tile, drawn inside egui's render pass.
// Layers, bottom to top: checkerboard (transparency), image, job overlay, mask tint,
// token grid, brush cursor. All positions are computed per fragment from the
// framebuffer position, so zoomed-in pixels stay exact.

struct Globals {
    // Framebuffer width and height (px), pixels per point, 1 when the target is sRGB.
    screen: vec4<f32>,
    // Canvas centre (px), zoom (framebuffer px per image px), minification taps per axis.
    view: vec4<f32>,
    // Image point at the canvas centre, image width and height.
    center: vec4<f32>,
    // Mask tint (gamma-space rgb) and opacity; opacity 0 hides the mask.
    mask_colour: vec4<f32>,
    // Job overlay rectangle in image px (x, y, w, h); w = 0 when there is none.
    overlay: vec4<f32>,
    // Token grid: window origin (image px), window side (image px), cells per side (0 = hidden).
    grid: vec4<f32>,
    // Brush cursor centre (image px), radius (image px), 1 = shown.
    cursor: vec4<f32>,
};

struct Tile {
    // Tile rectangle in image px (x, y, w, h).
    rect: vec4<f32>,
};

@group(0) @binding(0) var<uniform> g: Globals;
@group(0) @binding(1) var s_nearest: sampler;
@group(0) @binding(2) var s_linear: sampler;
@group(0) @binding(3) var t_overlay: texture_2d<f32>;
@group(0) @binding(4) var t_cells: texture_2d<f32>;

@group(1) @binding(0) var<uniform> tile: Tile;
@group(1) @binding(1) var t_image: texture_2d<f32>;
@group(1) @binding(2) var t_mask: texture_2d<f32>;

@vertex
fn vs_main(@builtin(vertex_index) vi: u32) -> @builtin(position) vec4<f32> {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
        vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
    );
    let img = tile.rect.xy + corners[vi] * tile.rect.zw;
    let px = g.view.xy + (img - g.center.xy) * g.view.z;
    let ndc = vec2<f32>(px.x / g.screen.x * 2.0 - 1.0, 1.0 - px.y / g.screen.y * 2.0);
    return vec4<f32>(ndc, 0.0, 1.0);
}

fn to_linear(c: vec3<f32>) -> vec3<f32> {
    let lo = c / 12.92;
    let hi = pow((c + vec3<f32>(0.055)) / 1.055, vec3<f32>(2.4));
    return select(hi, lo, c <= vec3<f32>(0.04045));
}

struct Texel {
    colour: vec4<f32>,
    mask: f32,
};

// Image colour and mask of this tile around image point `img`. Nearest texels when zoomed
// in; when zoomed out, an n×n grid of bilinear taps over the pixel's footprint stands in for
// mipmaps (which would have to be rebuilt on every brush dab).
fn fetch(img: vec2<f32>) -> Texel {
    let size = tile.rect.zw;
    var out: Texel;
    if g.view.z >= 1.0 {
        let uv = (img - tile.rect.xy) / size;
        out.colour = textureSampleLevel(t_image, s_nearest, uv, 0.0);
        out.mask = textureSampleLevel(t_mask, s_nearest, uv, 0.0).r;
        return out;
    }
    let n = max(i32(g.view.w), 1);
    let footprint = 1.0 / g.view.z;
    let step = footprint / f32(n);
    var colour = vec4<f32>(0.0);
    var mask = 0.0;
    for (var j = 0; j < n; j++) {
        for (var i = 0; i < n; i++) {
            let p = img + (vec2<f32>(f32(i), f32(j)) + 0.5) * step - 0.5 * footprint;
            let uv = (p - tile.rect.xy) / size;
            colour += textureSampleLevel(t_image, s_linear, uv, 0.0);
            mask += textureSampleLevel(t_mask, s_linear, uv, 0.0).r;
        }
    }
    let k = 1.0 / f32(n * n);
    out.colour = colour * k;
    out.mask = mask * k;
    return out;
}

@fragment
fn fs_main(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let zoom = g.view.z;
    let img = g.center.xy + (pos.xy - g.view.xy) / zoom;

    // Checkerboard in screen space, 8 points per square.
    let cell = floor(pos.xy / (8.0 * g.screen.z));
    let odd = (i32(cell.x) + i32(cell.y)) & 1;
    let checker = select(vec3<f32>(0.80), vec3<f32>(0.62), odd == 1);

    let t = fetch(img);
    var rgb = mix(checker, t.colour.rgb, t.colour.a);

    // Job overlay: shown over its whole rectangle (the engine already composited it).
    if g.overlay.z > 0.0 {
        let o = (img - g.overlay.xy) / g.overlay.zw;
        if all(o >= vec2<f32>(0.0)) && all(o < vec2<f32>(1.0)) {
            if zoom >= 1.0 {
                rgb = textureSampleLevel(t_overlay, s_nearest, o, 0.0).rgb;
            } else {
                rgb = textureSampleLevel(t_overlay, s_linear, o, 0.0).rgb;
            }
        }
    }

    rgb = mix(rgb, g.mask_colour.rgb, clamp(t.mask * g.mask_colour.a, 0.0, 1.0));

    // Token grid over the context window: touched cells tinted, cell lines, window outline.
    if g.grid.w > 0.0 {
        let cells = g.grid.w;
        let cell_side = g.grid.z / cells;
        let local = (img - g.grid.xy) / cell_side;
        if all(local >= vec2<f32>(0.0)) && all(local < vec2<f32>(cells)) {
            let touched = textureLoad(t_cells, vec2<i32>(floor(local)), 0).r;
            rgb = mix(rgb, vec3<f32>(0.25, 0.9, 1.0), 0.4 * touched);
            let f = fract(local);
            let d = min(f, vec2<f32>(1.0) - f) * cell_side * zoom;
            let line = 1.0 - clamp(min(d.x, d.y) - 0.25, 0.0, 1.0);
            rgb = mix(rgb, vec3<f32>(1.0), 0.45 * line);
            let edge = min(local, vec2<f32>(cells) - local) * cell_side * zoom;
            let border = 1.0 - clamp(min(edge.x, edge.y) - 1.25, 0.0, 1.0);
            rgb = mix(rgb, vec3<f32>(1.0, 0.82, 0.2), 0.9 * border);
        }
    }

    // Brush outline: white ring inside a black one, readable on any image.
    if g.cursor.w > 0.0 {
        let r = g.cursor.z * zoom;
        let d = distance(img, g.cursor.xy) * zoom;
        let white = clamp(1.0 - abs(d - r), 0.0, 1.0);
        let black = clamp(1.0 - abs(d - r - 1.5), 0.0, 1.0);
        rgb = mix(rgb, vec3<f32>(0.0), black * 0.8);
        rgb = mix(rgb, vec3<f32>(1.0), white);
    }

    if g.screen.w > 0.5 {
        rgb = to_linear(rgb);
    }
    return vec4<f32>(rgb, 1.0);
}
