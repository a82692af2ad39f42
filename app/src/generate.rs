//! `tessera inpaint` and `tessera sample`: the engine's job API driven from a terminal.

mod repaint;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use image::{GrayImage, RgbImage};
use tessera::editor::files;
use tessera_engine::inpaint::{PresetMask, WindowOptions, preset_mask};
use tessera_engine::loader::LoadOptions;
use tessera_engine::loader::card::{Condition, Conditioning, ModelCard, class_prompt};
use tessera_engine::pipeline::{ChainRequest, default_chains};
use tessera_engine::sampler::LevelParams;
use tessera_engine::text::PromptTokenizer;
use tessera_engine::worker::{Engine, Event, JobKind};

/// Options shared by `inpaint` and `sample`.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Model folder, official manifest, or the name of an installed model (`tessera models
    /// list`); default: the model in assets/.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Class id or (part of) a class name, for class-conditional models and text models with
    /// class words (then combinable with --prompt).
    #[arg(long)]
    pub class: Option<String>,
    /// Text prompt, for models whose card declares a tokenizer.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Negative class (id or part of a name): what --guidance steers away from instead of
    /// the empty condition. Needs --guidance ≠ 1.
    #[arg(long)]
    pub negative_class: Option<String>,
    /// Negative prompt: what --guidance steers away from instead of the empty prompt. Needs
    /// --guidance ≠ 1.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Seed (same seed, same build and device: same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of candidates, sampled as one batch.
    #[arg(long, default_value_t = 1)]
    pub candidates: usize,
    /// Temperature: one value, or one per level in sampling order (level T first).
    #[arg(long, value_delimiter = ',')]
    pub temperature: Vec<f32>,
    /// Top-k (0 = off): one value or one per level, level T first.
    #[arg(long, value_delimiter = ',')]
    pub top_k: Vec<usize>,
    /// Top-p (1 = off): one value or one per level, level T first.
    #[arg(long, value_delimiter = ',')]
    pub top_p: Vec<f32>,
    /// Chain passes per level: one value or one per level, level T first (inpainting default:
    /// the model card's recommendation, else the official script's counts with the GPT level
    /// once; sampling default: 1).
    #[arg(long, value_delimiter = ',')]
    pub chains: Vec<usize>,
    /// Classifier-free guidance scale (1 = off; needs a model trained with dropped conditions).
    /// Default: the model card's recommendation when a prompt or class is given, else 1.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Apply the temperature only at the last (GPT) stage, as the official sampler does.
    #[arg(long)]
    pub official_temperature: bool,
    /// Keep only the running stage in memory (released-size models on small machines).
    #[arg(long)]
    pub low_memory: bool,
    /// Quantize the stages' linear layers as they load: `q8_0` (about 4× less weight to read
    /// per token than f32, logits within ~0.01 bit of f32) or `q4k` (about 7×, coarser).
    #[arg(long, value_name = "q8_0|q4k")]
    pub quantize: Option<String>,
    /// Write one PNG per level per candidate into this folder.
    #[arg(long)]
    pub levels_dir: Option<PathBuf>,
    /// Write a heat map of how sure the sampler was of each token at the last level (image
    /// size; red unsure, green sure, transparent where nothing was sampled); with several
    /// candidates NAME-0.png, NAME-1.png, ….
    #[arg(long, value_name = "FILE.png")]
    pub confidence_map: Option<PathBuf>,
    /// Then repaint the tokens whose probability at the last level was below P (0..1): a
    /// second inpainting pass over just their cells, keeping the rest of the result.
    #[arg(long, value_name = "P")]
    pub repaint_below: Option<f32>,
    /// Machine-readable progress: one JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
    /// Output PNG (with several candidates: NAME-0.png, NAME-1.png, …).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Options of `inpaint` only.
