//! `qualm thresholds` and `qualm inspect` run as a user would run them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qualm_core::{FrameStats, Statistic};
use qualm_daemon::calibration::Calibration;
use qualm_daemon::ledger::LedgerEntry;
use serde_json::Value;

mod common;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

fn entry(frame: usize, mean_entropy: f32, mean_max_softmax: f32) -> LedgerEntry {
    let stats = FrameStats { mean_entropy, mean_max_softmax, ..FrameStats::default() };
    common::ledger_entry(format!("f{frame}"), "2026-12-03T00:00:00Z", stats)
}

fn write_ledger(path: &Path, entries: &[LedgerEntry]) {
    common::write_ledger(path, entries);
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

/// Labeled frames whose mean entropy and failure are known in closed form: every pixel of frame
/// `i` has logits `[a_i, 0, 0]` with `a_i = 0.2 + 0.15 i`, so the prediction is class 0 and the
/// frame's normalized entropy is that of one vector; a frame labeled all 1 has mIoU 0 (failed),
/// one labeled all 0 has mIoU 1. Returns the folders and the `(entropy, failed)` of each frame.
fn closed_form_frames(dir: &Path, frames: usize) -> (String, String, Vec<(f64, bool)>) {
    let (logits, labels) = (dir.join("logits"), dir.join("labels"));
    fs::create_dir_all(&logits).unwrap();
    fs::create_dir_all(&labels).unwrap();
    let mut truth = Vec::new();
    for i in 0..frames {
        let a = 0.2 + 0.15 * i as f64;
        let mut values = vec![0.0f32; 3 * 16];
        values[..16].fill(a as f32);
        common::write_npy(&logits.join(format!("f{i:02}.npy")), &[3, 4, 4], &values);
        let failed = i % 3 != 0;
        let label = vec![u8::from(failed); 16];
        image::GrayImage::from_raw(4, 4, label)
            .unwrap()
            .save(labels.join(format!("f{i:02}.png")))
            .unwrap();

        // H / ln 3 of softmax([a, 0, 0]) in f64.
        let a = f64::from(a as f32);
        let sum = a.exp() + 2.0;
        let p = [a.exp() / sum, 1.0 / sum, 1.0 / sum];
        let entropy = -p.iter().map(|q| q * q.ln()).sum::<f64>() / 3f64.ln();
        truth.push((entropy, failed));
    }
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    (path(logits), path(labels), truth)
}

/// Runs `qualm thresholds --recall` on the closed-form frames in `dir`, with `extra` arguments;
/// returns the output and the calibration path.
fn recall_run(dir: &Path, recall: &str, extra: &[&str]) -> (Output, PathBuf) {
    let (logits, labels, _) = closed_form_frames(dir, 30);
    let out = dir.join("c.toml");
    let mut args = vec!["thresholds", "--recall", recall, "--logits", &logits, "--labels", &labels];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    (qualm(&args), out)
}

#[test]
fn recall_threshold_is_the_finite_sample_order_statistic_of_failed_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, truth) = closed_form_frames(dir.path(), 30);
    let sha = "cd".repeat(32);
    let (output, out) = recall_run(dir.path(), "0.8", &["--model-sha256", &sha, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();

    // 20 failed frames, recall 0.8: k = floor(21 * 0.2) = 4, the 4th smallest failed entropy.
    let mut failed: Vec<f64> = truth.iter().filter(|t| t.1).map(|t| t.0).collect();
    failed.sort_by(f64::total_cmp);
    assert_eq!(failed.len(), 20);
    let expected = failed[3];
    let calibration = Calibration::load(&out).unwrap();
    assert_eq!(calibration.gate.statistic, Statistic::MeanEntropy);
    assert!((f64::from(calibration.gate.threshold) - expected).abs() < 1e-5, "{calibration:?}");
    assert_eq!(calibration.model_sha256, sha);

    // Kept: failed frames at or above the 4th smallest (17 of 20), and passed frames above it.
    let passed_kept = truth.iter().filter(|t| !t.1 && t.0 >= expected - 1e-7).count();
    assert_eq!(json["kept_failed"], 17, "{json}");
    assert_eq!(json["kept_passed"].as_u64(), Some(passed_kept as u64), "{json}");
    assert_eq!(json["failed_frames"], 20);
    assert_eq!(json["method"], "recall");
    assert!(json["statement"].as_str().unwrap().contains("P(kept) >= 0.8"), "{json}");

    // The gate keeps exactly the frames the summary counts.
    let kept = truth
        .iter()
        .filter(|t| {
            let stats = FrameStats { mean_entropy: t.0 as f32, ..FrameStats::default() };
            calibration.gate.decide(&stats).is_keep()
        })
        .count();
    assert_eq!(kept, 17 + passed_kept);
}

#[test]
fn recall_with_too_few_failed_frames_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sha = "cd".repeat(32);
    let (output, out) = recall_run(dir.path(), "0.99", &["--model-sha256", &sha]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("needs at least 99 failed frames"), "{message}");
    assert!(message.contains("found 20 of 30 frames"), "{message}");
    assert!(!out.exists(), "no calibration written");

    // Logits alone do not say which model made them.
    let (output, _) = recall_run(dir.path(), "0.5", &[]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("expected --model-sha256 with --logits"), "{message}");
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
