//! Files: native dialogs (run off the UI thread, behind [`Dialogs`] so tests use a fake),
//! image and mask reading and writing (PNG with generation parameters in tEXt chunks, JPEG,
//! WebP), atomic writes, and the user's config and data folders.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, unbounded};
use image::{GrayImage, ImageFormat, RgbaImage};

/// Largest image side accepted (pixels).
pub const MAX_SIDE: u32 = 16384;

/// What a file dialog is for; comes back with the chosen path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Open an image (or a project).
    OpenImage,
    /// Load a mask for the current image.
    OpenMask,
    /// Open a model folder.
    OpenModelFolder,
    /// Open an official release manifest (.yaml).
    OpenManifest,
    /// Save the image.
    SaveImage,
    /// Save the mask as PNG.
    SaveMask,
    /// Save a project (.tessera).
    SaveProject,
    /// Choose the output folder for importing the given manifest.
    ImportTo(PathBuf),
    /// Open the segmentation (MobileSAM) weights for the Select object tool.
    OpenSegmentWeights,
    /// Install an official release zip (or a stage checkpoint) into the models folder.
    ImportRelease,
}

impl Purpose {
    /// Whether the dialog picks a folder.
    pub fn is_folder(&self) -> bool {
        matches!(self, Purpose::OpenModelFolder | Purpose::ImportTo(_))
    }

    /// Whether the dialog picks a path to write.
    pub fn is_save(&self) -> bool {
        matches!(
            self,
            Purpose::SaveImage | Purpose::SaveMask | Purpose::SaveProject
        )
    }
}

/// Native file dialogs. Calls block (they run on a helper thread).
pub trait Dialogs: Send + Sync {
    /// Asks the user for a path for `purpose`; `None` when cancelled.
    fn pick(&self, purpose: &Purpose, suggested: Option<&Path>) -> Option<PathBuf>;
}

/// The real dialogs (rfd; xdg-portal on Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct RfdDialogs;

impl Dialogs for RfdDialogs {
    fn pick(&self, purpose: &Purpose, suggested: Option<&Path>) -> Option<PathBuf> {
        let mut d = rfd::FileDialog::new();
        if let Some(dir) = suggested.and_then(Path::parent) {
            d = d.set_directory(dir);
        }
        if let Some(name) = suggested.and_then(Path::file_name) {
            d = d.set_file_name(name.to_string_lossy());
        }
        match purpose {
            Purpose::OpenImage => d
                .add_filter(
                    "Images and projects",
                    &["png", "jpg", "jpeg", "webp", "tessera"],
                )
                .pick_file(),
            Purpose::OpenMask => d.add_filter("Mask", &["png"]).pick_file(),
            Purpose::OpenManifest => d
                .add_filter("Sampling manifest", &["yaml", "yml"])
                .pick_file(),
            Purpose::OpenModelFolder | Purpose::ImportTo(_) => d.pick_folder(),
            Purpose::SaveImage => d
                .add_filter("PNG", &["png"])
                .add_filter("JPEG", &["jpg", "jpeg"])
                .add_filter("WebP", &["webp"])
                .save_file(),
            Purpose::SaveMask => d.add_filter("PNG", &["png"]).save_file(),
            Purpose::SaveProject => d.add_filter("Tessera project", &["tessera"]).save_file(),
            Purpose::OpenSegmentWeights => d
                .add_filter("MobileSAM weights", &["safetensors"])
                .pick_file(),
            Purpose::ImportRelease => d
                .add_filter("ImageBART release zip or checkpoint", &["zip", "ckpt"])
                .pick_file(),
        }
    }
}

/// Runs dialogs on a helper thread and hands results back to the UI thread.
pub struct DialogRunner {
    dialogs: Arc<dyn Dialogs>,
    tx: Sender<(Purpose, Option<PathBuf>)>,
    rx: Receiver<(Purpose, Option<PathBuf>)>,
    open: usize,
}

impl DialogRunner {
    /// A runner over `dialogs`.
    pub fn new(dialogs: Arc<dyn Dialogs>) -> Self {
        let (tx, rx) = unbounded();
        Self {
            dialogs,
            tx,
            rx,
            open: 0,
        }
    }

    /// Opens a dialog unless one is already open; `wake` is called when it closes.
    pub fn request(
        &mut self,
        purpose: Purpose,
        suggested: Option<PathBuf>,
        wake: impl Fn() + Send + 'static,
    ) -> bool {
        if self.open > 0 {
            return false;
        }
        self.open += 1;
        let dialogs = self.dialogs.clone();
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("tessera-dialog".into())
            .spawn(move || {
                let path = dialogs.pick(&purpose, suggested.as_deref());
                tx.send((purpose, path)).ok();
                wake();
            });
        if spawned.is_err() {
            self.open -= 1;
        }
        spawned.is_ok()
    }

    /// A finished dialog, if any.
    pub fn poll(&mut self) -> Option<(Purpose, Option<PathBuf>)> {
        let r = self.rx.try_recv().ok()?;
        self.open = self.open.saturating_sub(1);
        Some(r)
    }