#[derive(Args, Debug)]
pub struct InpaintArgs {
    /// Input image (PNG, JPEG, WebP).
    #[arg(long)]
    pub image: PathBuf,
    /// Mask, same size: white (≥ 128) = regenerate. A mask with transparency marks its opaque
    /// white pixels.
    #[arg(
        long,
        required_unless_present = "mask_preset",
        conflicts_with = "mask_preset"
    )]
    pub mask: Option<PathBuf>,
    /// A standard mask instead of a file: upper-half (complete the top half), keep-centre
    /// (outpaint around a centred square of half the side), centre-window (inpaint a centred
    /// square of a quarter of the side).
    #[arg(long, value_parser = ["upper-half", "keep-centre", "centre-window"])]
    pub mask_preset: Option<String>,
    /// Context around the mask, as a fraction of its bounding box.
    #[arg(long)]
    pub padding: Option<f32>,
    /// Feather width in pixels.
    #[arg(long)]
    pub feather: Option<u32>,
    /// Fraction of a token's patch that must be masked for it to be regenerated (0 = any pixel).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Use the whole image as context instead of a window around the mask.
    #[arg(long)]
    pub whole_image: bool,
    /// Match the fill's colours (per-channel mean and spread) to the pixels around the mask
    /// before compositing.
    #[arg(long)]
    pub colour_match: bool,
    /// Strength as levels to redo: K in 1..=T starts the chain at level K from the noised
    /// input (the masked area keeps its coarse structure; 1 = fine detail only). Default: T
    /// (new content).
    #[arg(long, value_name = "K")]
    pub strength: Option<usize>,
}

fn default_model() -> Result<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let candidates = [
        Some(PathBuf::from("assets/model")),
        exe_dir.map(|d| d.join("../../assets/model")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("model.json").is_file())
        .ok_or_else(|| {
            anyhow!(
                "no --model given, and the default model (assets/model) is not installed yet; \
                 pass --model <model folder or official sampling manifest>"
            )
        })
}

fn load_image(path: &Path) -> Result<RgbImage> {
    let img = files::load_image(path).map_err(anyhow::Error::msg)?;
    Ok(image::DynamicImage::ImageRgba8(img).to_rgb8())
}

/// A mask file: white (≥ 128) = regenerate; with transparency, the opaque white pixels.
fn load_mask(path: &Path) -> Result<GrayImage> {
    let rgba = files::load_image(path).map_err(|e| anyhow!("the mask {e}"))?;
    let transparent = rgba.pixels().any(|p| p.0[3] < 255);
    let dynamic = image::DynamicImage::ImageRgba8(rgba);
    let gray = dynamic.to_luma8();
    let rgba = dynamic.into_rgba8();
    if !transparent {
        return Ok(gray);
    }
    Ok(GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let a = rgba.get_pixel(x, y).0[3];
        let l = gray.get_pixel(x, y).0[0];
        image::Luma([if a >= 128 && l >= 128 { 255 } else { 0 }])
    }))
}

/// Per-level values given in sampling order (level T first) → indexed by level − 1.
fn per_level<T: Copy>(values: &[T], levels: usize, default: T, what: &str) -> Result<Vec<T>> {
    let v = match values.len() {
        0 => vec![default; levels],
        1 => vec![values[0]; levels],
        n if n == levels => values.iter().rev().copied().collect(),
        n => bail!("--{what} takes one value or one per level ({levels}), got {n}"),
    };
    Ok(v)
}

/// Finds a class by id or (part of) its name.
fn find_class(class_names: &[String], n_classes: usize, c: &str) -> Result<usize> {
    if let Ok(id) = c.trim().parse::<usize>() {
        if id >= n_classes {
            bail!("class {id} is not in 0..{n_classes}");
        }
        return Ok(id);
    }
    let needle = c.trim().to_lowercase();
    let exact = class_names.iter().position(|n| {
        n.split(',')
            .any(|part| part.trim().to_lowercase() == needle)
    });
    let partial = || {
        class_names
            .iter()
            .position(|n| n.to_lowercase().contains(&needle))
    };
    exact
        .or_else(partial)
        .ok_or_else(|| anyhow!("no class named `{c}` (give a class id 0..{n_classes})"))
}

/// The class a prompt names for a class-conditional model (by its class names and their
/// synonyms, as `tessera classes` lists them); says which it picked and what else matched.
fn class_of_prompt(class_names: &[String], prompt: &str, neg: &str) -> Result<usize> {
    use tessera_engine::imagenet::{match_classes, unknown_words};
    if class_names.is_empty() {
        bail!(
            "--{neg}prompt: this model's classes have no names to match a prompt against; give \
             --{neg}class"
        );
    }
    for w in unknown_words(prompt) {
        eprintln!("warning: no ImageNet class name has the word `{w}`");
    }
    let found = match_classes(class_names.iter().map(String::as_str), prompt, 4);
    let Some(best) = found.first() else {
        bail!(
            "--{neg}prompt: “{prompt}” names none of the model's classes; try `tessera classes` \
             or --{neg}class"
        );
    };
    let others: Vec<String> = found[1..]
        .iter()
        .map(|m| format!("{} {}", m.id, m.matched))
        .collect();
    eprintln!(
        "prompt “{prompt}” → class {} {}{}",
        best.id,
        best.name,
        if others.is_empty() {
            String::new()
        } else {
            format!(" (also: {})", others.join(", "))
        }
    );
    Ok(best.id)
}

