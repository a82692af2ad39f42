//! Subcommands of the headless command line.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use tessera_engine::loader::card::{Conditioning, Network};
use tessera_engine::loader::import::{ImportOptions, import_source};
use tessera_engine::loader::{LoadOptions, ModelSource};
use tessera_engine::reference::{self, Measure};

/// `tessera check-reference <dir>`: the release as published, then its imported copy.
pub fn check_reference(dir: &Path) -> Result<ExitCode> {
    let expected = dir.join("expected.safetensors");
    if !expected.is_file() {
        bail!("{} has no expected.safetensors", dir.display());
    }
    let opts = LoadOptions::default();
    let source = ModelSource::open(dir)?;
    for w in source.warnings() {
        eprintln!("warning: {w}");
    }
    let model = source.load(&opts)?;
    println!("official layout: {}", source.path().display());
    let official = reference::check(&model, &expected)?;
    print_report(&official);
    drop(model);

    let tmp = std::env::temp_dir().join(format!("tessera-check-{}", std::process::id()));
    let imported_dir = tmp.join("imported");
    let result = (|| -> Result<reference::Report> {
        import_source(
            &source,
            &imported_dir,
            &ImportOptions::default(),
            &mut |_| {},
        )?;
        let imported = ModelSource::open(&imported_dir)?.load(&opts)?;
        Ok(reference::check(&imported, &expected)?)
    })();
    std::fs::remove_dir_all(&tmp).ok();
    let imported = result.context("checking the imported copy")?;
    println!("imported (Tessera format):");
    print_report(&imported);

    if official.passed() && imported.passed() {
        println!("PASS: every output within {:e}", reference::TOLERANCE);
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL");
        Ok(ExitCode::FAILURE)
    }
}

fn print_report(report: &reference::Report) {
    for row in &report.rows {
        let verdict = if row.passed() { "ok  " } else { "FAIL" };
        match &row.measure {
            Measure::MaxAbs(e) => println!("  {verdict} {:<52} max |Δ| = {e:.3e}", row.name),
            Measure::Mismatches { differ, of } => {
                println!("  {verdict} {:<52} {differ} of {of} differ", row.name)
            }
            Measure::Incomparable(why) => println!("  {verdict} {:<52} {why}", row.name),
        }
    }
}

/// `tessera import`.
pub fn import(manifest: &Path, out: &Path, dtype: &str, force: bool) -> Result<()> {
    let (dtype, quantize) = tessera_store::install::weight_format(dtype)?;
    let opts = ImportOptions {
        dtype,
        quantize,
        overwrite: force,
    };
    let source = ModelSource::open(manifest)?;
    for w in source.warnings() {
        eprintln!("warning: {w}");
    }
    let card = import_source(&source, out, &opts, &mut |step| {
        eprintln!("importing {step}…")
    })?;
    println!(
        "wrote {} ({} levels, {:.1} M transformer parameters, {})",
        out.display(),
        card.levels(),
        card.transformer_parameters() as f64 / 1e6,
        card.dtype
    );
    Ok(())
}