    /// Whether a dialog is open.
    pub fn is_open(&self) -> bool {
        self.open > 0
    }
}

/// Checks an image's size before decoding it.
fn check_size(w: u32, h: u32) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err("the image is empty".into());
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "the image is {w}×{h}; Tessera accepts at most {MAX_SIDE}×{MAX_SIDE}"
        ));
    }
    Ok(())
}

/// Largest decode buffer allowed: a 16384² RGBA image at 16 bits per channel.
const MAX_DECODE_BYTES: u64 = MAX_SIDE as u64 * MAX_SIDE as u64 * 8;

/// Says what went wrong with an image in words: the format when it is one Tessera does not
/// read, "damaged or truncated" with the decoder's innermost reason otherwise.
pub fn image_error(e: &image::ImageError) -> String {
    use image::ImageError;
    use image::error::{ImageFormatHint, UnsupportedErrorKind};
    let innermost = {
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause.to_string()
    };
    match e {
        ImageError::Unsupported(u) => match (u.kind(), u.format_hint()) {
            (UnsupportedErrorKind::Format(ImageFormatHint::Exact(f)), _)
            | (_, ImageFormatHint::Exact(f)) => format!(
                "a {} image; Tessera reads PNG, JPEG and WebP",
                format!("{f:?}").to_uppercase()
            ),
            _ => format!("an image in a form Tessera does not read ({innermost})"),
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated: the file ends before the image does".into()
        }
        ImageError::Limits(_) => "too large to decode".into(),
        _ => format!("damaged or truncated ({innermost})"),
    }
}

/// Refuses a file that declares far more pixels than its bytes can plausibly hold (a
/// decompression bomb: fuzzing found 42-byte WebP files declaring 8737×13321 pixels, which
/// took 6 s and 900 MB to decode). Real images stay far below 20 000 pixels per byte, even a
/// flat colour (PNG's deflate tops out near 1 000:1); small images are never refused.
fn check_density(w: u32, h: u32, bytes: usize) -> Result<(), String> {
    const SMALL: u64 = 4 << 20;
    const MAX_PIXELS_PER_BYTE: u64 = 20_000;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > SMALL && pixels > MAX_PIXELS_PER_BYTE * bytes as u64 {
        return Err(format!(
            "the file is {bytes} bytes but declares {w}×{h} pixels: refused as a decompression \
             bomb (a real image of that size is at least {} bytes)",
            pixels / MAX_PIXELS_PER_BYTE
        ));
    }
    Ok(())
}

/// Decodes an image from memory (size checked before decoding).
pub fn decode_image(bytes: &[u8]) -> Result<RgbaImage, String> {
    let reader = || {
        let r = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        if r.format().is_none() {
            return Err(if bytes.is_empty() {
                "an empty file, not an image".to_string()
            } else {
                "not a PNG, JPEG or WebP image".to_string()
            });
        }
        Ok(r)
    };
    // The header alone, under the default limits, so a refusal can name the size.
    let (w, h) = reader()?.into_dimensions().map_err(|e| image_error(&e))?;
    check_size(w, h)?;
    check_density(w, h, bytes.len())?;
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // Decoders can panic on hostile input (fuzzing found an assertion in zune-jpeg's
    // upsampler on a 624-byte progressive JPEG): that is a damaged file, not a crash.
    let img = tessera_engine::panic::catch(|| reader.decode())
        .map_err(|e| format!("damaged: the decoder failed ({e})"))?
        .map_err(|e| image_error(&e))?;
    Ok(img.to_rgba8())
}

/// Reads an image file.
pub fn load_image(path: &Path) -> Result<RgbaImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode_image(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a mask PNG for a `w`×`h` image: white = regenerate; a mask with transparency marks
/// its opaque white pixels.
pub fn load_mask(path: &Path, size: (u32, u32)) -> Result<GrayImage, String> {
    let img = load_image(path)?;
    if img.dimensions() != size {
        return Err(format!(
            "the mask is {}×{} but the image is {}×{}",
            img.width(),
            img.height(),
            size.0,
            size.1
        ));
    }
    let transparent = img.pixels().any(|p| p.0[3] < 255);
    Ok(GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b, a] = img.get_pixel(x, y).0;
        let l = ((u32::from(r) * 299 + u32::from(g) * 587 + u32::from(b) * 114) / 1000) as u8;
        image::Luma([if transparent && a < 128 { 0 } else { l }])
    }))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed to disk,
/// then a rename. On any failure (a full disk, say) the temporary file is removed and whatever
/// `path` held before is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(write_error(path, &e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        write_error(path, &e)
    })
}

/// "cannot write P: …", saying that the previous file is intact and, for a full disk, so.
fn write_error(path: &Path, e: &std::io::Error) -> String {
    let kept = if path.exists() {
        "; the file already there was left as it was"
    } else {
        ""
    };
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            format!("cannot write {}: the disk is full{kept}", path.display())
        }
        _ => format!("cannot write {}: {e}{kept}", path.display()),
    }
}