/// The condition of `--class` / `--prompt`, or with `negative` of `--negative-class` /
/// `--negative-prompt`.
fn condition(
    card: &ModelCard,
    model_dir: &Path,
    args: &SamplingArgs,
    negative: bool,
) -> Result<Condition> {
    let (class, prompt, neg) = if negative {
        (&args.negative_class, &args.negative_prompt, "negative-")
    } else {
        (&args.class, &args.prompt, "")
    };
    match (&card.conditioning, class, prompt) {
        (Conditioning::Class { .. }, Some(_), Some(_)) => {
            bail!("this model takes a class, not a prompt; give --{neg}class or --{neg}prompt")
        }
        (Conditioning::Class { class_names, .. }, None, Some(prompt)) => {
            Ok(Condition::Class(class_of_prompt(class_names, prompt, neg)?))
        }
        (
            Conditioning::Class {
                n_classes,
                class_names,
                ..
            },
            Some(c),
            None,
        ) => Ok(Condition::Class(find_class(class_names, *n_classes, c)?)),
        (
            Conditioning::Text {
                context_len,
                class_names,
                ..
            },
            class,
            prompt,
        ) if class.is_some() || prompt.is_some() => {
            let class_name = match class {
                Some(_) if class_names.is_empty() => {
                    bail!("this model takes a prompt, not a class; drop --{neg}class")
                }
                Some(c) => {
                    Some(class_names[find_class(class_names, class_names.len(), c)?].as_str())
                }
                None => None,
            };
            let tokenizer = PromptTokenizer::for_model(model_dir, card)?
                .ok_or_else(|| anyhow!("the model declares no tokenizer"))?;
            let prompt = prompt.as_deref().unwrap_or("");
            let unknown = tokenizer.encode(prompt)?.unknown;
            if !unknown.is_empty() {
                eprintln!("warning: {}", unknown_words(&unknown));
            }
            let encoded = tokenizer.encode(&class_prompt(class_name, prompt))?;
            if encoded.truncated(*context_len) {
                eprintln!(
                    "warning: the prompt is longer than {context_len} tokens; the rest is ignored"
                );
            }
            Ok(Condition::Text(encoded.ids))
        }
        (_, Some(_), _) => bail!("this model is not class-conditional; drop --{neg}class"),
        (_, None, Some(_)) => bail!("this model takes no text prompt; drop --{neg}prompt"),
        (_, None, None) => Ok(Condition::None),
    }
}

/// "the model does not know the word(s) …": at most eight, each cut to 24 characters and
/// with control characters escaped, so an odd prompt cannot flood or garble the terminal.
fn unknown_words(unknown: &[(std::ops::Range<usize>, String)]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = unknown
        .iter()
        .take(SHOWN)
        .map(|(_, w)| {
            let mut cut: String = w.chars().take(24).collect();
            if cut.len() < w.len() {
                cut.push('…');
            }
            format!("`{}`", cut.escape_debug())
        })
        .collect();
    let more = match unknown.len().saturating_sub(SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let s = if unknown.len() == 1 { "" } else { "s" };
    format!(
        "the model does not know the word{s} {}{more} (read as unknown)",
        shown.join(", ")
    )
}

/// The image format an output's extension asks for (`alpha`: the image has transparency,
/// which JPEG cannot hold).
fn output_format(out: &Path, alpha: bool) -> Result<image::ImageFormat> {
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let format = match ext.as_str() {
        "png" => image::ImageFormat::Png,
        "jpg" | "jpeg" if !alpha => image::ImageFormat::Jpeg,
        "webp" => image::ImageFormat::WebP,
        _ => {
            let takes = if alpha {
                ".png or .webp"
            } else {
                ".png, .jpg or .webp"
            };
            let got = if ext.is_empty() {
                "has no extension".to_string()
            } else {
                format!("ends in .{ext}")
            };
            bail!(
                "{} {got}: name the output {takes} (the extension picks the format)",
                out.display()
            )
        }
    };
    Ok(format)
}

/// The files an output name stands for (`NAME-0.EXT`, … for several candidates), refused up
/// front when one exists (without `force`) or the extension names no format Tessera writes.
fn output_paths(out: &Path, n: usize, force: bool, alpha: bool) -> Result<Vec<PathBuf>> {
    output_format(out, alpha)?;
    let paths: Vec<PathBuf> = if n == 1 {
        vec![out.to_path_buf()]
    } else {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = out
            .extension()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or("png".into());
        (0..n)
            .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
            .collect()
    };
    if !force && let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!("{} exists; pass --force to replace it", p.display());
    }
    Ok(paths)
}

