//! qualmd as a service on the committed real frames, looped: SIGTERM drains with a complete
//! ledger, SIGHUP reloads a good calibration and refuses a bad one, the metrics endpoint agrees
//! with the ledger, and systemd hears READY, WATCHDOG and STOPPING on its notify socket.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use qualm_core::{Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::card::{ModelCard, sha256_file};
use qualm_daemon::ledger::{LedgerEntry, read_ledger};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn card() -> PathBuf {
    repo().join("models/selfie/selfie_int8.toml")
}

/// A small folder of real frames: the loop comes round quickly.
fn frames(dir: &Path) -> PathBuf {
    let folder = dir.join("frames");
    fs::create_dir(&folder).unwrap();
    for name in ["vtest_0000.jpg", "vtest_0020.jpg", "vtest_0040.jpg"] {
        fs::copy(repo().join("models/frames/vtest").join(name), folder.join(name)).unwrap();
    }
    folder
}

fn write_calibration(path: &Path, sha256: &str, threshold: f32) {
    let calibration = Calibration {
        model_sha256: sha256.to_owned(),
        temperature: 1.0,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::MeanEntropy, threshold },
        provenance: Provenance::default(),
    };
    calibration.save(path).unwrap();
}

fn model_sha256() -> String {
    sha256_file(&ModelCard::load(&card()).unwrap().model_path()).unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args(["-s", name, &child.id().to_string()]).status();
    assert!(status.unwrap().success(), "kill -s {name}");
}

/// The ledger's entries once it holds at least `count` (waits at most 120 s).
fn wait_for_lines(ledger: &Path, count: usize) -> Vec<LedgerEntry> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A line being written may be incomplete: only complete lines are parsed.
        let text = fs::read_to_string(ledger).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        let entries: Vec<LedgerEntry> =
            complete.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        if entries.len() >= count {
            return entries;
        }
        assert!(Instant::now() < deadline, "ledger has {} of {count} lines", entries.len());
        thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(dir: &Path, calibration: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--model")
        .arg(card())
        .arg("--calibration")
        .arg(calibration)
        .arg("--frames")
        .arg(frames(dir))
        .arg("--loop")
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--ledger")
        .arg(dir.join("ledger.jsonl"))
        .args(extra)
        .env("QUALMD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and checks a clean exit; returns the output.
fn terminate(child: Child) -> Output {
    signal(&child, "TERM");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "clean exit after SIGTERM: {stderr}");
    output
}

/// Every line parses, and the summary line counts exactly the ledger's frames.
fn check_complete(output: &Output, ledger: &Path) -> Vec<LedgerEntry> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("stopped by signal"), "{stdout}");
    let entries = read_ledger(ledger).unwrap();
    assert!(fs::read_to_string(ledger).unwrap().ends_with('\n'), "no half-written line");
    // No budget or quota here, so no `evicted` lines: every ledger line is a frame.
    let kept = entries.iter().filter(|e| e.kept).count();
    let expected = format!(
        "qualmd: {} frames, {kept} kept, 0 evicted, 0 not stored, 0 failed, 0 dropped",
        entries.len()
    );
    assert!(stdout.starts_with(&expected), "expected {expected:?}, found {stdout:?}");
    entries
}

