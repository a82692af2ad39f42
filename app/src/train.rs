//! `tessera train`: runs (or resumes) a model recipe with progress bars.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tessera::editor::files::write_atomic;
use tessera_train::data::{EmojiSet, LoadOptions};
use tessera_train::recipe::{self, Recipe, TrainEvent};

/// Arguments of `tessera train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// `default` (the shipped model), `smoke` (seconds, for CI) or a recipe JSON file.
    #[arg(long, default_value = "default")]
    pub recipe: String,
    /// Emoji data fetched by scripts/fetch-data.sh.
    #[arg(long, default_value = "data/emoji")]
    pub data: PathBuf,
    /// Read the small test fixture layout instead (engine/train/tests/fixtures/emoji).
    #[arg(long)]
    pub fixture: bool,
    /// Work folder: checkpoints, the token pool, logs. A rerun resumes from it.
    #[arg(long, default_value = "data/runs/default")]
    pub work: PathBuf,
    /// Where the finished model folder goes.
    #[arg(long, default_value = "assets/model")]
    pub out: PathBuf,
    /// Stages trained at the same time, each on its share of the cores (default: one per
    /// core; a stage step barely gains from a second thread). The model does not depend on it.
    #[arg(long, default_value_t = recipe::default_jobs())]
    pub jobs: usize,
    /// Replace an existing model folder at --out.
    #[arg(long)]
    pub force: bool,
    /// Print the recipe as JSON and exit.
    #[arg(long)]
    pub print_recipe: bool,
    /// Write a sheet of 24 training scenes (6 per row) to this PNG, print their captions and
    /// classes, and exit: what the recipe trains on.
    #[arg(long, value_name = "PNG")]
    pub scenes: Option<PathBuf>,
}

/// Resolves `--recipe`.
pub fn load_recipe(name: &str) -> Result<Recipe> {
    Ok(match name {
        "default" => Recipe::default(),
        "smoke" => Recipe::smoke(),
        path => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("{path} is not a recipe"))?
        }
    })
}

/// Loads the emoji set a recipe trains on.
pub fn load_set(data: &Path, fixture: bool) -> Result<EmojiSet> {
    if fixture {
        return EmojiSet::load_fixture(data)
            .with_context(|| format!("cannot read the fixture {}", data.display()));
    }
    if !data.is_dir() {
        bail!(
            "{} does not exist: fetch the training images first with scripts/fetch-data.sh",
            data.display()
        );
    }
    EmojiSet::load(data, &LoadOptions::default())
        .with_context(|| format!("cannot read the emoji data in {}", data.display()))
}