/// Writes an image atomically in the format its extension names (PNG, JPEG at quality 95,
/// lossless WebP): encoded in memory, then a temporary file beside the target, then a rename,
/// so a failed write (a full disk) leaves any earlier file as it was.
fn save_image<P>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    let alpha = P::HAS_ALPHA;
    let format = output_format(path, alpha)?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    if format == image::ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        img.write_with_encoder(encoder)
    } else {
        img.write_to(&mut bytes, format)
    }
    .with_context(|| format!("cannot encode {}", path.display()))?;
    files::write_atomic(path, bytes.get_ref()).map_err(anyhow::Error::msg)
}

fn chain_request(
    card: &ModelCard,
    model_dir: &Path,
    args: &SamplingArgs,
    inpainting: bool,
) -> Result<ChainRequest> {
    let t = card.levels();
    let mut req = ChainRequest::new(card);
    req.condition = condition(card, model_dir, args, false)?;
    let guidance = match args.guidance {
        Some(g) => g,
        // Guiding nothing costs a second pass for the same result.
        None if req.condition == Condition::None => 1.0,
        None => card.guidance_scale.unwrap_or(1.0),
    };
    if !(guidance.is_finite() && guidance >= 0.0) {
        bail!("--guidance must be a finite number ≥ 0, got {guidance}");
    }
    req.guidance_scale = guidance;
    req.negative = condition(card, model_dir, args, true)?;
    if req.condition != Condition::None && args.candidates > 1 {
        // The concepts the candidates' fit is judged against.
        let tokenizer = PromptTokenizer::for_model(model_dir, card)?;
        req.contrast = tessera_engine::fit::vocabulary(card, tokenizer.as_ref())?;
        // The concept the candidates are ranked by, when the model has a recognizer.
        let class = match &req.condition {
            Condition::Class(c) => Some(*c),
            _ => args.class.as_ref().and_then(|c| {
                let names = card.class_names();
                find_class(names, names.len(), c).ok()
            }),
        };
        req.concept = tessera_engine::recognizer::request_concept(
            card,
            class,
            args.prompt.as_deref().unwrap_or(""),
        );
    }
    if req.negative != Condition::None && guidance == 1.0 {
        bail!("--negative-prompt / --negative-class need --guidance other than 1");
    }
    if args.candidates == 0 || args.candidates > 64 {
        bail!("--candidates must be between 1 and 64");
    }
    req.candidates = args.candidates;
    req.seed = args.seed;
    // Unset values take the card's recommendation (the network's own distribution if none).
    let rec = card.sampling.unwrap_or_default();
    let temps = per_level(&args.temperature, t, rec.temperature, "temperature")?;
    let ks = per_level(&args.top_k, t, rec.top_k.unwrap_or(0), "top-k")?;
    let ps = per_level(&args.top_p, t, rec.top_p.unwrap_or(1.0), "top-p")?;
    // 1 means "no truncation"; anything else outside (0, 1] is a mistake, not a synonym.
    if let Some(p) = ps
        .iter()
        .find(|p| !(p.is_finite() && **p > 0.0 && **p <= 1.0))
    {
        bail!("--top-p must lie in (0, 1], got {p}");
    }
    req.levels = (0..t)
        .map(|i| LevelParams {
            temperature: temps[i],
            top_k: (ks[i] > 0).then_some(ks[i]),
            top_p: (ps[i] < 1.0).then_some(ps[i]),
        })
        .collect();
    req.encdec_temperature = !args.official_temperature;
    let default = if inpainting {
        default_chains(card)
    } else {
        vec![1; t]
    };
    req.chains = if args.chains.is_empty() {
        default
    } else {
        per_level(&args.chains, t, 1, "chains")?
    };
    Ok(req)
}

