//! `tessera models`: the official releases one command away — list what is installed and
//! what can be downloaded, get (download, verify, unpack, import) a release, import a zip or
//! checkpoints from disk, remove a model, print where models live.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_store::download::human_bytes;
use tessera_store::{
    Catalogue, DownloadEvent, InstallEvent, InstallOptions, Installed, ModelsFolder, get,
    import_files,
};

/// What `tessera models` does.
#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Installed models (size, origin) and the releases that can be downloaded.
    List {
        /// Catalogue file adding releases (default: TESSERA_CATALOGUE).
        #[arg(long)]
        catalogue: Option<PathBuf>,
    },
    /// Download a release, verify it, and install it in Tessera's format. An interrupted
    /// download resumes where it stopped when run again.
    Get {
        /// Release name (see `tessera models list`).
        name: String,
        /// Storage type of the transformer weights: f16 (default), f32, bf16, q8_0 or q4k.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Keep the downloaded zip (in the models folder's .downloads).
        #[arg(long)]
        keep_zip: bool,
        /// Replace an installed model of the same name.
        #[arg(long)]
        replace: bool,
        /// Failed attempts in a row before giving up (the partial download is kept either way).
        #[arg(long, default_value_t = 5)]
        retries: u32,
        /// Catalogue file adding releases (default: TESSERA_CATALOGUE).
        #[arg(long)]
        catalogue: Option<PathBuf>,
    },
    /// Install a release zip, or its stage checkpoints (scale1.ckpt …), from disk.
    Import {
        /// The zip, or every stage checkpoint.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Which release the files are (needed when their names do not tell).
        #[arg(long)]
        release: Option<String>,
        /// Storage type of the transformer weights: f16 (default), f32, bf16, q8_0 or q4k.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Replace an installed model of the same name.
        #[arg(long)]
        replace: bool,
        /// Catalogue file adding releases (default: TESSERA_CATALOGUE).
        #[arg(long)]
        catalogue: Option<PathBuf>,
    },
    /// Remove an installed model.
    Remove {
        /// Its name.
        name: String,
    },
    /// Print the models folder, or an installed model's folder.
    Path {
        /// An installed model.
        name: Option<String>,
    },
}

/// Runs a `tessera models` command.
pub fn run(cmd: ModelsCommand) -> Result<()> {
    let folder = ModelsFolder::standard()?;
    match cmd {
        ModelsCommand::List { catalogue } => list(&folder, &Catalogue::load(catalogue.as_deref())?),
        ModelsCommand::Get {
            name,
            dtype,
            keep_zip,
            replace,
            retries,
            catalogue,
        } => {
            let cat = Catalogue::load(catalogue.as_deref())?;
            let release = cat.require(&name)?;
            let mut opts = options(&dtype, keep_zip, replace)?;
            opts.download.retries = retries;
            eprintln!("{} — {}", release.title, release.url);
            let mut shown = Shown::new();
            let m = get(&folder, release, &opts, &mut |e| shown.event(e))?;
            shown.finish();
            installed(&m);
            Ok(())
        }
        ModelsCommand::Import {
            files,
            release,
            dtype,
            replace,
            catalogue,
        } => {
            let cat = Catalogue::load(catalogue.as_deref())?;
            let opts = options(&dtype, true, replace)?;
            let mut shown = Shown::new();
            let m = import_files(&folder, &cat, &files, release.as_deref(), &opts, &mut |e| {
                shown.event(e)
            })?;
            shown.finish();
            installed(&m);
            Ok(())
        }
        ModelsCommand::Remove { name } => {
            let freed = folder.remove(&name)?;
            println!("removed {name} ({} freed)", human_bytes(freed));
            Ok(())
        }
        ModelsCommand::Path { name: None } => {
            println!("{}", folder.root().display());
            Ok(())
        }
        ModelsCommand::Path { name: Some(n) } => match folder.find(&n) {
            Some(p) => {
                println!("{}", p.display());
                Ok(())
            }
            None => bail!(
                "no installed model called `{n}` in {}",
                folder.root().display()
            ),
        },
    }
}

fn options(dtype: &str, keep_zip: bool, replace: bool) -> Result<InstallOptions> {
    let (dtype, quantize) = tessera_store::install::weight_format(dtype)?;
    Ok(InstallOptions {
        dtype,
        quantize,
        keep_zip,
        replace,
        ..InstallOptions::default()
    })
}

