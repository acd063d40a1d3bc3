//! Ledgers with qualmd's periodic summary lines: `qualm thresholds` and `qualm replay` skip
//! them and give the same answers as on the frame lines alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use qualm_core::{FrameStats, Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::ledger::LedgerEntry;
use qualm_daemon::summary::{Histogram, SUMMARY_KIND, SummaryLine};
use serde_json::Value;

mod common;

fn qualm(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// 40 frames an hour apart with shuffled entropies 0.00 .. 0.39 (times 2.5).
fn frames() -> Vec<LedgerEntry> {
    (0..40)
        .map(|i| {
            let mean_entropy = ((i * 17) % 40) as f32 / 40.0;
            let stats = FrameStats { mean_entropy, mean_max_softmax: 0.9, ..FrameStats::default() };
            let time = format!("2026-12-0{}T{:02}:00:00Z", 3 + i / 24, i % 24);
            common::ledger_entry(format!("f{i}"), &time, stats)
        })
        .collect()
}

fn summary(frames: u64) -> String {
    let line = SummaryLine {
        kind: SUMMARY_KIND.into(),
        time: "2026-12-03T00:00:00Z".into(),
        seconds: 60.0,
        frames,
        kept: 0,
        evicted: 0,
        spool_errors: 0,
        failed: 0,
        dropped: 0,
        reasons: BTreeMap::from([("observe_only".to_owned(), frames)]),
        statistic: None,
        statistic_histogram: Histogram::new(0.0, 1.0),
        other_statistic: 0,
        entropy_histogram: Histogram::new(0.0, 1.0),
    };
    serde_json::to_string(&line).unwrap()
}

/// The same frames without and with summary lines (one first, then one per 10 frames).
fn write_ledgers(dir: &Path) -> (String, String) {
    let entries = frames();
    let plain = dir.join("plain.jsonl");
    common::write_ledger(&plain, &entries);

    let mut lines = vec![summary(0)];
    for chunk in entries.chunks(10) {
        lines.extend(chunk.iter().map(|e| serde_json::to_string(e).unwrap()));
        lines.push(summary(chunk.len() as u64));
    }
    let summarized = dir.join("summarized.jsonl");
    fs::write(&summarized, lines.join("\n") + "\n").unwrap();
    (plain.to_str().unwrap().into(), summarized.to_str().unwrap().into())
}

#[test]
fn thresholds_skip_summary_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, summarized) = write_ledgers(dir.path());
    let calibrations: Vec<Calibration> = [plain, summarized]
        .iter()
        .enumerate()
        .map(|(i, ledger)| {
            let out = dir.path().join(format!("calibration{i}.toml"));
            let out_arg = out.to_str().unwrap();
            qualm(&["thresholds", "--ledger", ledger, "--keep-rate", "0.1", "--out", out_arg]);
            Calibration::load(&out).unwrap()
        })
        .collect();

    // n = 40, r = 0.1: rank ceil(41 * 0.9) = 37; the 37th smallest of 0/40 .. 39/40 is 36/40.
    for calibration in &calibrations {
        assert_eq!(calibration.provenance.frames, 40);
        assert_eq!(calibration.gate.statistic, Statistic::MeanEntropy);
        assert!((calibration.gate.threshold - 0.9).abs() < 1e-6, "{calibration:?}");
    }
}

#[test]
fn replay_skips_summary_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, summarized) = write_ledgers(dir.path());
    let calibration = Calibration {
        model_sha256: "ab".repeat(32),
        temperature: 1.5,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::MeanEntropy, threshold: 0.8 },
        provenance: Provenance::default(),
    };
    let path = dir.path().join("calibration.toml");
    calibration.save(&path).unwrap();
    let path = path.to_str().unwrap();

    let replays: Vec<Value> = [plain, summarized]
        .iter()
        .map(|ledger| {
            let args = ["replay", "--ledger", ledger, "--calibration", path, "--json"];
            serde_json::from_slice(&qualm(&args).stdout).unwrap()
        })
        .collect();

    // Above 0.8: entropies 33/40 .. 39/40, seven frames.
    for replay in &replays {
        assert_eq!(replay["frames"], 40);
        assert_eq!(replay["kept"], 7);
        assert_eq!(replay["error_frames"], 0);
    }
    assert_eq!(replays[0]["kept_frames"], replays[1]["kept_frames"]);
    assert_eq!(replays[0]["per_hour"], replays[1]["per_hour"]);
}