/// Set by Ctrl-C (SIGINT) or SIGTERM: the running job is cancelled and nothing more is
/// written; a second signal exits at once.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

fn catch_interrupts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Without a handler the default action applies (the process ends at once), which is
        // still safe for outputs: they are renamed into place only when complete.
        ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::process::exit(130);
            }
        })
        .ok();
    });
}

/// The error an interrupted run ends with.
fn interrupted_error() -> anyhow::Error {
    anyhow!("interrupted: the job was cancelled; no output was written")
}

/// Waits for the engine's next event, checking for Ctrl-C every 100 ms: `Ok(None)` once it
/// arrived (then `cancel` is run once by the caller).
pub(crate) fn next_event(engine: &Engine) -> Result<Option<Event>> {
    loop {
        match engine
            .events()
            .recv_timeout(std::time::Duration::from_millis(100))
        {
            Ok(e) => return Ok(Some(e)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if interrupted() => return Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(e) => bail!("the engine stopped: {e}"),
        }
    }
}

/// Runs an inpainting (`inpaint = Some`) or sampling job and writes its outputs.
pub fn run(args: &SamplingArgs, inpaint: Option<&InpaintArgs>) -> Result<()> {
    let model_path = match &args.model {
        Some(p) => crate::models::resolve_model(p)?,
        None => default_model()?,
    };
    let paths = output_paths(&args.output, args.candidates.max(1), args.force, false)?;
    if let Some(p) = args.repaint_below
        && !(0.0..=1.0).contains(&p)
    {
        bail!("--repaint-below must be a probability in 0..1, got {p}");
    }
    let inputs = match inpaint {
        Some(a) => {
            let image = load_image(&a.image)?;
            let mask = match (&a.mask, a.mask_preset.as_deref()) {
                (Some(path), _) => load_mask(path)?,
                (None, Some(preset)) => {
                    let kind = match preset {
                        "upper-half" => PresetMask::UpperHalf,
                        "keep-centre" => PresetMask::KeepCentre,
                        _ => PresetMask::CentreWindow,
                    };
                    preset_mask(kind, image.width(), image.height())
                }
                (None, None) => bail!("give --mask or --mask-preset"),
            };
            if image.dimensions() != mask.dimensions() {
                let name = a.mask.as_deref().unwrap_or(Path::new("mask"));
                bail!(
                    "the mask {} is {}×{} but the image is {}×{}; give a mask of the image's size",
                    name.display(),
                    mask.width(),
                    mask.height(),
                    image.width(),
                    image.height()
                );
            }
            Some((Arc::new(image), Arc::new(mask)))
        }
        None => None,
    };

    let quantize = args
        .quantize
        .as_deref()
        .map(tessera_engine::loader::parse_quantization)
        .transpose()?;
    catch_interrupts();
    let mut engine = Engine::spawn(|| {});
    engine.load_model(
        &model_path,
        LoadOptions {
            lazy: args.low_memory,
            quantize,
            ..LoadOptions::default()
        },
    );
    // Nothing is written while the model loads: an interrupt ends the run right away.
    let Some(loaded) = next_event(&engine)? else {
        return Err(interrupted_error());
    };
    let card = match loaded {
        Event::ModelLoaded { card, warnings, .. } => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            card
        }
        Event::ModelFailed { error } => bail!("cannot load {}: {error}", model_path.display()),
        other => bail!("unexpected event {other:?}"),
    };
    let model_dir = if model_path.is_dir() {
        model_path.clone()
    } else {
        model_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    let chain = chain_request(&card, &model_dir, args, inputs.is_some())?;
    let map_paths = match &args.confidence_map {
        Some(m) => output_paths(m, args.candidates.max(1), args.force, true)?,
        None => Vec::new(),
    };
    if let Some(dir) = &args.levels_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let window = match inpaint {
        Some(a) => window_options(a)?,
        None => WindowOptions::default(),
    };
    let kind = match (&inputs, inpaint) {
        (Some((image, mask)), Some(a)) => JobKind::Inpaint {
            image: image.clone(),
            mask: mask.clone(),
            window: window.clone(),
            start_level: a.strength,
        },
        _ => JobKind::Sample,
    };
    let base = inputs.as_ref().map(|(image, _)| image.clone());
    let Some(mut results) = repaint::follow(&mut engine, args, chain.clone(), kind, base, 1)?
    else {
        return Ok(());
    };
    let mut secs = results.secs;
    if let Some(p) = args.repaint_below {
        // The second pass inpaints, with inpainting's chain defaults.
        let chain = chain_request(&card, &model_dir, args, true)?;
        let grid = card.grid_side();
        secs += repaint::repaint_below(&mut engine, args, &chain, &window, grid, p, &mut results)?;
    }
    if interrupted() {
        return Err(interrupted_error());
    }
    for (c, path) in results.candidates.iter().zip(&paths) {
        save_image(&c.image, path)?;
    }
    for (c, path) in results.candidates.iter().zip(&map_paths) {
        save_image(&c.heat_map(card.grid_side()), path)?;
    }
    if !args.json {
        for p in paths.iter().chain(&map_paths) {
            println!("wrote {}", p.display());
        }
        let fits: Vec<f32> = results.candidates.iter().filter_map(|c| c.fit).collect();
        if fits.len() == paths.len() && fits.len() > 1 {
            let best = tessera_engine::fit::ranking(&fits)[0];
            let listed: Vec<String> = fits
                .iter()
                .enumerate()
                .map(|(i, f)| format!("#{i} {:.0}%", 100.0 * f))
                .collect();
            eprintln!(
                "fit to the request, by the model's own judgement: {}; best: {}",
                listed.join(", "),
                paths[best].display()
            );
        }
        eprintln!("done in {secs:.1} s");
    }
    Ok(())
}

/// The window options of the command line; out-of-range values are refused, not clamped.
fn window_options(a: &InpaintArgs) -> Result<WindowOptions> {
    let mut window = WindowOptions::default();
    if let Some(p) = a.padding {
        if !(p.is_finite() && p >= 0.0) {
            bail!("--padding must be a finite fraction ≥ 0 of the mask's box, got {p}");
        }
        window.padding = p;
    }
    if let Some(f) = a.feather {
        window.feather_px = f;
    }
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold must be a fraction in 0..1 of a token's patch, got {t}");
        }
        window.token_threshold = t;
    }
    window.whole_image = a.whole_image;
    window.colour_match = a.colour_match;
    Ok(window)
}