/// Encodes a PNG with tEXt chunks (`key`, `value`).
pub fn encode_png(
    width: u32,
    height: u32,
    colour: png::ColorType,
    data: &[u8],
    text: &[(String, String)],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(colour);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        for (k, v) in text {
            enc.add_text_chunk(k.clone(), v.clone())
                .map_err(|e| e.to_string())?;
        }
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(data).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The format a path's extension asks for.
pub fn format_for(path: &Path) -> Result<ImageFormat, String> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") | None => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        Some("webp") => Ok(ImageFormat::WebP),
        Some(e) => Err(format!("cannot save .{e} files; use .png, .jpg or .webp")),
    }
}

/// Saves the image (PNG keeps `text` as tEXt chunks; JPEG drops alpha), atomically.
pub fn save_image(img: &RgbaImage, path: &Path, text: &[(String, String)]) -> Result<(), String> {
    let bytes = match format_for(path)? {
        ImageFormat::Png => encode_png(
            img.width(),
            img.height(),
            png::ColorType::Rgba,
            img.as_raw(),
            text,
        )?,
        ImageFormat::Jpeg => {
            let rgb = image::DynamicImage::ImageRgba8(img.clone()).to_rgb8();
            let mut out = Cursor::new(Vec::new());
            rgb.write_to(&mut out, ImageFormat::Jpeg)
                .map_err(|e| e.to_string())?;
            out.into_inner()
        }
        fmt => {
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, fmt).map_err(|e| e.to_string())?;
            out.into_inner()
        }
    };
    write_atomic(path, &bytes)
}

/// Saves the mask as an 8-bit grey PNG, atomically.
pub fn save_mask(mask: &GrayImage, path: &Path) -> Result<(), String> {
    let bytes = encode_png(
        mask.width(),
        mask.height(),
        png::ColorType::Grayscale,
        mask.as_raw(),
        &[],
    )?;
    write_atomic(path, &bytes)
}

/// The tEXt chunks of a PNG file (empty for other files).
pub fn read_png_text(path: &Path) -> Vec<(String, String)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let Ok(reader) = decoder.read_info() else {
        return Vec::new();
    };
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect()
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `$XDG_CONFIG_HOME/tessera` or `~/.config/tessera`.
pub fn config_dir() -> Option<PathBuf> {
    env_dir("XDG_CONFIG_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("tessera"))
}

/// `$XDG_DATA_HOME/tessera` or `~/.local/share/tessera` (autosave recovery file).
pub fn data_dir() -> Option<PathBuf> {
    env_dir("XDG_DATA_HOME")
        .or_else(|| env_dir("HOME").map(|h| h.join(".local/share")))
        .map(|d| d.join("tessera"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_text_round_trips_and_write_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let img = RgbaImage::from_fn(5, 4, |x, y| image::Rgba([x as u8, y as u8, 9, 255]));
        let text = vec![("tessera".to_string(), "{\"seed\":3}".to_string())];
        save_image(&img, &path, &text).unwrap();
        assert_eq!(read_png_text(&path), text);
        assert_eq!(load_image(&path).unwrap(), img);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(decode_image(b"not an image at all").is_err());
        let mut png = Vec::new();
        RgbaImage::new(4, 4)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        png.truncate(png.len() / 2);
        assert!(decode_image(&png).is_err());
        assert!(check_size(MAX_SIDE + 1, 10).is_err());
    }
}

/// How "Import into Tessera format" stores the transformer weights (the VQGAN stays f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportWeights {
    /// As released: the import reproduces the official outputs.
    #[default]
    F32,
    /// Half precision: half the size, logits within ~1e-2.
    F16,
    /// 8-bit blocks (GGUF): about a quarter of the size, and faster per token.
    Q8_0,
    /// 4-bit k-quant blocks (GGUF) where a layer's width allows, 8-bit elsewhere.
    Q4K,
}

impl ImportWeights {
    /// Every choice, in menu order.
    pub const ALL: [Self; 4] = [Self::F32, Self::F16, Self::Q8_0, Self::Q4K];

    /// What the menu shows.
    pub fn label(self) -> &'static str {
        match self {
            Self::F32 => "f32 — exact",
            Self::F16 => "f16 — half the size",
            Self::Q8_0 => "q8_0 — 8-bit, about ¼ the size",
            Self::Q4K => "q4k — 4-bit where possible",
        }
    }

    /// The engine's import options for this choice.
    pub fn options(self) -> tessera_engine::loader::import::ImportOptions {
        use candle_core::DType;
        use candle_core::quantized::GgmlDType;
        let (dtype, quantize) = match self {
            Self::F32 => (DType::F32, None),
            Self::F16 => (DType::F16, None),
            Self::Q8_0 => (DType::F32, Some(GgmlDType::Q8_0)),
            Self::Q4K => (DType::F32, Some(GgmlDType::Q4K)),
        };
        tessera_engine::loader::import::ImportOptions {
            dtype,
            quantize,
            overwrite: false,
        }
    }
}