/// Runs `tessera train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let recipe = load_recipe(&args.recipe)?;
    if args.print_recipe {
        println!("{}", serde_json::to_string_pretty(&recipe)?);
        return Ok(());
    }
    recipe.validate()?;
    let began = Instant::now();
    let set = load_set(&args.data, args.fixture)?;
    if let Some(path) = &args.scenes {
        return scene_sheet(&recipe, &set, path);
    }
    eprintln!(
        "{} emoji loaded in {:.1} s",
        set.len(),
        began.elapsed().as_secs_f64()
    );
    let mut ui = Bars::new();
    let opts = recipe::RunOptions {
        overwrite: args.force,
        jobs: args.jobs,
    };
    let card = recipe::run(&recipe, &set, &args.work, &args.out, &opts, &mut |e| {
        ui.event(e)
    })
    .context("training failed (rerun the same command to resume)")?;
    ui.finish();
    eprintln!(
        "wrote {} ({} levels, {} tokens) in {:.1} min",
        args.out.display(),
        card.levels(),
        card.n_tokens,
        began.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// `tessera eval --vqgan-of WORK`: the work folder's VQGAN on held-out scenes.
fn eval_work_vqgan(args: &EvalArgs, work: &Path) -> Result<()> {
    use tessera_train::eval::{EvalConfig, vqgan_quality};
    let Some((recipe, vqgan, n_embed, tuned)) = recipe::work_vqgan(work)
        .with_context(|| format!("cannot read the work folder {}", work.display()))?
    else {
        bail!(
            "{} has no VQGAN yet (its VQGAN phase has not finished)",
            work.display()
        );
    };
    let set = load_set(&args.data, args.fixture)?;
    let val = recipe::val_scenes(&set, &recipe)?;
    let scenes = val.scenes(EvalConfig::default().seed, 0, args.n, recipe.res);
    eprintln!(
        "{} VQGAN of {} ({}), {} held-out scenes of {} px",
        if tuned { "fine-tuned" } else { "first-stage" },
        work.display(),
        recipe.name,
        scenes.len(),
        recipe.res
    );
    let (q, _) = vqgan_quality(&vqgan, n_embed, &scenes, &mut |line| eprintln!("{line}"))?;
    if let Some(path) = &args.json {
        let mut value = serde_json::to_value(&q)?;
        value["fine_tuned"] = tuned.into();
        write_atomic(path, serde_json::to_string_pretty(&value)?.as_bytes())
            .map_err(anyhow::Error::msg)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `tessera train --scenes`: a sheet of training scenes, captions on stdout.
fn scene_sheet(recipe: &Recipe, set: &EmojiSet, path: &Path) -> Result<()> {
    let (n, cols, gap) = (24u32, 6u32, 4u32);
    let scene_gen = recipe::train_scenes(set, recipe)?;
    let scenes = scene_gen.scenes(recipe.seed, 0, n as usize, recipe.res);
    let cell = recipe.res + gap;
    let mut sheet = image::RgbImage::from_pixel(
        cols * cell + gap,
        n.div_ceil(cols) * cell + gap,
        image::Rgb([255, 255, 255]),
    );
    let names = tessera_train::data::class_names();
    for (i, s) in scenes.iter().enumerate() {
        let (r, c) = (i as u32 / cols, i as u32 % cols);
        image::imageops::replace(
            &mut sheet,
            &s.image,
            i64::from(gap + c * cell),
            i64::from(gap + r * cell),
        );
        println!(
            "{r},{c}: {} [class {}: {}]",
            s.caption, s.class, names[s.class]
        );
    }
    let mut png = Vec::new();
    sheet.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    write_atomic(path, &png).map_err(anyhow::Error::msg)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// One progress bar per phase (per stage when stages train side by side); quiet lines when
/// stderr is not a terminal. Each phase's time is printed when it ends.
struct Bars {
    multi: MultiProgress,
    /// Label of the running single phase (VQGAN, pool, classifier).
    phase: String,
    tracks: Vec<Track>,
}

/// One phase's bar.
struct Track {
    label: String,
    bar: ProgressBar,
    began: Instant,
    last_line: Instant,
    done: bool,
}

impl Track {
    fn end(&mut self, multi: &MultiProgress) {
        if !self.done {
            self.done = true;
            self.bar.finish();
            let line = format!(
                "{}: {:.1} min",
                self.label,
                self.began.elapsed().as_secs_f64() / 60.0
            );
            multi.suspend(|| eprintln!("{line}"));
        }
    }
}

impl Bars {
    fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            phase: String::new(),
            tracks: Vec::new(),
        }
    }

    /// Ends every open bar.
    fn finish(&mut self) {
        for t in &mut self.tracks {
            t.end(&self.multi);
        }
        self.tracks.clear();
    }

    fn track(&mut self, label: &str, len: usize) -> &mut Track {
        let i = match self.tracks.iter().position(|t| t.label == label) {
            Some(i) => i,
            None => {
                let bar = self.multi.add(ProgressBar::new(len as u64));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>8} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.to_string());
                self.tracks.push(Track {
                    label: label.to_string(),
                    bar,
                    began: Instant::now(),
                    last_line: Instant::now(),
                    done: false,
                });
                self.tracks.len() - 1
            }
        };
        &mut self.tracks[i]
    }

    fn update_track(&mut self, label: &str, pos: usize, len: usize, msg: String) {
        let multi = self.multi.clone();
        let t = self.track(label, len);
        t.bar.set_length(len as u64);
        t.bar.set_position(pos as u64);
        if t.bar.is_hidden() && (t.last_line.elapsed().as_secs() >= 30 || pos == len) {
            eprintln!("{label} {pos}/{len} {msg}");
            t.last_line = Instant::now();
        }
        t.bar.set_message(msg);
        if pos == len {
            t.end(&multi);
        }
    }

    /// Progress of the running single phase.
    fn update(&mut self, pos: usize, len: usize, msg: String) {
        let label = self.phase.clone();
        self.update_track(&label, pos, len, msg);
    }

    fn event(&mut self, e: TrainEvent) -> bool {
        match e {
            TrainEvent::Phase { name, done } => {
                self.finish();
                if done {
                    eprintln!("{name}: found in the work folder");
                    self.phase.clear();
                } else {
                    if name.starts_with("stages") {
                        eprintln!("{name}");
                    }
                    self.phase = name;
                }
            }
            TrainEvent::Vqgan(p) => self.update(
                p.step,
                p.steps,
                format!(
                    "rec {:.4} psnr {:.2} dB codes {}",
                    p.rec_loss, p.psnr, p.used_codes
                ),
            ),
            TrainEvent::Decoder(p) => self.update(
                p.step,
                p.steps,
                format!("mse {:.5} psnr {:.2} dB", p.mse, p.psnr),
            ),
            TrainEvent::Stage { level, progress: p } => self.update_track(
                &format!("stage {level}"),
                p.step,
                p.steps,
                format!(
                    "loss {:.3} ce {:.3} {:.0} tok/s",
                    p.loss, p.ce, p.tokens_per_s
                ),
            ),
            TrainEvent::Pool(done, all) => self.update(done, all, "scenes encoded".into()),
            TrainEvent::Recognizer(p) => self.update(
                p.step,
                p.steps,
                format!("loss {:.3} batch acc {:.2}", p.loss, p.batch_accuracy),
            ),
            TrainEvent::Note(s) => eprintln!("{s}"),
        }
        true
    }
}