pub(crate) fn event_json(e: &Event) -> serde_json::Value {
    use serde_json::json;
    match e {
        Event::ModelLoaded { card, .. } => json!({"event": "model_loaded", "name": card.name}),
        Event::ModelFailed { error } => json!({"event": "model_failed", "error": error}),
        Event::Started {
            job,
            levels,
            tokens,
            estimate_secs,
        } => json!({
            "event": "started", "job": job.0, "levels": levels, "tokens": tokens,
            "estimate_secs": estimate_secs}),
        Event::Progress {
            job,
            level,
            done,
            total,
            ..
        } => json!({
            "event": "progress", "job": job.0, "level": level, "done": done, "total": total}),
        Event::Level {
            job,
            level,
            candidate,
            confidence,
            window,
            ..
        } => {
            // Per token (raster order): the probability it was drawn with, null where known.
            let per_token: Vec<Option<f32>> = confidence
                .prob
                .iter()
                .zip(&confidence.sampled)
                .map(|(p, s)| s.then_some(*p))
                .collect();
            json!({
                "event": "level", "job": job.0, "level": level, "candidate": candidate,
                "mean_confidence": confidence.mean_prob(), "confidence": per_token,
                "window": {"x": window.x, "y": window.y, "size": window.size}})
        }
        Event::Candidate {
            job, index, fit, ..
        } => {
            json!({"event": "candidate", "job": job.0, "index": index, "fit": fit})
        }
        Event::NoOp { job, reason } => json!({"event": "noop", "job": job.0, "reason": reason}),
        Event::Finished { job, secs } => json!({"event": "finished", "job": job.0, "secs": secs}),
        Event::Cancelled { job } => json!({"event": "cancelled", "job": job.0}),
        Event::Failed { job, error } => json!({"event": "failed", "job": job.0, "error": error}),
    }
}