#[test]
fn sighup_reloads_a_good_calibration_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let (sha256, calibration) = (model_sha256(), dir.path().join("calibration.toml"));
    // Threshold 0 keeps every frame with any entropy; 1 keeps none (entropy is at most 1).
    write_calibration(&calibration, &sha256, 0.0);
    let child = spawn(dir.path(), &calibration, &[]);
    let ledger = dir.path().join("ledger.jsonl");
    let before = wait_for_lines(&ledger, 2).len();

    write_calibration(&calibration, &sha256, 1.0);
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reloaded_at = None;
    while reloaded_at.is_none() {
        let entries = wait_for_lines(&ledger, before);
        reloaded_at = entries.iter().position(|e| e.threshold == Some(1.0));
        assert!(Instant::now() < deadline, "the new threshold never showed up");
        thread::sleep(Duration::from_millis(20));
    }
    let reloaded_at = reloaded_at.unwrap();

    // A file for another model: refused, the threshold 1 calibration stays.
    write_calibration(&calibration, &"0".repeat(64), 0.0);
    signal(&child, "HUP");
    let refused_after = wait_for_lines(&ledger, 1).len();
    let entries = wait_for_lines(&ledger, refused_after + 4);
    let output = terminate(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("keeping the current calibration"), "{stderr}");
    assert!(stderr.contains(&*calibration.to_string_lossy()), "{stderr}");

    let entries_after = check_complete(&output, &ledger);
    assert!(entries_after.len() >= entries.len());
    for (index, entry) in entries_after.iter().enumerate() {
        let threshold = if index < reloaded_at { 0.0 } else { 1.0 };
        assert_eq!(entry.threshold, Some(threshold), "line {index}");
        let entropy = entry.stats.unwrap().mean_entropy;
        assert_eq!(entry.kept, entropy > threshold, "line {index}");
    }
    // Frames were handled both before the first reload and after the refused one.
    assert!(reloaded_at >= 1 && entries_after.len() > refused_after);
}

/// One scrape of the metrics endpoint.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

#[test]
fn metrics_agree_with_the_ledger_and_systemd_hears_the_service_life() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration.toml");
    // The median-ish entropy of these frames is unknown here; 0.02 keeps some and not others
    // on most street frames, and the check below holds either way.
    write_calibration(&calibration, &model_sha256(), 0.02);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");

    // A notify socket standing in for systemd, with a 0.4 s watchdog.
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qualmd"));
    child
        .arg("--model")
        .arg(card())
        .arg("--calibration")
        .arg(&calibration)
        .arg("--frames")
        .arg(frames(dir.path()))
        .args(["--loop", "--metrics", &address, "--spool"])
        .arg(dir.path().join("spool"))
        .arg("--ledger")
        .arg(dir.path().join("ledger.jsonl"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = child.spawn().unwrap();

    let mut buffer = [0u8; 256];
    let received = notify.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..received], b"READY=1\n");

    // Scrape once at least four frames were handled; the counters cover a whole number of
    // frames, which must be the first lines of the ledger.
    let ledger = dir.path().join("ledger.jsonl");
    wait_for_lines(&ledger, 4);
    let text = scrape(port);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let frames = metric(&text, "qualmd_frames_total");
    let counted = wait_for_lines(&ledger, frames as usize);
    let counted = &counted[..frames as usize];
    assert!(frames >= 4);
    let kept = counted.iter().filter(|e| e.kept).count() as u64;
    assert_eq!(metric(&text, "qualmd_frames_kept_total"), kept);
    assert_eq!(metric(&text, "qualmd_frames_failed_total"), 0);
    assert_eq!(metric(&text, "qualmd_frames_dropped_total"), 0, "a folder never drops");
    assert_eq!(metric(&text, "qualmd_mean_entropy_count"), frames);
    assert_eq!(metric(&text, "qualmd_inference_seconds_count"), frames);
    if kept > 0 {
        assert!(metric(&text, "qualmd_spool_bytes") > 0);
    }

    // The watchdog is pinged while frames flow (every 0.2 s), then STOPPING on SIGTERM.
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !messages.iter().any(|m| m == "WATCHDOG=1\n") && Instant::now() < deadline {
        let received = notify.recv(&mut buffer).unwrap();
        messages.push(String::from_utf8_lossy(&buffer[..received]).into_owned());
    }
    assert!(messages.iter().any(|m| m == "WATCHDOG=1\n"), "{messages:?}");

    let output = terminate(child);
    let mut last = String::new();
    while let Ok(received) = notify.recv(&mut buffer) {
        last = String::from_utf8_lossy(&buffer[..received]).into_owned();
        if last == "STOPPING=1\n" {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1\n");
    check_complete(&output, &ledger);
}
