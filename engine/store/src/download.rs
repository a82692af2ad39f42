//! Downloads an artist can trust: into `<zip>.part`, resumed with an HTTP Range request after a
//! dropped connection or a restart, retried with back-off on network errors and 5xx answers,
//! refused up front when the disk cannot hold it, cancellable between chunks, and renamed to
//! its final name only when every byte is there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_engine::{Error, Result};

/// How a download behaves.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Failed attempts in a row (no byte received) before giving up.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, at most 30 s.
    pub backoff: Duration,
    /// A connection that delivers nothing for this long counts as dropped.
    pub read_timeout: Duration,
    /// Set to stop the download; the partial file is kept for a later resume.
    pub cancel: Arc<AtomicBool>,
    /// At most this many more bytes may be written (the models folder's quota), whatever
    /// the disk has free.
    pub space_limit: Option<u64>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            retries: 5,
            backoff: Duration::from_secs(1),
            read_timeout: Duration::from_secs(30),
            cancel: Arc::new(AtomicBool::new(false)),
            space_limit: None,
        }
    }
}

/// What a download reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// Connecting (attempt 1, 2, …); `from` bytes are already on disk.
    Connecting {
        /// Attempt number, from 1.
        attempt: u32,
        /// Bytes already downloaded (resumed from).
        from: u64,
    },
    /// Bytes arrived.
    Progress {
        /// Bytes on disk.
        done: u64,
        /// Size of the whole file, when the server said.
        total: Option<u64>,
        /// Current speed (bytes per second, over this connection).
        bytes_per_s: f64,
    },
    /// An attempt failed; the next starts after `wait`.
    Retrying {
        /// Why the attempt failed.
        why: String,
        /// Back-off before the next attempt.
        wait: Duration,
    },
}

/// A finished download.
#[derive(Debug, Clone, PartialEq)]
pub struct Downloaded {
    /// The complete file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// Bytes that were already on disk when this call started (0 for a fresh download).
    pub resumed_from: u64,
}

/// Where the bytes of `dest` collect until it is complete.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Refuses to write `needed` more bytes into `dir` when only `available` are free (with a
/// 64 MiB margin so the disk is not filled to the last byte).
pub fn check_space(dir: &Path, needed: u64, available: u64) -> Result<()> {
    const MARGIN: u64 = 64 << 20;
    if needed.saturating_add(MARGIN) > available {
        return Err(Error::Input(format!(
            "not enough disk space in {}: {} needed, {} free; free some space, raise the \
             models folder's quota or set TESSERA_MODELS to a folder on a larger disk",
            dir.display(),
            human_bytes(needed.saturating_add(MARGIN)),
            human_bytes(available)
        )));
    }
    Ok(())
}

/// Free bytes on the disk holding `dir`, at most `limit`.
pub fn free_space(dir: &Path, limit: Option<u64>) -> Result<u64> {
    let free = fs4::available_space(dir).map_err(|e| Error::io(dir, e))?;
    Ok(limit.map_or(free, |l| l.min(free)))
}

/// `1.2 GB`, `340 MB`, `12 kB`, `7 B`.
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    for (unit, size) in [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] {
        if n >= size {
            return format!("{:.1} {unit}", n / size);
        }
    }
    format!("{n} B")
}

/// SHA-256 of a file (hex).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// How one attempt ended when it did not finish the file.
enum Failure {
    /// Worth another attempt (network error, 5xx, connection closed early); `progress` when
    /// it received bytes, which resets the retry count.
    Retry { why: String, progress: bool },
    /// Not worth another attempt.
    Fatal(Error),
}

