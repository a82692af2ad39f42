//! Downloads and installs against a loopback server: resume after a drop or a restart,
//! identical bytes; wrong sizes, error statuses, cancel, quota; the golden release downloaded,
//! verified, unpacked and imported; damaged zips; imports from disk.

mod common {
    pub mod release;
    pub mod server;
}

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::release::{release_zip, write_catalogue};
use common::server::Server;
use tessera_engine::Error;
use tessera_engine::loader::ModelSource;
use tessera_store::download::part_path;
use tessera_store::{
    Catalogue, DownloadEvent, DownloadOptions, InstallEvent, InstallOptions, ModelsFolder, Release,
    download, get, import_files,
};

/// Bytes that differ everywhere (so a misplaced resume cannot go unnoticed).
fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn quick() -> DownloadOptions {
    DownloadOptions {
        backoff: Duration::from_millis(10),
        read_timeout: Duration::from_secs(5),
        ..DownloadOptions::default()
    }
}

fn serve(name: &str, bytes: &[u8]) -> Server {
    Server::start(HashMap::from([(format!("/{name}"), bytes.to_vec())]))
}

#[test]
fn a_dropped_connection_resumes_with_identical_bytes() {
    let data = payload(3_000_000, 1);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    // Drops at bytes a seeded generator picks, twice in one download.
    let cuts: Vec<u64> = payload(8, 7)
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64 % data.len() as u64)
        .collect();
    let (first, second) = (
        cuts[0].min(cuts[1]),
        cuts[0].max(cuts[1]).max(cuts[0].min(cuts[1]) + 1),
    );
    server.with(|b| b.drops.extend([first, second]));
    let dest = dir.path().join("f.zip");
    let mut retries = 0;
    let d = download(&server.url("/f.zip"), &dest, None, &quick(), &mut |e| {
        if matches!(e, DownloadEvent::Retrying { .. }) {
            retries += 1;
        }
    })
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(d.bytes, data.len() as u64);
    assert_eq!(retries, 2);
    assert!(!part_path(&dest).exists());
    let ranges: Vec<Option<u64>> = server.with(|b| b.seen.iter().map(|s| s.1).collect());
    assert_eq!(ranges, [None, Some(first), Some(second)]);
}

