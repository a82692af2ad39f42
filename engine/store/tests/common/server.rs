//! A loopback HTTP/1.1 server for download tests: serves files from memory, honours
//! `Range: bytes=N-`, and misbehaves on request (drops a connection mid-body, answers error
//! statuses, ignores ranges). Shared with the CLI tests (`#[path]`).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// How the server behaves; change it between requests through [`Server::with`].
#[derive(Default)]
pub struct Behaviour {
    /// Files by path (`/name.zip`).
    pub files: HashMap<String, Vec<u8>>,
    /// Statuses to answer (one per request) before serving normally.
    pub statuses: VecDeque<u16>,
    /// For the next requests, send only up to this absolute byte of the file, then close
    /// (the announced length stays the full one); one entry per request.
    pub drops: VecDeque<u64>,
    /// Answer every request with the whole file (200), ignoring Range.
    pub ignore_range: bool,
    /// Every request seen: (path, range start asked for).
    pub seen: Vec<(String, Option<u64>)>,
}

/// The running server (it stops with the test process).
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<Mutex<Behaviour>>,
}

impl Server {
    /// Starts serving `files` (path → bytes).
    pub fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Behaviour {
            files,
            ..Behaviour::default()
        }));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Self { base, state }
    }

    /// Changes the behaviour.
    pub fn with<R>(&self, f: impl FnOnce(&mut Behaviour) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn serve(stream: TcpStream, state: &Mutex<Behaviour>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut range = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range:") {
                range = v
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.trim_end_matches('-').parse::<u64>().ok());
            }
        }
        let (status, body, start, total, drop_at) = {
            let mut s = state.lock().unwrap();
            s.seen.push((path.clone(), range));
            if let Some(code) = s.statuses.pop_front() {
                (code, Vec::new(), 0, 0, None)
            } else if let Some(file) = s.files.get(&path).cloned() {
                let total = file.len() as u64;
                let start = if s.ignore_range {
                    0
                } else {
                    range.unwrap_or(0)
                };
                let drop_at = s.drops.pop_front();
                if start > total {
                    (416, Vec::new(), 0, total, None)
                } else {
                    let code = if start > 0 { 206 } else { 200 };
                    (code, file[start as usize..].to_vec(), start, total, drop_at)
                }
            } else {
                (404, b"not found".to_vec(), 0, 0, None)
            }
        };
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            404 => "Not Found",
            416 => "Range Not Satisfiable",
            500 => "Internal Server Error",
            _ => "Status",
        };
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if status == 206 {
            head += &format!("Content-Range: bytes {start}-{}/{total}\r\n", total - 1);
        }
        if status == 416 {
            head += &format!("Content-Range: bytes */{total}\r\n");
        }
        head += "Accept-Ranges: bytes\r\n\r\n";
        out.write_all(head.as_bytes())?;
        match drop_at {
            Some(at) if at >= start => {
                let n = ((at - start) as usize).min(body.len());
                out.write_all(&body[..n])?;
                out.flush()?;
                let _ = out.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            _ => out.write_all(&body)?,
        }
        out.flush()?;
    }
}
