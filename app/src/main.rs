//! The `tessera` binary: with no subcommand (or `tessera edit`) it opens the editor window;
//! every other subcommand drives the engine crate from the command line and prints what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod cli;
mod generate;
mod models;
mod train;

/// Tessera: inpainting with ImageBART.
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open the editor window (the default when no subcommand is given).
    Edit {
        /// Image (PNG, JPEG, WebP) or project (.tessera) to open.
        image: Option<PathBuf>,
        /// Model folder or official manifest (default: assets/model when installed).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Compare the engine with outputs of the official implementation in a reference folder
    /// (official release layout plus expected.safetensors); also checks the imported copy.
    CheckReference {
        /// Folder with sampling.yaml, configs/, models/ and expected.safetensors.
        dir: PathBuf,
    },
    /// Convert an official release (sampling manifest) into a Tessera model folder.
    Import {
        /// The official sampling manifest (e.g. configs/sampling/ffhq/ffhq_2_scales_custom.yaml).
        manifest: PathBuf,
        /// Output folder (must not exist unless --force).
        out: PathBuf,
        /// Storage type of the transformer weights: f32, f16 or bf16, or the block formats
        /// q8_0 / q4k (linear layers quantized, stored as GGUF; the VQGAN stays f32).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Replace an existing output folder.
        #[arg(long)]
        force: bool,
    },
    /// The official releases: list, get (download + install), import a zip from disk,
    /// remove, path. Models live in the platform's data folder (or TESSERA_MODELS); an
    /// installed model's name works wherever --model is taken.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Describe a model: architecture, parameters, schedule, conditioning, expected memory.
    Info {
        /// Model folder or official manifest.
        model: PathBuf,
    },
    /// Regenerate the masked part of an image.
    Inpaint {
        #[command(flatten)]
        inpaint: generate::InpaintArgs,
        #[command(flatten)]
        sampling: generate::SamplingArgs,
    },
    /// Generate whole images (unconditional, class or text).
    Sample {
        #[command(flatten)]
        sampling: generate::SamplingArgs,
    },
    /// Train a model from scratch (the default model by default): VQGAN, token pool, every
    /// stage; resumable — rerun the same command after an interruption.
    Train {
        #[command(flatten)]
        args: train::TrainArgs,
    },
    /// Measure a trained model on the held-out split: VQGAN PSNR and code usage, NLL per
    /// stage, guidance accuracy (concept classifier), FID, and a contact sheet.
    Eval {
        #[command(flatten)]
        args: train::EvalArgs,
    },
    /// The ImageNet classes a prompt names, best first, one per line, id first
    /// (`277 red fox, Vulpes vulpes`): what `--prompt` picks for the class-conditional models.
    Classes {
        /// The prompt ("a red fox in the snow").
        prompt: String,
        /// How many candidates to list.
        #[arg(short, long, default_value_t = 5)]
        n: usize,
    },
    /// Benchmarks of released-size networks with random weights (use a release build).
    Bench {
        /// Fewer repetitions.
        #[arg(long)]
        quick: bool,
        /// Only these parts: encdec, gpt, vqgan (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Instead, time an inpainting job (centre window) and a sampling job on this model
        /// through the job API: time to the first level preview and to the result.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Instead, sample a whole released-size chain with random weights through the
        /// pipeline (batch 4, f32 and q8_0): `cin5`, the class-conditional ImageNet 5 levels.
        #[arg(long, value_name = "cin5")]
        chain: Option<String>,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    if !matches!(cli.command, None | Some(Command::Edit { .. })) {
        tessera_engine::panic::end_on_closed_stdout();
    }
    match cli.command {
        None => edit(None, None),
        Some(Command::Edit { image, model }) => {
            edit(image, model.map(|m| models::resolve_model(&m)).transpose()?)
        }
        Some(Command::CheckReference { dir }) => cli::check_reference(&dir),
        Some(Command::Import {
            manifest,
            out,
            dtype,
            force,
        }) => {
            cli::import(&manifest, &out, &dtype, force).context("import failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Models { command }) => {
            models::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Info { model }) => {
            cli::info(&models::resolve_model(&model)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Inpaint { inpaint, sampling }) => {
            generate::run(&sampling, Some(&inpaint))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Sample { sampling }) => {
            generate::run(&sampling, None)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Train { args }) => {
            train::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Eval { args }) => {
            train::eval(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Classes { prompt, n }) => cli::classes(&prompt, n),
        Some(Command::Bench {
            quick,
            only,
            model,
            chain,
        }) => {
            match (model, chain) {
                (Some(_), Some(_)) => anyhow::bail!("--model and --chain are separate benchmarks"),
                (Some(m), None) => cli::bench_model(&models::resolve_model(&m)?)?,
                (None, Some(c)) => cli::bench_chain(&c)?,
                (None, None) => cli::bench(quick, &only)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens the editor window; returns when it closes.
fn edit(image: Option<PathBuf>, model: Option<PathBuf>) -> Result<ExitCode> {
    let mut defaults = tessera::editor::EditorOptions::default();
    let default_model = defaults.model.take();
    let opts = tessera::editor::EditorOptions {
        image,
        model: model.or(default_model),
        ..defaults
    };
    tessera::editor::run(opts)
        .map_err(|e| anyhow::anyhow!("cannot open the editor window: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Panics print one line, not a backtrace, unless `RUST_BACKTRACE` asks for it; panics the
/// engine expects from libraries on hostile input (caught and turned into errors) print
/// nothing.
fn quiet_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if tessera_engine::panic::expected() {
            return;
        }
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            return default(info);
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error: {}{at}; this is a bug, please report it \
             (RUST_BACKTRACE=1 shows where it came from)",
            tessera_engine::panic::message(info.payload())
        );
    }));
}

fn main() -> ExitCode {
    tessera_engine::threads::fix_thread_count();
    tessera_engine::heap::keep_freed_memory();
    quiet_panics();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // The shells' convention for a run ended by Ctrl-C.
            if generate::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
