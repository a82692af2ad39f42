//! Crash safety through the real binary: the editor is killed with SIGKILL while the user
//! paints (no destructor, no exit handler runs), and the next start offers the autosaved work
//! back and restores it. Needs `Xvfb` and `xdotool` (`.ci/run` installs them): the editor runs
//! in a virtual X display and gets real pointer and key events.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant, SystemTime};

use tessera::editor::project;

mod common;

/// Kills a child process when dropped (the test may fail half-way).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn xdotool(display: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .output()
        .expect("run xdotool");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts the editor on `image`; its stderr lines arrive on the receiver.
fn editor(display: &str, dir: &Path, image: &Path) -> (Killed, Receiver<String>) {
    let golden = common::golden().join("uncond_geometric");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["edit", image.to_str().unwrap(), "--model"])
        .arg(&golden)
        .env("DISPLAY", display)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("TESSERA_AUTOSAVE_SECS", "0.3")
        .env("TESSERA_MODELS", dir.join("models"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the editor");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[editor] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Killed(child), rx)
}

/// Waits for a stderr line containing `text`; returns it.
fn wait_line(rx: &Receiver<String>, text: &str, within: Duration) -> String {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with `{text}` from the editor within {within:?}: {e}"),
        }
    }
}

/// The editor's window, moved to the screen's corner at a known size.
fn window(display: &str) -> String {
    let ids = xdotool(
        display,
        &["search", "--sync", "--onlyvisible", "--name", "Tessera"],
    );
    let win = ids.lines().next().expect("the editor's window").to_string();
    xdotool(
        display,
        &[
            "windowsize",
            &win,
            "1600",
            "1000",
            "windowmove",
            &win,
            "0",
            "0",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    win
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[test]
fn killed_mid_edit_the_next_start_restores_the_autosaved_work() {
    assert!(
        have("Xvfb") && have("xdotool"),
        "this test needs Xvfb and xdotool (apt install xvfb xdotool; .ci/run installs them)"
    );
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("photo.png");
    let image = image::RgbaImage::from_fn(256, 256, |x, y| {
        image::Rgba([x as u8, y as u8, ((x + y) / 2) as u8, 255])
    });
    image.save(&image_path).unwrap();

    // Xvfb picks a free display itself and writes its number once it accepts connections: a
    // display number chosen here could be taken or left behind as a stale socket.
    let mut xvfb = Killed(
        Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1600x1000x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb"),
    );
    let out = xvfb.0.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).ok();
        tx.send(line).ok();
    });
    let number = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Xvfb did not report its display within 30 s");
    let number: u32 = number
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Xvfb reported no display number: {number:?}"));
    let display = format!(":{number}");
    let _xvfb = xvfb;

    // Paint strokes until several autosaves have happened, then SIGKILL at a moment that
    // depends on the clock (so runs differ), possibly in the middle of an autosave.
    let (mut app, rx) = editor(&display, dir.path(), &image_path);
    let win = window(&display);
    let recovery = dir.path().join("data/tessera").join(project::RECOVERY_FILE);
    let mut saves = 0;
    let mut last = None;
    let mut stroke = 0;
    while saves < 4 || stroke < 6 {
        assert!(
            stroke < 200,
            "the editor wrote no autosaves while being painted on"
        );
        let y = (420 + (stroke % 8) * 15).to_string();
        xdotool(
            &display,
            &["mousemove", "--window", &win, "500", &y, "mousedown", "1"],
        );
        for x in (520..900).step_by(40) {
            xdotool(
                &display,
                &["mousemove", "--window", &win, &x.to_string(), &y],
            );
        }
        xdotool(&display, &["mouseup", "1"]);
        stroke += 1;
        let now = modified(&recovery);
        if now.is_some() && now != last {
            saves += 1;
            last = now;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 400)));
    app.0.kill().expect("SIGKILL the editor");
    app.0.wait().unwrap();
    drop(rx);

    let kept = project::load_project(&recovery)
        .expect("the recovery project a killed editor leaves behind loads");
    assert_eq!(kept.image, image, "the recovered image");
    let masked = kept.mask.pixels().filter(|p| p.0[0] >= 128).count();
    assert!(masked > 0, "the recovered mask holds the painted strokes");
    let undo = kept.history.as_ref().map_or(0, |h| h.undo.len());
    assert!(undo > 0, "the recovered undo history holds the strokes");

    // The next start offers the work back; Enter restores it.
    let (_app, rx) = editor(&display, dir.path(), &image_path);
    wait_line(&rx, "found the unsaved work", Duration::from_secs(60));
    let win = window(&display);
    xdotool(&display, &["windowfocus", "--sync", &win, "key", "Return"]);
    let line = wait_line(&rx, "restored the unsaved work", Duration::from_secs(60));
    assert!(
        line.contains(&format!("256×256 image, {masked} masked pixels"))
            && line.contains(&format!("{undo} undo steps")),
        "restored something else than the recovery file holds ({masked} masked pixels, \
         {undo} undo steps): {line}"
    );
}