/// `tessera info`.
pub fn info(model: &Path) -> Result<()> {
    let source = ModelSource::open(model)?;
    for w in source.warnings() {
        eprintln!("warning: {w}");
    }
    let card = source.card();
    println!("{} — {}", card.name, card.description);
    println!("source:       {}", source.path().display());
    println!(
        "image:        {0}×{0} px, {1}×{1} tokens, {2} codes used of {3}",
        card.resolution(),
        card.grid_side(),
        card.n_tokens,
        card.vqgan.n_embed
    );
    println!("levels (T):   {}", card.levels());
    for stage in &card.stages {
        let arch = match &stage.network {
            Network::XTransformer {
                config: c,
                residual_scaled,
            } => format!(
                "{}XTransformer dim {} enc {}×{} heads, dec {}×{} heads",
                if *residual_scaled {
                    "ResidualScaled"
                } else {
                    ""
                },
                c.dim,
                c.enc_depth,
                c.enc_heads,
                c.dec_depth,
                c.dec_heads
            ),
            Network::Gpt { config: c } => format!(
                "minGPT {} layers × {}, {} heads",
                c.n_layer, c.n_embd, c.n_head
            ),
        };
        println!(
            "  stage {}:    {arch}; {:.2} M parameters; β = {:.4}",
            stage.level,
            stage.parameters as f64 / 1e6,
            card.schedule.beta(stage.level)
        );
    }
    println!("schedule ᾱ:   {:?}", card.schedule.alphacum);
    let cond = match &card.conditioning {
        Conditioning::None => "unconditional".to_string(),
        Conditioning::Class {
            n_classes,
            class_names,
            ..
        } => format!(
            "class ({n_classes} classes{})",
            if class_names.is_empty() {
                ""
            } else {
                ", named"
            }
        ),
        Conditioning::Text {
            context_len,
            class_names,
            ..
        } if !class_names.is_empty() => format!(
            "text ({context_len} tokens) and class words for {} classes: {}",
            class_names.len(),
            class_names.join(", ")
        ),
        Conditioning::Text { context_len, .. } => format!("text ({context_len} tokens)"),
    };
    println!("conditioning: {cond}");
    // Quantized stages mix block formats with f32 tensors: their files tell the size.
    let stage_bytes: Vec<usize> = card
        .stages
        .iter()
        .map(|s| match card.dtype.as_str() {
            "f16" | "bf16" => s.parameters * 2,
            "f32" => s.parameters * 4,
            _ => std::fs::metadata(source.path().join(&s.weights))
                .map(|m| m.len() as usize)
                .unwrap_or(s.parameters * 4),
        })
        .collect();
    println!(
        "memory:       weights {} for all stages ({}), {} for the largest stage alone",
        human_bytes(stage_bytes.iter().sum()),
        card.dtype,
        human_bytes(stage_bytes.iter().copied().max().unwrap_or(0))
    );
    println!("license:      {}", card.license);
    println!("provenance:   {}", card.provenance);
    Ok(())
}

/// `tessera bench`.
pub fn bench(quick: bool, only: &[String]) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark with `cargo run --release`");
    }
    let parts = tessera_engine::bench::Parts::from_names(only)?;
    tessera_engine::bench::run(&parts, quick, &mut |line| println!("{line}"))?;
    Ok(())
}

/// `tessera bench --chain NAME`.
pub fn bench_chain(name: &str) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark with `cargo run --release`");
    }
    tessera_engine::bench::chain::run(name, &mut |line| println!("{line}"))?;
    Ok(())
}

fn human_bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.0} kB", n / 1e3)
    }
}

