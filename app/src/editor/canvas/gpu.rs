//! The wgpu path of the canvas: `shaders/canvas.wgsl` drawn through an egui paint callback.
//!
//! The pipeline and samplers live in egui-wgpu's `callback_resources` (they must outlive
//! egui's render pass); the textures of one canvas live in [`GpuCanvas`]. Each frame only the
//! dirty rectangles of the document are written (`queue.write_texture` on the sub-rect), and
//! the callback carries a 112-byte uniform plus bind-group handles.
//! Images larger than the device's `max_texture_dimension_2d` are split into tiles.

use std::sync::Arc;

use egui_wgpu::{CallbackResources, CallbackTrait, RenderState, ScreenDescriptor};
use image::RgbImage;

use crate::editor::document::{Document, PixelRect};
use crate::editor::mask_ops;

/// Uniform block matching `Globals` in the shader: seven `vec4<f32>`.
pub type Globals = [[f32; 4]; 7];

/// Shared by every canvas of one renderer; stored in `callback_resources`.
struct CanvasPipeline {
    pipeline: wgpu::RenderPipeline,
    globals_layout: wgpu::BindGroupLayout,
    tile_layout: wgpu::BindGroupLayout,
    nearest: wgpu::Sampler,
    linear: wgpu::Sampler,
}