/// Arguments of `tessera eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model to evaluate (default: the shipped one).
    #[arg(long, default_value = "assets/model")]
    pub model: PathBuf,
    /// The recipe the model was trained with (fixes the held-out split).
    #[arg(long, default_value = "default")]
    pub recipe: String,
    /// Quantize the stages' linear layers as they load (`q8_0` or `q4k`), to measure what the
    /// quantized model gives against the same evaluation in full precision.
    #[arg(long, value_name = "q8_0|q4k")]
    pub quantize: Option<String>,
    /// Emoji data fetched by scripts/fetch-data.sh.
    #[arg(long, default_value = "data/emoji")]
    pub data: PathBuf,
    /// Read the small test fixture layout instead.
    #[arg(long)]
    pub fixture: bool,
    /// Where the category classifier is cached (trained on the training split if absent).
    #[arg(long, default_value = "data/runs/classifier")]
    pub classifier: PathBuf,
    /// Classifier training steps (when it is trained).
    #[arg(long, default_value_t = tessera_train::classifier::DEFAULT_CLASSIFIER_STEPS)]
    pub classifier_steps: usize,
    /// Held-out scenes per measurement (reconstruction, NLL, FID); guidance uses half.
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// Generated images per FID (default: `--n`; 0 skips FID).
    #[arg(long)]
    pub fid: Option<usize>,
    /// Classifier-free guidance scale of the class- and text-guided inpaintings (default: the
    /// card's recommendation, the editor's default; else 1).
    #[arg(long)]
    pub guidance_scale: Option<f32>,
    /// Sampling temperature of every level (with --top-k/--top-p unset: the card's
    /// recommended sampling, else 1).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Top-k truncation of every level (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p (nucleus) truncation of every level (1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Re-sampling passes (chains) of every level in the inpaintings (default: the editor's —
    /// the card's recommendation, else 3 per encoder–decoder level for a geometric schedule
    /// and 1 for the GPT).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub chains: Option<u64>,
    /// Candidates per guided inpainting (default: the editor's 4); the guidance accuracy scores
    /// the best-fitting one — the one the editor shows first — and every draw beside it.
    #[arg(long, default_value_t = tessera_engine::pipeline::DEFAULT_CANDIDATES as u64,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub candidates: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a contact sheet PNG here (masked inputs; text-, class-guided, unconditional).
    #[arg(long)]
    pub sheet: Option<PathBuf>,
    /// Rows of the contact sheet.
    #[arg(long, default_value_t = 6)]
    pub sheet_rows: usize,
    /// Measure only the VQGAN of a training work folder (the fine-tuned one once its decoder
    /// phase is done) on `--n` held-out scenes of the recipe it was started with — before the
    /// stages are trained. `--json` writes the numbers.
    #[arg(long, value_name = "WORK")]
    pub vqgan_of: Option<PathBuf>,
}