/// Downloads `url` to `dest` (resuming `dest.part` when present). `expected` is the size the
/// catalogue knows, if any: a server offering another size is refused.
pub fn download(
    url: &str,
    dest: &Path,
    expected: Option<u64>,
    opts: &DownloadOptions,
    on: &mut dyn FnMut(&DownloadEvent),
) -> Result<Downloaded> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let part = part_path(dest);
    let resumed_from = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(opts.read_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .user_agent(concat!("tessera/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut failures = 0u32;
    let mut attempt = 0u32;
    loop {
        if opts.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        attempt += 1;
        match attempt_once(&agent, url, &part, expected, opts, attempt, on) {
            Ok(bytes) => {
                std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
                let sha256 = sha256_file(dest)?;
                return Ok(Downloaded {
                    path: dest.to_path_buf(),
                    bytes,
                    sha256,
                    resumed_from,
                });
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry { why, progress }) => {
                failures = if progress { 1 } else { failures + 1 };
                if failures > opts.retries {
                    return Err(Error::Input(format!(
                        "downloading {url} failed {failures} times in a row, last: {why}; \
                         {} bytes are kept in {} and the next try resumes from there",
                        std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0),
                        part.display()
                    )));
                }
                let wait = (opts.backoff * 2u32.pow(failures.saturating_sub(1).min(5)))
                    .min(Duration::from_secs(30));
                on(&DownloadEvent::Retrying { why, wait });
                sleep_unless_cancelled(wait, &opts.cancel)?;
            }
        }
    }
}

fn sleep_unless_cancelled(wait: Duration, cancel: &AtomicBool) -> Result<()> {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    Ok(())
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `bytes a-b/total` → (a, total).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = match range.split_once('-') {
        Some((a, _)) => a.trim().parse().ok()?,
        None => return None,
    };
    Some((start, total))
}

/// One connection: returns the final size when the file is complete.
fn attempt_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    expected: Option<u64>,
    opts: &DownloadOptions,
    attempt: u32,
    on: &mut dyn FnMut(&DownloadEvent),
) -> std::result::Result<u64, Failure> {
    let fatal = Failure::Fatal;
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if let Some(e) = expected
        && have > e
    {
        // Longer than the file can be: not a prefix of it.
        have = 0;
        truncate(part).map_err(fatal)?;
    }
    on(&DownloadEvent::Connecting {
        attempt,
        from: have,
    });
    let mut req = agent.get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure::Retry {
                why: format!("cannot reach {url}: {e}"),
                progress: false,
            });
        }
    };
    let status = resp.status().as_u16();
    let length: Option<u64> = header(&resp, "content-length").and_then(|v| v.parse().ok());
    let total = match status {
        200 => {
            if have > 0 {
                // The server ignored the range: start over.
                have = 0;
                truncate(part).map_err(fatal)?;
            }
            length
        }
        206 => {
            let range = header(&resp, "content-range").and_then(|v| content_range(&v));
            match range {
                Some((start, total)) if start == have => total.or(length.map(|l| l + have)),
                _ => {
                    truncate(part).map_err(fatal)?;
                    return Err(Failure::Retry {
                        why: "the server answered another range than asked; starting over".into(),
                        progress: false,
                    });
                }
            }
        }
        416 if have > 0 => {
            let total = header(&resp, "content-range")
                .and_then(|v| v.rsplit_once('/').and_then(|(_, t)| t.trim().parse().ok()));
            if total == Some(have) && expected.is_none_or(|e| e == have) {
                return Ok(have);
            }
            truncate(part).map_err(fatal)?;
            return Err(Failure::Retry {
                why: "the partial download does not fit the file on the server; starting over"
                    .into(),
                progress: false,
            });
        }
        408 | 425 | 429 | 500..=599 => {
            return Err(Failure::Retry {
                why: format!("the server answered {status}"),
                progress: false,
            });
        }
        _ => {
            return Err(fatal(Error::Input(format!(
                "the server answered {status}{} for {url}",
                match status {
                    404 | 410 =>
                        " (no such file: the release may have moved; a mirror can be \
                                  set with TESSERA_MIRROR)",
                    401 | 403 => " (access refused)",
                    _ => "",
                }
            ))));
        }
    };
    if let (Some(e), Some(t)) = (expected, total)
        && e != t
    {
        let _ = std::fs::remove_file(part);
        return Err(fatal(Error::Input(format!(
            "{url} is {t} bytes, but the catalogue says {e}: not the expected file, so it \
             was not kept"
        ))));
    }
    let dir = part.parent().unwrap_or(Path::new("."));
    if let Some(t) = total {
        let free = free_space(dir, opts.space_limit).map_err(fatal)?;
        check_space(dir, t.saturating_sub(have), free).map_err(fatal)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| fatal(Error::io(part, e)))?;
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 256 << 10];
    let started = Instant::now();
    let start_have = have;
    let mut last_report = Instant::now() - Duration::from_secs(1);
    loop {
        if opts.cancel.load(Ordering::Relaxed) {
            let _ = file.flush();
            return Err(fatal(Error::Cancelled));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.flush();
                return Err(Failure::Retry {
                    why: format!("the connection dropped after {have} bytes: {e}"),
                    progress: have > start_have,
                });
            }
        };
        if total.is_some_and(|t| have + n as u64 > t) {
            let _ = std::fs::remove_file(part);
            return Err(fatal(Error::Input(format!(
                "{url} sent more bytes than the {} it announced; nothing was kept",
                total.unwrap_or(0)
            ))));
        }
        file.write_all(&buf[..n]).map_err(|e| {
            fatal(Error::Input(format!(
                "cannot write {}: {e}; the {have} bytes downloaded so far are kept and the \
                 next try resumes from there",
                part.display()
            )))
        })?;
        have += n as u64;
        if last_report.elapsed() >= Duration::from_millis(100) {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            on(&DownloadEvent::Progress {
                done: have,
                total,
                bytes_per_s: (have - start_have) as f64 / secs,
            });
        }
    }
    file.sync_all().map_err(|e| fatal(Error::io(part, e)))?;
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    on(&DownloadEvent::Progress {
        done: have,
        total,
        bytes_per_s: (have - start_have) as f64 / secs,
    });
    match total {
        Some(t) if have < t => Err(Failure::Retry {
            why: format!("the connection closed after {have} of {t} bytes"),
            progress: have > start_have,
        }),
        _ => Ok(have),
    }
}

fn truncate(part: &Path) -> Result<()> {
    File::create(part).map(drop).map_err(|e| Error::io(part, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }

    #[test]
    fn space_is_checked_with_the_numbers() {
        let dir = Path::new("/models");
        assert!(check_space(dir, 1 << 20, 1 << 30).is_ok());
        let e = check_space(dir, 5_000_000_000, 2_000_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("5.1 GB needed") && e.contains("2.0 GB free"),
            "{e}"
        );
    }
}