#[test]
fn a_download_cut_short_resumes_on_the_next_run() {
    let data = payload(1_000_000, 2);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.zip");
    let give_up = DownloadOptions {
        retries: 0,
        ..quick()
    };
    server.with(|b| b.drops.push_back(400_123));
    let e = download(&server.url("/f.zip"), &dest, None, &give_up, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("400123 bytes are kept"), "{e}");
    assert!(!dest.exists());
    assert_eq!(std::fs::metadata(part_path(&dest)).unwrap().len(), 400_123);
    let d = download(&server.url("/f.zip"), &dest, None, &quick(), &mut |_| {}).unwrap();
    assert_eq!(d.resumed_from, 400_123);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[test]
fn a_server_that_ignores_ranges_starts_over_cleanly() {
    let data = payload(500_000, 3);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.zip");
    std::fs::write(part_path(&dest), &data[..1000]).unwrap();
    server.with(|b| b.ignore_range = true);
    download(&server.url("/f.zip"), &dest, None, &quick(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[test]
fn a_wrong_size_is_refused_and_nothing_kept() {
    let data = payload(200_000, 4);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.zip");
    let e = download(
        &server.url("/f.zip"),
        &dest,
        Some(data.len() as u64 + 1),
        &quick(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("200000 bytes, but the catalogue says 200001"),
        "{e}"
    );
    assert!(!dest.exists() && !part_path(&dest).exists());
}

#[test]
fn not_found_fails_at_once_and_server_errors_are_retried() {
    let data = payload(10_000, 5);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    let e = download(
        &server.url("/missing.zip"),
        &dir.path().join("m.zip"),
        None,
        &quick(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("404"), "{e}");
    assert_eq!(server.with(|b| b.seen.len()), 1, "a 404 is not retried");

    server.with(|b| {
        b.seen.clear();
        b.statuses.extend([500, 503]);
    });
    let dest = dir.path().join("f.zip");
    let mut waits = Vec::new();
    download(&server.url("/f.zip"), &dest, None, &quick(), &mut |e| {
        if let DownloadEvent::Retrying { wait, why } = e {
            assert!(why.contains("50"), "{why}");
            waits.push(*wait);
        }
    })
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        waits,
        [Duration::from_millis(10), Duration::from_millis(20)]
    );

    // A server that keeps failing: the error says so and how often.
    server.with(|b| b.statuses.extend([500; 10]));
    let few = DownloadOptions {
        retries: 2,
        ..quick()
    };
    let e = download(
        &server.url("/f.zip"),
        &dir.path().join("g.zip"),
        None,
        &few,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("failed 3 times in a row") && e.contains("500"),
        "{e}"
    );
}

#[test]
fn cancel_keeps_the_partial_file_for_a_resume() {
    let data = payload(4_000_000, 6);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.zip");
    // Slow the first body down: it is cut after 1 MB and the cancel comes with the progress.
    let opts = quick();
    let cancel = opts.cancel.clone();
    let r = download(&server.url("/f.zip"), &dest, None, &opts, &mut |e| {
        if let DownloadEvent::Progress { done, .. } = e
            && *done > 0
        {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(!dest.exists());
    let kept = std::fs::metadata(part_path(&dest)).unwrap().len();
    assert!(kept > 0 && kept < data.len() as u64, "{kept}");
    let d = download(&server.url("/f.zip"), &dest, None, &quick(), &mut |_| {}).unwrap();
    assert_eq!(d.resumed_from, kept);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[test]
fn a_quota_too_small_is_refused_before_anything_is_written() {
    let data = payload(300_000, 8);
    let server = serve("f.zip", &data);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.zip");
    let opts = DownloadOptions {
        space_limit: Some(1_000_000),
        ..quick()
    };
    let e = download(&server.url("/f.zip"), &dest, None, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not enough disk space") && e.contains("1.0 MB free"),
        "{e}"
    );
    assert_eq!(
        std::fs::metadata(part_path(&dest))
            .map(|m| m.len())
            .unwrap_or(0),
        0
    );
}

/// The golden class-conditional case served as release `golden_cin`.
fn golden_release(server: &Server) -> (Catalogue, Release) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalogue.json");
    write_catalogue(
        &file,
        "class_custom",
        "golden_cin",
        &server.url("/golden_cin.zip"),
    );
    let mut cat = Catalogue::builtin();
    cat.extend_from(&file).unwrap();
    let release = cat.require("golden_cin").unwrap().clone();
    (cat, release)
}

/// Nothing left in the downloads folder (no part, zip or unpacked files).
fn assert_no_leftovers(root: &Path) {
    let left = leftovers(root);
    assert!(left.is_empty(), "{left:?}");
}

fn leftovers(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join(".downloads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_golden_release_downloads_and_installs_as_a_tessera_model() {
    let zip = release_zip("class_custom", "golden_cin");
    let server = serve("golden_cin.zip", &zip);
    let (_, release) = golden_release(&server);
    let root = tempfile::tempdir().unwrap();
    let folder = ModelsFolder::at(root.path());
    server.with(|b| b.drops.push_back(zip.len() as u64 / 3));
    let mut events = Vec::new();
    let opts = InstallOptions {
        download: quick(),
        ..InstallOptions::default()
    };
    let m = get(&folder, &release, &opts, &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(m.name, "golden_cin");
    assert_eq!(m.card.levels(), 2);
    assert_eq!(m.card.dtype, "f16");
    assert_eq!(m.card.name, "Golden test release");
    assert!(
        m.card.provenance.contains(&release.url),
        "{}",
        m.card.provenance
    );
    let origin = m.origin.clone().unwrap();
    assert_eq!(origin.url.as_deref(), Some(release.url.as_str()));
    assert_eq!(origin.zip_bytes, Some(zip.len() as u64));
    let sha = origin.sha256.clone().unwrap();
    assert_eq!(sha.len(), 64);
    assert!(events.iter().any(|e| matches!(
        e,
        InstallEvent::Unpacking {
            index: 2,
            of: 2,
            ..
        }
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, InstallEvent::Download(DownloadEvent::Retrying { .. })))
    );
    // The model runs from the models folder; downloads and unpacked files are gone.
    let source = ModelSource::open(folder.find("golden_cin").unwrap()).unwrap();
    assert_eq!(source.card().levels(), 2);
    assert_no_leftovers(root.path());
    let rec = folder.records();
    assert_eq!(rec[&release.url].sha256, sha);
    assert_eq!(folder.installed().unwrap().len(), 1);

    // Installed twice only when asked; removal frees the space.
    let e = get(&folder, &release, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("already installed"), "{e}");
    assert!(folder.remove("golden_cin").unwrap() > 0);
    assert!(folder.find("golden_cin").is_none());
    assert!(folder.remove("golden_cin").is_err());

    // A second download is checked against the SHA-256 recorded at the first.
    let mut other = zip.clone();
    let k = other.len() / 2;
    other[k] ^= 0xff;
    server.with(|b| {
        b.files.insert("/golden_cin.zip".into(), other);
    });
    let e = get(&folder, &release, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("recorded at the first download") && e.contains("deleted"),
        "{e}"
    );
    assert!(folder.find("golden_cin").is_none());
    assert_no_leftovers(root.path());
}

#[test]
fn a_damaged_zip_is_refused_deleted_and_leaves_no_model() {
    let mut zip = release_zip("class_custom", "golden_cin");
    let k = zip.len() / 2;
    zip[k] ^= 0x5a;
    let server = serve("golden_cin.zip", &zip);
    let (_, release) = golden_release(&server);
    let root = tempfile::tempdir().unwrap();
    let folder = ModelsFolder::at(root.path());
    let opts = InstallOptions {
        download: quick(),
        keep_zip: true,
        ..InstallOptions::default()
    };
    let e = get(&folder, &release, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("damaged zip"), "{e}");
    assert!(folder.find("golden_cin").is_none());
    assert!(folder.installed().unwrap().is_empty());
    assert_no_leftovers(root.path());

    // A truncated zip (no central directory) the same.
    let server = serve("golden_cin.zip", &zip[..zip.len() - 100]);
    let (_, release) = golden_release(&server);
    let e = get(&folder, &release, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("damaged") && e.len() < 600, "{e}");
    assert!(folder.find("golden_cin").is_none());
    assert_no_leftovers(root.path());
}

#[test]
fn zips_and_checkpoints_on_disk_import_into_the_models_folder() {
    let zip = release_zip("class_custom", "golden_cin");
    let server = serve("golden_cin.zip", &zip);
    let (cat, _) = golden_release(&server);
    let files = tempfile::tempdir().unwrap();
    // Recognised by its entries even under another file name.
    let path = files.path().join("download (1).zip");
    std::fs::write(&path, &zip).unwrap();
    let root = tempfile::tempdir().unwrap();
    let folder = ModelsFolder::at(root.path());
    let opts = InstallOptions::default();
    let m = import_files(
        &folder,
        &cat,
        std::slice::from_ref(&path),
        None,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.name, "golden_cin");
    assert!(m.origin.unwrap().url.is_none());
    assert!(path.is_file(), "the user's zip is left alone");
    assert_no_leftovers(root.path());

    // Stage checkpoints from an unpacked release: named by their folder, or by the caller.
    let ckpts = common::release::golden("class_custom").join("models");
    let list = vec![ckpts.join("scale2.ckpt"), ckpts.join("scale1.ckpt")];
    let e = import_files(&folder, &cat, &list, None, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("name the release"), "{e}");
    let replace = InstallOptions {
        replace: true,
        ..InstallOptions::default()
    };
    let m = import_files(
        &folder,
        &cat,
        &list,
        Some("golden_cin"),
        &replace,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.card.levels(), 2);
    // One checkpoint picked: the others are found beside it; alone, one is missing.
    let m = import_files(
        &folder,
        &cat,
        &list[..1],
        Some("golden_cin"),
        &replace,
        &mut |_| {},
    );
    assert_eq!(m.unwrap().card.levels(), 2);
    let alone = files.path().join("scale2.ckpt");
    std::fs::copy(&list[0], &alone).unwrap();
    let e = import_files(
        &folder,
        &cat,
        &[alone],
        Some("golden_cin"),
        &replace,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("scale1.ckpt is missing"), "{e}");
}

#[test]
fn cancelling_an_install_leaves_no_model_and_no_unpacked_files() {
    let zip = release_zip("class_custom", "golden_cin");
    let server = serve("golden_cin.zip", &zip);
    let (_, release) = golden_release(&server);
    let root = tempfile::tempdir().unwrap();
    let folder = ModelsFolder::at(root.path());
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = InstallOptions {
        download: DownloadOptions {
            cancel: cancel.clone(),
            ..quick()
        },
        ..InstallOptions::default()
    };
    let r = get(&folder, &release, &opts, &mut |e| {
        if matches!(e, InstallEvent::Unpacking { index: 2, .. }) {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(folder.find("golden_cin").is_none());
    // The complete zip stays for the next try; nothing unpacked remains.
    assert_eq!(leftovers(root.path()), ["golden_cin.zip"]);
    cancel.store(false, Ordering::Relaxed);
    get(&folder, &release, &opts, &mut |_| {}).unwrap();
    assert_eq!(
        server.with(|b| b.seen.len()),
        1,
        "the kept zip is not downloaded again"
    );
}