/// Runs `tessera eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    use tessera_engine::loader::{LoadOptions as ModelLoad, ModelSource};
    use tessera_engine::text::PromptTokenizer;
    use tessera_train::classifier::{Classifier, ClassifierTrainConfig, train_classifier};
    use tessera_train::eval::{EvalConfig, contact_sheet, evaluate};

    if let Some(g) = args
        .guidance_scale
        .filter(|g| !(g.is_finite() && *g >= 0.0))
    {
        anyhow::bail!("--guidance-scale must be a finite number ≥ 0, got {g}");
    }
    // Sampling given on the command line replaces the card's recommendation.
    let explicit = (args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some())
        .then(|| tessera_engine::sampler::LevelParams {
            temperature: args.temperature.unwrap_or(1.0),
            top_k: args.top_k.filter(|&k| k > 0),
            top_p: args.top_p.filter(|&p| p != 1.0),
        });
    if let Some(Err(e)) = explicit.map(|s| s.validate()) {
        anyhow::bail!("{e}");
    }
    if let Some(work) = &args.vqgan_of {
        return eval_work_vqgan(args, work);
    }
    let recipe = load_recipe(&args.recipe)?;
    let set = load_set(&args.data, args.fixture)?;
    let source = ModelSource::open(&args.model)
        .with_context(|| format!("cannot open the model {}", args.model.display()))?;
    let quantize = args
        .quantize
        .as_deref()
        .map(tessera_engine::loader::parse_quantization)
        .transpose()?;
    let load = ModelLoad {
        quantize,
        ..ModelLoad::default()
    };
    let model = source.load(&load)?;
    eprintln!("weights: {}", load.describe_weights(&model.card));
    // A quantized evaluation also measures each level's logits against the model as stored.
    let reference = match quantize {
        Some(_) => Some(source.load(&ModelLoad::default())?),
        None => None,
    };
    let sampling = explicit.unwrap_or_else(|| model.card.sampling.unwrap_or_default());
    let chains = args.chains.map(|n| n as usize);
    eprintln!(
        "sampling: guidance {}, temperature {}, top-k {}, top-p {}, inpainting chains {:?}, \
         {} candidates per guided inpainting (the best-fitting scored)",
        args.guidance_scale
            .unwrap_or_else(|| model.card.guidance_scale.unwrap_or(1.0)),
        sampling.temperature,
        sampling.top_k.map_or("off".into(), |k| k.to_string()),
        sampling.top_p.map_or("off".into(), |p| p.to_string()),
        tessera_train::eval::chains_of(&model.card, chains, true),
        args.candidates
    );
    let tokenizer = PromptTokenizer::for_model(&args.model, &model.card)?;
    let val = recipe::val_scenes(&set, &recipe)?;
    let device = candle_core::Device::Cpu;

    let train = set.all();
    let weights = args.classifier.join("classifier.safetensors");
    let classifier = if weights.is_file() {
        Classifier::load(&weights, &device)?
    } else {
        let cfg = ClassifierTrainConfig {
            // It looks at 32² (work_res): scenes drawn at 64 px give the same input for a
            // quarter of the drawing time.
            res: recipe.res.min(64),
            ..ClassifierTrainConfig::default()
        };
        let mut ui = Bars::new();
        ui.phase = "classifier".into();
        let c = train_classifier(
            &cfg,
            &train,
            args.classifier_steps,
            recipe.seed,
            &device,
            &mut |p| {
                ui.update(
                    p.step,
                    p.steps,
                    format!("loss {:.3} acc {:.2}", p.loss, p.batch_accuracy),
                );
                true
            },
        )?;
        ui.finish();
        std::fs::create_dir_all(&args.classifier)?;
        c.save(&weights)?;
        c
    };
    let check = classifier.evaluate(&val, args.n, recipe.seed ^ 9, recipe.res)?;
    eprintln!(
        "classifier: {:.1}% top-1 on {} clean held-out scenes (chance {:.1}%)",
        100.0 * check.accuracy,
        check.n,
        100.0 / classifier.config().classes.len() as f64
    );

    let cfg = EvalConfig {
        recon: args.n,
        nll: args.n,
        guidance: (args.n / 2).max(1),
        fid: args.fid.unwrap_or(args.n),
        guidance_scale: args
            .guidance_scale
            .unwrap_or_else(|| model.card.guidance_scale.unwrap_or(1.0)),
        sampling,
        chains,
        candidates: args.candidates as usize,
        ..EvalConfig::default()
    };
    let report = evaluate(
        &model,
        reference.as_ref(),
        &val,
        &train,
        &classifier,
        tokenizer.as_ref(),
        &cfg,
        &mut |line| eprintln!("{line}"),
    )?;
    let g = &report.guidance;
    if !g.per_class.is_empty() {
        eprintln!("per requested class (scenes: class / text / unguided / ceiling hits):");
        for c in &g.per_class {
            eprintln!(
                "  {:16} {:3}: {:3} {:3} {:3} {:3}",
                c.name, c.n, c.hits[0], c.hits[1], c.hits[2], c.hits[3]
            );
        }
    }
    if let Some(path) = &args.json {
        let mut value = serde_json::to_value(&report)?;
        value["classifier_clean_accuracy"] = check.accuracy.into();
        write_atomic(path, serde_json::to_string_pretty(&value)?.as_bytes())
            .map_err(anyhow::Error::msg)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.sheet {
        let (sheet, asked) =
            contact_sheet(&model, &val, tokenizer.as_ref(), args.sheet_rows, 3, &cfg)?;
        for (r, a) in asked.iter().enumerate() {
            eprintln!("sheet row {}: {a}", r + 1);
        }
        let mut png = Vec::new();
        sheet.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        write_atomic(path, &png).map_err(anyhow::Error::msg)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