/// Ctrl-C (SIGINT) at 30 moments spread over a command-line inpaint that also writes its level
/// pictures: each run either finished before the signal (exit 0, every output complete) or was
/// cancelled (exit 130, `interrupted`, no output), or — a signal in the first milliseconds,
/// before `main` installed its handler — ended by SIGINT's default action with no file written;
/// in every case no temporary file is left and every level picture that exists is a whole PNG.
#[test]
fn ctrl_c_at_random_moments_leaves_no_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("in.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 7]))
        .save(&image)
        .unwrap();
    let golden = common::golden().join("uncond_geometric");
    let run = |i: u32, delay: Option<Duration>| {
        let out = dir.path().join(format!("run{i}"));
        std::fs::create_dir_all(&out).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "inpaint",
                "--mask-preset",
                "centre-window",
                "--seed",
                &i.to_string(),
            ])
            .arg("--model")
            .arg(&golden)
            .arg("--image")
            .arg(&image)
            .arg("--levels-dir")
            .arg(out.join("levels"))
            .arg("-o")
            .arg(out.join("result.png"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        if let Some(d) = delay {
            std::thread::sleep(d);
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
        }
        let result = child.wait_with_output().unwrap();
        (out, result, t.elapsed())
    };
    // How long a whole run takes, so the signals cover all of it.
    let (_, first, whole) = run(1000, None);
    assert!(first.status.success(), "{first:?}");
    let whole_ms = whole.as_millis() as u64;
    let (mut finished, mut interrupted, mut killed_early) = (0, 0, 0);
    for i in 0..30u32 {
        // Spread over 0..1.2 × the run, by a fixed pseudo-random sequence.
        let ms = (u64::from(i) * 7919 + 13) % (whole_ms * 6 / 5).max(1);
        let (out, result, _) = run(i, Some(Duration::from_millis(ms)));
        let stderr = String::from_utf8_lossy(&result.stderr);
        let files: Vec<PathBuf> = walk(&out);
        let temps: Vec<_> = files
            .iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(
            temps.is_empty(),
            "signal at {ms} ms left {temps:?}\n{stderr}"
        );
        for f in &files {
            image::open(f).unwrap_or_else(|e| panic!("signal at {ms} ms: {f:?} is partial: {e}"));
        }
        match result.status.code() {
            Some(0) => {
                finished += 1;
                assert!(out.join("result.png").exists(), "{stderr}");
            }
            Some(130) => {
                interrupted += 1;
                assert!(stderr.contains("interrupted"), "{stderr}");
                assert!(
                    !out.join("result.png").exists(),
                    "an interrupted run wrote its result"
                );
            }
            // Killed before the handler existed: that early, nothing may have been written.
            None if result.status.signal() == Some(2) => {
                killed_early += 1;
                assert!(
                    files.is_empty(),
                    "signal at {ms} ms killed a run that wrote {files:?}"
                );
            }
            other => panic!("signal at {ms} ms: exit {other:?}\n{stderr}"),
        }
    }
    eprintln!(
        "30 Ctrl-C over a {whole_ms} ms run: {interrupted} interrupted, {finished} finished, \
         {killed_early} killed before the handler"
    );
    assert!(interrupted > 0, "no signal arrived while a run was going");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