/// `tessera bench --model`: an inpainting and a sampling job through the job API.
pub fn bench_model(model: &Path) -> Result<()> {
    use std::sync::Arc;
    use std::time::Instant;
    use tessera_engine::inpaint::{PresetMask, WindowOptions, preset_mask};
    use tessera_engine::pipeline::{ChainRequest, default_chains};
    use tessera_engine::worker::{Engine, Event, Job, JobKind};

    let mut engine = Engine::spawn(|| {});
    let t = Instant::now();
    engine.load_model(model, LoadOptions::default());
    let card = match engine.events().recv()? {
        Event::ModelLoaded { card, .. } => card,
        Event::ModelFailed { error } => bail!("cannot load {}: {error}", model.display()),
        other => bail!("unexpected event {other:?}"),
    };
    println!(
        "{}: loaded in {:.2} s",
        card.name,
        t.elapsed().as_secs_f64()
    );
    let res = card.resolution() as u32;
    let image = image::RgbImage::from_fn(res, res, |x, y| {
        image::Rgb([(x * 255 / res) as u8, (y * 255 / res) as u8, 128])
    });
    let mask = preset_mask(PresetMask::CentreWindow, res, res);
    let condition = match &card.conditioning {
        Conditioning::Class { .. } => tessera_engine::loader::card::Condition::Class(0),
        _ => tessera_engine::loader::card::Condition::None,
    };
    let inpaint = JobKind::Inpaint {
        image: Arc::new(image),
        mask: Arc::new(mask),
        window: WindowOptions {
            whole_image: true,
            ..WindowOptions::default()
        },
        start_level: None,
    };
    // The editor's Generate with a concept picked: its candidates ranked by their fit
    // against the vocabulary, and — for the ranking's cost — against the empty condition only.
    let dir = if model.is_dir() {
        model.to_path_buf()
    } else {
        model.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let tokenizer = tessera_engine::text::PromptTokenizer::for_model(&dir, &card)?;
    let vocabulary = tessera_engine::fit::vocabulary(&card, tokenizer.as_ref())?;
    let mut ranked = Vec::new();
    if let Some(first) = vocabulary.first() {
        let mut chain = ChainRequest::new(&card);
        chain.condition = first.clone();
        chain.guidance_scale = card.guidance_scale.unwrap_or(1.0);
        chain.chains = default_chains(&card);
        chain.candidates = tessera_engine::pipeline::DEFAULT_CANDIDATES;
        let mut plain = chain.clone();
        chain.contrast = vocabulary.clone();
        let concept = tessera_engine::recognizer::request_concept(&card, Some(0), "");
        if concept.is_some() {
            let mut recognized = chain.clone();
            recognized.concept = concept;
            ranked.push((
                "inpaint, first concept guided, the editor's candidates ranked by the recognizer",
                recognized,
            ));
        }
        ranked.push((
            "inpaint, first concept guided, the editor's candidates ranked by fit",
            chain,
        ));
        if chain_takes_empty(&card) {
            ranked.push((
                "inpaint, the same ranked against the empty condition only",
                plain.clone(),
            ));
        }
        plain.candidates = 1;
        ranked.push(("inpaint, the same with one candidate (not ranked)", plain));
    }
    for (what, chain) in ranked {
        let start = Instant::now();
        engine.submit(Job {
            kind: inpaint.clone(),
            chain,
            partial_every: None,
            preview_max_side: None,
        });
        loop {
            match engine.events().recv()? {
                Event::Finished { secs, .. } => {
                    println!(
                        "{what}: result {secs:.3} s ({:.3} s wall)",
                        start.elapsed().as_secs_f64()
                    );
                    break;
                }
                Event::Failed { error, .. } => bail!("{what}: {error}"),
                Event::NoOp { reason, .. } => bail!("{what}: {reason}"),
                _ => {}
            }
        }
    }
    for (what, kind, chains) in [
        (
            "inpaint (centre window, default chain counts)",
            inpaint.clone(),
            default_chains(&card),
        ),
        (
            "sample (1 pass per level)",
            JobKind::Sample,
            vec![1; card.levels()],
        ),
    ] {
        let mut chain = ChainRequest::new(&card);
        chain.condition = condition.clone();
        chain.chains = chains;
        let start = Instant::now();
        engine.submit(Job {
            kind,
            chain,
            partial_every: None,
            preview_max_side: None,
        });
        let mut first_level = None;
        loop {
            match engine.events().recv()? {
                Event::Level { .. } if first_level.is_none() => {
                    first_level = Some(start.elapsed().as_secs_f64());
                }
                Event::Finished { secs, .. } => {
                    println!(
                        "{what}: first level preview {:.3} s, result {secs:.3} s",
                        first_level.unwrap_or(f64::NAN)
                    );
                    break;
                }
                Event::Failed { error, .. } => bail!("{what}: {error}"),
                Event::NoOp { reason, .. } => bail!("{what}: {reason}"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether the model takes the empty condition (trained with dropped conditions).
fn chain_takes_empty(card: &tessera_engine::loader::card::ModelCard) -> bool {
    let none = tessera_engine::loader::card::Condition::None;
    (1..=card.levels()).all(|t| card.prefix(t, &none).is_ok())
}

/// `tessera classes PROMPT`: the ImageNet classes it names, best first; unknown words on
/// stderr. Fails when it names none.
pub fn classes(prompt: &str, n: usize) -> Result<ExitCode> {
    use tessera_engine::imagenet::{classes_for_prompt, unknown_words};
    for w in unknown_words(prompt) {
        eprintln!("warning: no ImageNet class name has the word `{w}`");
    }
    let found = classes_for_prompt(prompt, n);
    if found.is_empty() {
        eprintln!("error: “{prompt}” names no ImageNet class (try a class name or synonym)");
        return Ok(ExitCode::FAILURE);
    }
    for m in found {
        println!("{} {}", m.id, m.name);
    }
    Ok(ExitCode::SUCCESS)
}
