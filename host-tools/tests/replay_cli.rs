//! `qualm replay` on a hand-built ledger with known times and values.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use qualm_core::{FrameStats, Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::card::{ModelCard, sha256_file};
use qualm_daemon::ledger::LedgerEntry;
use serde_json::Value;

mod common;

/// Mean-entropy threshold of the end-to-end case: about half the 40 frames pass it.
const THRESHOLD: f32 = 0.025;

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

/// Budget windows of 10 s with one record each, times from the ledger: each window keeps its
/// most uncertain frame, not its first, and an earlier frame wins a tie.
#[test]
fn a_budget_of_one_keeps_the_most_uncertain_frame_of_each_window() {
    let dir = tempfile::tempdir().unwrap();
    let (_, calibration) = write_case(dir.path());
    let frames = [
        ("a", "2026-12-03T10:00:00Z", 0.3),
        ("b", "2026-12-03T10:00:03Z", 0.8),
        ("c", "2026-12-03T10:00:06Z", 0.5),
        ("d", "2026-12-03T10:00:10Z", 0.9),
        ("e", "2026-12-03T10:00:12Z", 0.2),
        ("f", "2026-12-03T10:00:25Z", 0.4),
        ("g", "2026-12-03T10:00:27Z", 0.6),
        ("h", "2026-12-03T10:00:29.999Z", 0.6),
    ];
    let entries: Vec<LedgerEntry> =
        frames.iter().map(|&(frame, time, value)| entry(frame, time, value, 0.9)).collect();
    let ledger = dir.path().join("budget.jsonl");
    common::write_ledger(&ledger, &entries);

    let args = [
        "replay",
        "--ledger",
        ledger.to_str().unwrap(),
        "--calibration",
        &calibration,
        "--threshold",
        "0.1",
        "--budget-records",
        "1",
        "--budget-window",
        "10s",
        "--json",
    ];
    let output = qualm(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Windows [0, 10), [10, 20), [20, 30) s from a: b beats a and c, d beats e, g ties h.
    assert_eq!(json["kept_frames"], serde_json::json!(["b", "d", "g"]));
    let verdicts = &json["verdicts"];
    assert_eq!((verdicts["kept"].as_u64(), verdicts["evicted"].as_u64()), (Some(3), Some(2)));
    assert_eq!(
        (verdicts["budget"].as_u64(), verdicts["below_threshold"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(json["policy"]["budget_window_ms"], 10_000);
    assert_eq!(json["duplicates_checked"], false);
}

/// The target folder this test's `qualm` was built in, with qualmd built there too: cargo
/// gives tests only their own package's binaries.
fn qualmd_binary() -> std::path::PathBuf {
    let qualm = Path::new(env!("CARGO_BIN_EXE_qualm"));
    let profile = qualm.parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    // The whole workspace's binaries and tests, as `cargo test --workspace` builds them: the
    // same features, so after it this build does nothing, and qualmd is never stale.
    build.args(["build", "--quiet", "--workspace", "--bins", "--tests", "--target-dir"]);
    build.arg(profile.parent().unwrap());
    if profile.file_name() == Some("release".as_ref()) {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "cannot build qualmd");
    profile.join(format!("qualmd{}", std::env::consts::EXE_SUFFIX))
}

/// Frames of a qualmd ledger by reason, and the records still kept at the end.
fn daemon_outcome(entries: &[LedgerEntry]) -> (BTreeMap<String, u64>, Vec<String>, Vec<String>) {
    let evicted: Vec<&str> = entries
        .iter()
        .filter(|e| e.reason == "evicted")
        .filter_map(|e| e.record.as_deref())
        .collect();
    let mut reasons = BTreeMap::new();
    let (mut kept, mut baseline) = (Vec::new(), Vec::new());
    for entry in entries.iter().filter(|e| e.reason != "evicted") {
        *reasons.entry(entry.reason.clone()).or_insert(0) += 1;
        let stays = entry.kept && !evicted.contains(&entry.record.as_deref().unwrap_or(""));
        if stays {
            kept.push(entry.frame.clone());
        }
        if entry.reason == "baseline" {
            baseline.push(entry.frame.clone());
        }
    }
    (reasons, kept, baseline)
}

/// qualmd on the 40 committed frames with a budget, cooldown, baseline and duplicate check;
/// `qualm replay` with the same configuration and calibration on its ledger keeps the same
/// records, for the same reasons.
#[test]
fn replay_keeps_what_qualmd_kept() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let card = ModelCard::load(&repo.join("models/selfie/selfie_int8.toml")).unwrap();
    let calibration = Calibration {
        model_sha256: sha256_file(&card.model_path()).unwrap(),
        temperature: 1.0,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::MeanEntropy, threshold: THRESHOLD },
        provenance: Provenance::default(),
    };
    let calibration_path = dir.path().join("calibration.toml");
    calibration.save(&calibration_path).unwrap();
    let config = dir.path().join("qualmd.toml");
    let text = format!(
        "model = {model:?}\ncalibration = \"calibration.toml\"\nspool = \"spool\"\n\
         ledger = \"ledger.jsonl\"\n[source]\nframes = {frames:?}\n[policy]\n\
         budget_records = 2\nbudget_window = \"400ms\"\ncooldown = \"80ms\"\n\
         baseline_rate = 0.1\nseed = 7\nduplicate_distance = 2\nframe_interval = \"40ms\"\n",
        model = repo.join("models/selfie/selfie_int8.toml"),
        frames = repo.join("models/frames/vtest"),
    );
    fs::write(&config, text).unwrap();

    let output = Command::new(qualmd_binary())
        .arg("--config")
        .arg(&config)
        .env("QUALMD_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ledger = dir.path().join("ledger.jsonl");
    let entries = qualm_daemon::ledger::read_ledger(&ledger).unwrap();
    let (reasons, kept, baseline) = daemon_outcome(&entries);
    eprintln!("qualmd: {reasons:?}, kept {kept:?}, baseline {baseline:?}");
    // The case is only worth comparing if every part of the policy acted.
    for reason in ["kept", "baseline", "below_threshold", "duplicate", "cooldown", "budget"] {
        assert!(reasons.contains_key(reason), "no {reason} frame: {reasons:?}");
    }

    let (ledger_arg, calibration_arg) =
        (ledger.to_str().unwrap(), calibration_path.to_str().unwrap());
    let args = ["replay", "--ledger", ledger_arg, "--calibration", calibration_arg, "--json"];
    let output = qualm(&[&args[..], &["--config", config.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["kept_frames"], serde_json::json!(kept));
    assert_eq!(json["baseline_frames"], serde_json::json!(baseline));
    assert_eq!(json["duplicates_checked"], true);
    let verdicts = &json["verdicts"];
    for reason in ["baseline", "below_threshold", "duplicate", "cooldown", "budget"] {
        assert_eq!(verdicts[reason].as_u64(), reasons.get(reason).copied(), "{reason}");
    }
    // qualmd ledgers a candidate pushed out later as kept, then as evicted.
    let admitted = verdicts["kept"].as_u64().unwrap() + verdicts["evicted"].as_u64().unwrap();
    assert_eq!(Some(admitted), reasons.get("kept").copied());

    // Without the hashes the same ledger replays with duplicate suppression off, and says so.
    let stripped: Vec<LedgerEntry> =
        entries.into_iter().map(|e| LedgerEntry { perceptual_hash: None, ..e }).collect();
    common::write_ledger(&ledger, &stripped);
    let output = qualm(&[&args[..], &["--config", config.to_str().unwrap()]].concat());
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (json["duplicates_checked"].as_bool(), json["verdicts"]["duplicate"].as_u64()),
        (Some(false), Some(0))
    );
    assert!(
        json["duplicates"].as_str().unwrap().contains("40 scored frames have no perceptual_hash")
    );
}
