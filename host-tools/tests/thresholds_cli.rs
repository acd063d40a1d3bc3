//! `qualm thresholds` and `qualm inspect` run as a user would run them.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use qualm_core::{FrameStats, Statistic};
use qualm_daemon::calibration::Calibration;
use qualm_daemon::ledger::LedgerEntry;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

fn entry(frame: usize, mean_entropy: f32, mean_max_softmax: f32) -> LedgerEntry {
    LedgerEntry {
        time: "2026-12-03T00:00:00Z".into(),
        frame: format!("f{frame}"),
        origin: String::new(),
        model_sha256: "ab".repeat(32),
        kept: false,
        reason: "observe_only".into(),
        temperature: Some(1.5),
        uncertain_level: Some(0.5),
        statistic: None,
        threshold: None,
        stats: Some(FrameStats { mean_entropy, mean_max_softmax, ..FrameStats::default() }),
        record: None,
        error: None,
    }
}

fn write_ledger(path: &Path, entries: &[LedgerEntry]) {
    let lines: Vec<String> = entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn threshold_is_the_finite_sample_order_statistic() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    // 99 frames with entropies 0.01 .. 0.99 in a shuffled order, one failed frame.
    let mut entries: Vec<LedgerEntry> =
        (1..=99).map(|i| entry(i, ((i * 37) % 100) as f32 / 100.0, 0.9)).collect();
    let mut failed = entry(100, 0.0, 0.0);
    (failed.stats, failed.error) = (None, Some("bad".into()));
    entries.push(failed);
    write_ledger(&ledger, &entries);

    let out = dir.path().join("calibration.toml");
    let output = qualm(&[
        "thresholds",
        "--ledger",
        ledger.to_str().unwrap(),
        "--keep-rate",
        "0.1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // n = 99, r = 0.1: rank ceil(100 * 0.9) = 90; the 90th smallest of 0.01..0.99 is 0.90.
    let calibration = Calibration::load(&out).unwrap();
    assert_eq!(calibration.gate.statistic, Statistic::MeanEntropy);
    assert!((calibration.gate.threshold - 0.90).abs() < 1e-6, "{calibration:?}");
    assert_eq!(calibration.model_sha256, "ab".repeat(32));
    assert_eq!(calibration.temperature, 1.5);
    assert_eq!(calibration.provenance.frames, 99);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("9 of 99"), "9 frames lie above 0.90: {stdout}");
}

#[test]
fn max_softmax_threshold_keeps_the_low_end() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let entries: Vec<LedgerEntry> =
        (1..=19).map(|i| entry(i, 0.0, 0.5 + i as f32 / 40.0)).collect();
    write_ledger(&ledger, &entries);
    let out = dir.path().join("c.toml");
    let ledger = ledger.to_str().unwrap();
    let output = qualm(&[
        "thresholds",
        "--ledger",
        ledger,
        "--keep-rate",
        "0.25",
        "--statistic",
        "mean_max_softmax",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Uncertainty is -p; rank ceil(20 * 0.75) = 15 of the ascending -p, i.e. the 5th smallest p:
    // 0.5 + 5/40 = 0.625. Frames with p below it (4 of 19) are kept.
    let calibration = Calibration::load(&out).unwrap();
    assert!((calibration.gate.threshold - 0.625).abs() < 1e-6, "{calibration:?}");
}

#[test]
fn too_few_frames_are_refused_with_the_count_needed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    write_ledger(&ledger, &(0..10).map(|i| entry(i, 0.1, 0.9)).collect::<Vec<_>>());
    let out = dir.path().join("c.toml");
    let output = qualm(&[
        "thresholds",
        "--ledger",
        ledger.to_str().unwrap(),
        "--keep-rate",
        "0.05",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("needs at least 19 scored frames"), "{message}");
    assert!(message.contains("found 10"), "{message}");
    assert!(!out.exists(), "no calibration written");
}

#[test]
fn a_ledger_line_that_is_not_json_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    write_ledger(&ledger, &[entry(0, 0.1, 0.9)]);
    let mut text = fs::read_to_string(&ledger).unwrap();
    text.push_str("{ truncated\n");
    fs::write(&ledger, text).unwrap();
    let output = qualm(&[
        "thresholds",
        "--ledger",
        ledger.to_str().unwrap(),
        "--keep-rate",
        "0.5",
        "--out",
        "x.toml",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("ledger.jsonl line 2: expected a ledger entry"), "{message}");
}

#[test]
fn inspect_reports_the_real_model() {
    let card = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/selfie/selfie_int8.toml");
    let output = qualm(&["inspect", card.to_str().unwrap(), "--runs", "1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[1, 3, 256, 256] Nchw Rgb"), "{stdout}");
    assert!(stdout.contains("[1, 1, 256, 256] Nchw SigmoidLogit"), "{stdout}");
    assert!(stdout.contains("classes    background, person"), "{stdout}");
    assert!(stdout.contains("inference  first"), "{stdout}");
}
