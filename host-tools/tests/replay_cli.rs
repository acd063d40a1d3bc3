//! `qualm replay` on a hand-built ledger with known times and values.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use qualm_core::{FrameStats, Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::ledger::LedgerEntry;
use serde_json::Value;

mod common;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

fn entry(frame: &str, time: &str, mean_entropy: f32, mean_max_softmax: f32) -> LedgerEntry {
    let stats = FrameStats { mean_entropy, mean_max_softmax, ..FrameStats::default() };
    common::ledger_entry(frame.into(), time, stats)
}

/// Six scored frames over two days and one failed frame; the gate (mean_entropy above 0.5)
/// keeps f1 (0.7), f4 (0.9) and f6 (0.6), not f2 (exactly 0.5: the gate is strict).
fn write_case(dir: &Path) -> (String, String) {
    let mut failed = entry("bad", "2026-12-03T11:10:00Z", 0.0, 0.0);
    (failed.stats, failed.error, failed.reason) =
        (None, Some("cannot decode".into()), "error".into());
    let entries = [
        entry("f1", "2026-12-03T10:05:00Z", 0.7, 0.9),
        entry("f2", "2026-12-03T10:30:00Z", 0.5, 0.7),
        entry("f3", "2026-12-03T10:59:59Z", 0.2, 0.95),
        entry("f4", "2026-12-03T11:00:00Z", 0.9, 0.8),
        failed,
        entry("f5", "2026-12-04T09:00:00.250Z", 0.1, 0.5),
        entry("f6", "2026-12-04T11:00:00Z", 0.6, 0.85),
    ];
    let ledger = dir.join("ledger.jsonl");
    common::write_ledger(&ledger, &entries);

    let calibration = Calibration {
        model_sha256: "ab".repeat(32),
        temperature: 1.5,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::MeanEntropy, threshold: 0.5 },
        provenance: Provenance::default(),
    };
    let path = dir.join("calibration.toml");
    calibration.save(&path).unwrap();
    (ledger.to_str().unwrap().into(), path.to_str().unwrap().into())
}

fn replay_json(extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, calibration) = write_case(dir.path());
    let mut args = vec!["replay", "--ledger", &ledger, "--calibration", &calibration, "--json"];
    args.extend_from_slice(extra);
    let output = qualm(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn replay_counts_kept_frames_per_hour_and_day() {
    let json = replay_json(&[]);
    assert_eq!(json["frames"], 6);
    assert_eq!(json["kept"], 3);
    assert_eq!(json["keep_rate"], 0.5);
    assert_eq!(json["error_frames"], 1);
    assert_eq!(json["mismatched_settings"], 0);
    assert_eq!(json["kept_frames"], serde_json::json!(["f1", "f4", "f6"]));

    // Hours: 10:00 holds f1, f2, f3 (one kept); 11:00 f4; next day 09:00 f5, 11:00 f6.
    let hours: Vec<(String, u64, u64)> = json["per_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let hour = h["hour"].as_str().unwrap().to_string();
            (hour, h["frames"].as_u64().unwrap(), h["kept"].as_u64().unwrap())
        })
        .collect();
    let expected = [
        ("2026-12-03T10:00:00Z", 3, 1),
        ("2026-12-03T11:00:00Z", 1, 1),
        ("2026-12-04T09:00:00Z", 1, 0),
        ("2026-12-04T11:00:00Z", 1, 1),
    ];
    let expected: Vec<(String, u64, u64)> =
        expected.iter().map(|&(h, f, k)| (h.to_string(), f, k)).collect();
    assert_eq!(hours, expected);
    let days = json["per_day"].as_array().unwrap();
    assert_eq!((days[0]["frames"].as_u64(), days[0]["kept"].as_u64()), (Some(4), Some(2)));
    assert_eq!((days[1]["frames"].as_u64(), days[1]["kept"].as_u64()), (Some(2), Some(1)));
    assert_eq!(days[1]["keep_rate"], 0.5);

    // From 10:05:00 on day one to 11:00:00 on day two: 89,700 s; 3 records in that time.
    assert_eq!(json["span_seconds"], 89_700);
    let per_day = json["records_per_day"].as_f64().unwrap();
    assert!((per_day - 3.0 * 86_400.0 / 89_700.0).abs() < 1e-12, "{per_day}");
}

#[test]
fn threshold_and_statistic_can_be_overridden() {
    let json = replay_json(&["--threshold", "0.65"]);
    assert_eq!(json["kept_frames"], serde_json::json!(["f1", "f4"]));
    assert_eq!(json["threshold"].as_f64(), Some(f64::from(0.65f32)));

    // Max-softmax keeps below the threshold, strictly: f2 (0.7) and f5 (0.5), not f4 (0.8).
    let json = replay_json(&["--statistic", "mean_max_softmax", "--threshold", "0.8"]);
    assert_eq!(json["kept_frames"], serde_json::json!(["f2", "f5"]));
    assert_eq!(json["statistic"], "mean_max_softmax");
}

#[test]
fn ledger_of_another_model_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, calibration) = write_case(dir.path());
    let mut other = entry("x", "2026-12-05T00:00:00Z", 0.3, 0.9);
    other.model_sha256 = "cd".repeat(32);
    let mut text = fs::read_to_string(&ledger).unwrap();
    text.push_str(&serde_json::to_string(&other).unwrap());
    fs::write(&ledger, text).unwrap();

    let output = qualm(&["replay", "--ledger", &ledger, "--calibration", &calibration]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("line 8") && stderr.contains(&"cd".repeat(32)), "{stderr}");
}

#[test]
fn text_output_names_the_rule_and_the_kept_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, calibration) = write_case(dir.path());
    let output = qualm(&["replay", "--ledger", &ledger, "--calibration", &calibration]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("keep a frame when mean_entropy is above 0.5"), "{stdout}");
    assert!(stdout.contains("3 of 6 scored frames kept"), "{stdout}");
    assert!(stdout.contains("kept frames: f1 f4 f6"), "{stdout}");
}