impl CanvasPipeline {
    fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("tessera_canvas"),
            source: wgpu::ShaderSource::Wgsl(
                include_str!("../../../../shaders/canvas.wgsl").into(),
            ),
        });
        let uniform = |binding, visibility| wgpu::BindGroupLayoutEntry {
            binding,
            visibility,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let texture = |binding, filterable| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                multisampled: false,
                sample_type: wgpu::TextureSampleType::Float { filterable },
                view_dimension: wgpu::TextureViewDimension::D2,
            },
            count: None,
        };
        let sampler = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
            count: None,
        };
        let both = wgpu::ShaderStages::VERTEX | wgpu::ShaderStages::FRAGMENT;
        let globals_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("tessera_canvas_globals"),
            entries: &[
                uniform(0, both),
                sampler(1),
                sampler(2),
                texture(3, true),
                texture(4, true),
            ],
        });
        let tile_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("tessera_canvas_tile"),
            entries: &[uniform(0, both), texture(1, true), texture(2, true)],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("tessera_canvas"),
            bind_group_layouts: &[Some(&globals_layout), Some(&tile_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("tessera_canvas"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs_main"),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });
        let sampler = |label, filter| {
            device.create_sampler(&wgpu::SamplerDescriptor {
                label: Some(label),
                mag_filter: filter,
                min_filter: filter,
                ..Default::default()
            })
        };
        Self {
            pipeline,
            globals_layout,
            tile_layout,
            nearest: sampler("tessera_canvas_nearest", wgpu::FilterMode::Nearest),
            linear: sampler("tessera_canvas_linear", wgpu::FilterMode::Linear),
        }
    }
}

/// One tile of the image: its rectangle, image and mask textures.
struct GpuTile {
    rect: PixelRect,
    image: wgpu::Texture,
    mask: wgpu::Texture,
    bind: wgpu::BindGroup,
}

/// The GPU side of one canvas.
pub struct GpuCanvas {
    device: wgpu::Device,
    queue: wgpu::Queue,
    globals_layout: wgpu::BindGroupLayout,
    tile_layout: wgpu::BindGroupLayout,
    nearest: wgpu::Sampler,
    linear: wgpu::Sampler,
    srgb_target: bool,
    max_side: u32,
    size: (u32, u32),
    tiles: Vec<GpuTile>,
    globals: wgpu::Buffer,
    globals_bind: wgpu::BindGroup,
    overlay: Option<(Arc<RgbImage>, wgpu::Texture)>,
    cells: (Vec<bool>, usize, wgpu::Texture),
}

impl GpuCanvas {
    /// Builds (or reuses) the pipeline in `render_state` and an empty canvas.
    pub fn new(render_state: &RenderState) -> Self {
        let device = render_state.device.clone();
        let (globals_layout, tile_layout, nearest, linear) = {
            let mut renderer = render_state.renderer.write();
            let resources = &mut renderer.callback_resources;
            let handles = |p: &CanvasPipeline| {
                (
                    p.globals_layout.clone(),
                    p.tile_layout.clone(),
                    p.nearest.clone(),
                    p.linear.clone(),
                )
            };
            match resources.get::<CanvasPipeline>() {
                Some(p) => handles(p),
                None => {
                    let p = CanvasPipeline::new(&device, render_state.target_format);
                    let out = handles(&p);
                    resources.insert(p);
                    out
                }
            }
        };
        let globals = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tessera_canvas_globals"),
            size: std::mem::size_of::<Globals>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let one = |label, format| texture(&device, label, format, 1, 1);
        let overlay_placeholder = one("tessera_canvas_no_overlay", wgpu::TextureFormat::Rgba8Unorm);
        let cells = one("tessera_canvas_cells", wgpu::TextureFormat::R8Unorm);
        let globals_bind = globals_bind_group(
            &device,
            &globals_layout,
            &globals,
            (&nearest, &linear),
            &overlay_placeholder,
            &cells,
        );
        let max_side = device.limits().max_texture_dimension_2d.max(1);
        Self {
            queue: render_state.queue.clone(),
            srgb_target: render_state.target_format.is_srgb(),
            device,
            globals_layout,
            tile_layout,
            nearest,
            linear,
            max_side,
            size: (0, 0),
            tiles: Vec::new(),
            globals,
            globals_bind,
            overlay: None,
            cells: (Vec::new(), 0, cells),
        }
    }

    /// Limits the tile side (tests use it to exercise tiling on small images).
    pub fn limit_tile_side(&mut self, side: u32) {
        self.max_side = self.max_side.min(side.max(1));
        self.size = (0, 0);
    }

    /// Whether the render target wants linear values.
    pub fn srgb_target(&self) -> bool {
        self.srgb_target
    }

    /// Brings the textures up to date with `doc`: new tiles when the size changed, otherwise
    /// only the dirty rectangles; also the overlay and token-grid cells. Clears `doc.dirty`.
    pub fn sync(&mut self, doc: &mut Document) {
        let (w, h) = doc.size();
        if self.size != (w, h) {
            self.make_tiles(w, h);
            doc.dirty.image = PixelRect::full(w, h);
            doc.dirty.mask = PixelRect::full(w, h);
        }
        let dirty = std::mem::take(&mut doc.dirty);
        for tile in &self.tiles {
            if let Some(r) = intersect(dirty.image.clip(w, h), tile.rect) {
                write(
                    &self.queue,
                    &tile.image,
                    tile.rect,
                    r,
                    doc.image.as_raw(),
                    w,
                    4,
                );
            }
            if let Some(r) = intersect(dirty.mask.clip(w, h), tile.rect) {
                write(
                    &self.queue,
                    &tile.mask,
                    tile.rect,
                    r,
                    doc.mask.as_raw(),
                    w,
                    1,
                );
            }
        }
        self.sync_overlay(doc);
        self.sync_cells(doc);
    }

    fn make_tiles(&mut self, w: u32, h: u32) {
        self.tiles.clear();
        self.size = (w, h);
        let side = self.max_side;
        for y in (0..h).step_by(side as usize) {
            for x in (0..w).step_by(side as usize) {
                let rect = PixelRect {
                    x,
                    y,
                    w: side.min(w - x),
                    h: side.min(h - y),
                };
                let image = texture(
                    &self.device,
                    "tessera_canvas_image",
                    wgpu::TextureFormat::Rgba8Unorm,
                    rect.w,
                    rect.h,
                );
                let mask = texture(
                    &self.device,
                    "tessera_canvas_mask",
                    wgpu::TextureFormat::R8Unorm,
                    rect.w,
                    rect.h,
                );
                let uniform = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tessera_canvas_tile"),
                    size: 16,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let r = [rect.x as f32, rect.y as f32, rect.w as f32, rect.h as f32];
                self.queue.write_buffer(&uniform, 0, &floats_to_bytes(&r));
                let view =
                    |t: &wgpu::Texture| t.create_view(&wgpu::TextureViewDescriptor::default());
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("tessera_canvas_tile"),
                    layout: &self.tile_layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: uniform.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: wgpu::BindingResource::TextureView(&view(&image)),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: wgpu::BindingResource::TextureView(&view(&mask)),
                        },
                    ],
                });
                self.tiles.push(GpuTile {
                    rect,
                    image,
                    mask,
                    bind,
                });
            }
        }
    }

    fn sync_overlay(&mut self, doc: &Document) {
        let wanted = doc.overlay.as_ref().map(|o| &o.pixels);
        let same = match (&self.overlay, wanted) {
            (Some((have, _)), Some(want)) => Arc::ptr_eq(have, want),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.overlay = wanted.and_then(|pixels| {
            let (w, h) = pixels.dimensions();
            if w == 0 || h == 0 || w > self.max_side || h > self.max_side {
                return None;
            }
            let t = texture(
                &self.device,
                "tessera_canvas_overlay",
                wgpu::TextureFormat::Rgba8Unorm,
                w,
                h,
            );
            let rgba: Vec<u8> = pixels
                .as_raw()
                .chunks_exact(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect();
            let full = PixelRect::full(w, h);
            write(&self.queue, &t, full, full, &rgba, w, 4);
            Some((Arc::clone(pixels), t))
        });
        self.rebind();
    }

    fn sync_cells(&mut self, doc: &Document) {
        let Some(grid) = &doc.token_grid else {
            return;
        };
        let n = grid.grid;
        if n == 0 || grid.touched.len() != n * n || n as u32 > self.max_side {
            return;
        }
        if self.cells.1 == n && self.cells.0 == grid.touched {
            return;
        }
        let t = if self.cells.1 == n {
            self.cells.2.clone()
        } else {
            texture(
                &self.device,
                "tessera_canvas_cells",
                wgpu::TextureFormat::R8Unorm,
                n as u32,
                n as u32,
            )
        };
        let bytes: Vec<u8> = grid
            .touched
            .iter()
            .map(|&b| if b { 255 } else { 0 })
            .collect();
        let full = PixelRect::full(n as u32, n as u32);
        write(&self.queue, &t, full, full, &bytes, n as u32, 1);
        let rebind = self.cells.1 != n;
        self.cells = (grid.touched.clone(), n, t);
        if rebind {
            self.rebind();
        }
    }

    /// Whether the token-grid texture holds `doc`'s grid (the shader may draw it).
    pub fn has_cells_for(&self, doc: &Document) -> bool {
        doc.token_grid
            .as_ref()
            .is_some_and(|g| g.grid == self.cells.1 && g.touched == self.cells.0)
    }

    /// Whether the overlay texture holds `doc`'s overlay.
    pub fn has_overlay_for(&self, doc: &Document) -> bool {
        match (&self.overlay, &doc.overlay) {
            (Some((have, _)), Some(o)) => Arc::ptr_eq(have, &o.pixels),
            _ => false,
        }
    }

    fn rebind(&mut self) {
        let placeholder;
        let overlay = match &self.overlay {
            Some((_, t)) => t,
            None => {
                placeholder = texture(
                    &self.device,
                    "tessera_canvas_no_overlay",
                    wgpu::TextureFormat::Rgba8Unorm,
                    1,
                    1,
                );
                &placeholder
            }
        };
        self.globals_bind = globals_bind_group(
            &self.device,
            &self.globals_layout,
            &self.globals,
            (&self.nearest, &self.linear),
            overlay,
            &self.cells.2,
        );
    }

    /// The paint callback for this frame.
    pub fn callback(&self, globals: Globals) -> CanvasCallback {
        CanvasCallback {
            globals,
            buffer: self.globals.clone(),
            globals_bind: self.globals_bind.clone(),
            tiles: self.tiles.iter().map(|t| t.bind.clone()).collect(),
        }
    }
}

/// What one frame of the canvas hands to egui-wgpu.
pub struct CanvasCallback {
    globals: Globals,
    buffer: wgpu::Buffer,
    globals_bind: wgpu::BindGroup,
    tiles: Vec<wgpu::BindGroup>,
}

impl CallbackTrait for CanvasCallback {
    fn prepare(
        &self,
        _device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        _resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let mut g = self.globals;
        g[0][0] = screen.size_in_pixels[0] as f32;
        g[0][1] = screen.size_in_pixels[1] as f32;
        queue.write_buffer(&self.buffer, 0, &floats_to_bytes(g.as_flattened()));
        Vec::new()
    }

    fn paint(
        &self,
        info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        let Some(p) = resources.get::<CanvasPipeline>() else {
            return;
        };
        // The shader maps image points to whole-framebuffer coordinates.
        let [w, h] = info.screen_size_px;
        pass.set_viewport(0.0, 0.0, w as f32, h as f32, 0.0, 1.0);
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &self.globals_bind, &[]);
        for tile in &self.tiles {
            pass.set_bind_group(1, tile, &[]);
            pass.draw(0..6, 0..1);
        }
    }
}