fn installed(m: &Installed) {
    println!(
        "installed {} in {} ({} levels, {}, {} on disk)",
        m.name,
        m.path.display(),
        m.card.levels(),
        m.card.dtype,
        human_bytes(m.bytes)
    );
    println!("use it with: tessera inpaint --model {} …", m.name);
}

fn list(folder: &ModelsFolder, cat: &Catalogue) -> Result<()> {
    let installed = folder.installed()?;
    println!("models folder: {}", folder.root().display());
    if let Some(q) = folder.quota() {
        println!(
            "quota: {} ({} left)",
            human_bytes(q),
            human_bytes(folder.room().unwrap_or(0))
        );
    }
    println!("\ninstalled:");
    if installed.is_empty() {
        println!("  (none yet; `tessera models get NAME` installs one)");
    }
    for m in &installed {
        let origin = match &m.origin {
            Some(o) => match &o.url {
                Some(url) => format!("downloaded from {url}"),
                None => format!("imported from {}", o.source),
            },
            None => "copied in".into(),
        };
        println!(
            "  {:<26} {:>9}  {} levels, {}; {origin}",
            m.name,
            human_bytes(m.bytes),
            m.card.levels(),
            m.card.dtype
        );
        if let Some(sha) = m.origin.as_ref().and_then(|o| o.sha256.as_deref()) {
            println!("  {:<26} sha256 {sha}", "");
        }
    }
    println!("\navailable:");
    let records = folder.records();
    for r in cat.releases() {
        let size = r
            .size
            .or(records.get(&r.url).map(|x| x.bytes))
            .map(human_bytes)
            .unwrap_or_else(|| "size unknown".into());
        let mark = if installed.iter().any(|m| m.name == r.name) {
            " [installed]"
        } else {
            ""
        };
        println!(
            "  {:<26} {:>12}  {} — {} levels, {}{mark}",
            r.name, size, r.title, r.levels, r.conditioning
        );
    }
    Ok(())
}

/// Progress on the terminal: a byte bar with speed and ETA for the download, a line per step
/// after it.
struct Shown {
    bar: Option<ProgressBar>,
}

impl Shown {
    fn new() -> Self {
        Self { bar: None }
    }

    fn bar(&mut self, total: Option<u64>) -> &ProgressBar {
        self.bar.get_or_insert_with(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        })
    }

    fn event(&mut self, e: &InstallEvent) {
        match e {
            InstallEvent::Download(DownloadEvent::Connecting { attempt, from }) => {
                if *from > 0 && *attempt == 1 {
                    eprintln!("resuming from {}", human_bytes(*from));
                }
            }
            InstallEvent::Download(DownloadEvent::Progress { done, total, .. }) => {
                let bar = self.bar(*total);
                if let Some(t) = total {
                    bar.set_length(*t);
                }
                bar.set_position(*done);
            }
            InstallEvent::Download(DownloadEvent::Retrying { why, wait }) => {
                let msg = format!("{why}; retrying in {:.0} s", wait.as_secs_f64());
                match &self.bar {
                    Some(b) => b.println(msg),
                    None => eprintln!("{msg}"),
                }
            }
            InstallEvent::Verified { bytes, sha256 } => {
                self.finish();
                eprintln!("verified {} (sha256 {sha256})", human_bytes(*bytes));
            }
            InstallEvent::Unpacking { entry, index, of } => {
                eprintln!("unpacking {index}/{of}: {entry}")
            }
            InstallEvent::Importing(step) => eprintln!("importing {step}…"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A `--model` value: an existing path as given, else the installed model of that name; when
/// it is neither, the error lists the installed names.
pub fn resolve_model(given: &Path) -> Result<PathBuf> {
    if given.exists() {
        return Ok(given.to_path_buf());
    }
    let name = given.to_string_lossy();
    let folder = ModelsFolder::standard().ok();
    if let Some(found) = folder.as_ref().and_then(|f| f.find(&name)) {
        return Ok(found);
    }
    let installed: Vec<String> = folder
        .and_then(|f| f.installed().ok())
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let names = if installed.is_empty() {
        "none is installed; `tessera models list` shows what can be".to_string()
    } else {
        format!("installed: {}", installed.join(", "))
    };
    bail!("--model {name}: no such file or folder, and no installed model of that name ({names})")
}
