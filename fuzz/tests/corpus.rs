//! Replays every seed in `fuzz/corpus/<target>/` through its target, then feeds each target
//! about three seconds of simple mutations of its seeds (bit flips, byte inserts and deletes,
//! interesting values, truncations, splices) from a fixed seed. Nothing may panic: a panicking
//! input is saved to `fuzz/crashes/<target>/` and named in the failure.
//!
//! `TESSERA_FUZZ_SECS` changes the time per target (0 replays the corpus only).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

/// Seeds of a target, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = tessera_fuzz::crate_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect()
}

thread_local! {
    /// Where the last panic on this thread happened, and what it said.
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Replaces the default panic hook (which prints every panic, also the ones the readers
/// catch themselves, with a backtrace) by one that only remembers the last panic.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
        }));
    });
}

/// Runs one input; on a panic, saves it and returns where.
fn check(target: &str, data: &[u8]) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| tessera_fuzz::run(target, data)));
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("no target `{target}`")),
        Err(_) => {
            let message = LAST_PANIC.with(|p| p.borrow().clone());
            let dir = tessera_fuzz::crate_dir().join("crashes").join(target);
            std::fs::create_dir_all(&dir).ok();
            let path = dir.join(format!("test-{:016x}", hash(data)));
            std::fs::write(&path, data).ok();
            Err(format!(
                "target `{target}` panicked on a {}-byte input, saved to {}: {message}",
                data.len(),
                path.display()
            ))
        }
    }
}

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A small xorshift generator (fixed seed: every run tries the same inputs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u32; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    16385,
    0x8000_0000,
];

/// One to four random edits of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(16)).min(len - i);
                data.drain(i..i + n);
            }
            4 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                data[i..i + 4].copy_from_slice(&bytes);
            }
            5 => data.truncate(rng.below(len + 1)),
            6 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ if len > 1 => {
                // Copy a block within the input (repeats a chunk, a field, a header).
                let from = rng.below(len);
                let n = (1 + rng.below(32)).min(len - from);
                let block = data[from..from + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, block);
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data
}

fn fuzz_secs() -> f64 {
    std::env::var("TESSERA_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

/// Replays the corpus of `target`, then mutates it for [`fuzz_secs`]; panics naming every
/// failing input.
fn fuzz(target: &str, seed: u64) {
    quiet_panics();
    let seeds = corpus(target);
    let mut failures = Vec::new();
    for (path, data) in &seeds {
        if let Err(e) = check(target, data) {
            failures.push(format!("seed {}: {e}", path.display()));
        }
    }
    let budget = Duration::from_secs_f64(fuzz_secs());
    let start = Instant::now();
    let mut rng = Rng(seed | 1);
    let mut runs = 0usize;
    while start.elapsed() < budget && failures.len() < 5 {
        let (_, input) = &seeds[rng.below(seeds.len())];
        let (_, other) = &seeds[rng.below(seeds.len())];
        let mut data = mutate(&mut rng, input, other);
        if target == "model" && !data.is_empty() {
            // Keep the file selector of the seed most of the time.
            if rng.below(4) != 0 {
                data[0] = input[0];
            }
        }
        if let Err(e) = check(target, &data) {
            failures.push(e);
        }
        runs += 1;
    }
    tessera_fuzz::remove_scratch_dir();
    eprintln!(
        "{target}: {} seeds, {runs} mutated inputs in {:.1} s",
        seeds.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn image_corpus_and_mutations() {
    fuzz("image", 0x1111);
}

#[test]
fn ckpt_corpus_and_mutations() {
    fuzz("ckpt", 0x2222);
}

#[test]
fn model_corpus_and_mutations() {
    fuzz("model", 0x3333);
}

#[test]
fn project_corpus_and_mutations() {
    fuzz("project", 0x4444);
}

#[test]
fn project_entries_corpus_and_mutations() {
    fuzz("project_entries", 0x6666);
}

#[test]
fn prompt_corpus_and_mutations() {
    fuzz("prompt", 0x5555);
}

#[test]
fn every_target_has_a_corpus() {
    for target in tessera_fuzz::TARGETS {
        assert!(!corpus(target).is_empty());
    }
}