fn texture(
    device: &wgpu::Device,
    label: &str,
    format: wgpu::TextureFormat,
    w: u32,
    h: u32,
) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d {
            width: w.max(1),
            height: h.max(1),
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    })
}

fn globals_bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    globals: &wgpu::Buffer,
    samplers: (&wgpu::Sampler, &wgpu::Sampler),
    overlay: &wgpu::Texture,
    cells: &wgpu::Texture,
) -> wgpu::BindGroup {
    let view = |t: &wgpu::Texture| t.create_view(&wgpu::TextureViewDescriptor::default());
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("tessera_canvas_globals"),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: globals.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::Sampler(samplers.0),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: wgpu::BindingResource::Sampler(samplers.1),
            },
            wgpu::BindGroupEntry {
                binding: 3,
                resource: wgpu::BindingResource::TextureView(&view(overlay)),
            },
            wgpu::BindGroupEntry {
                binding: 4,
                resource: wgpu::BindingResource::TextureView(&view(cells)),
            },
        ],
    })
}

/// Writes the `r` part of a row-major `src` (`src_w` wide, `bpp` bytes per pixel) into
/// `texture`, which holds the `tile` part of the image. No copy: the layout's offset and row
/// pitch point into `src` directly.
fn write(
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    tile: PixelRect,
    r: PixelRect,
    src: &[u8],
    src_w: u32,
    bpp: u32,
) {
    let offset = (u64::from(r.y) * u64::from(src_w) + u64::from(r.x)) * u64::from(bpp);
    queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: 0,
            origin: wgpu::Origin3d {
                x: r.x - tile.x,
                y: r.y - tile.y,
                z: 0,
            },
            aspect: wgpu::TextureAspect::All,
        },
        src,
        wgpu::TexelCopyBufferLayout {
            offset,
            bytes_per_row: Some(src_w * bpp),
            rows_per_image: None,
        },
        wgpu::Extent3d {
            width: r.w,
            height: r.h,
            depth_or_array_layers: 1,
        },
    );
}

/// The pixels in both rectangles, if any.
fn intersect(a: PixelRect, b: PixelRect) -> Option<PixelRect> {
    Some(mask_ops::intersect(a, b)).filter(|r| !r.is_empty())
}

fn floats_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}
