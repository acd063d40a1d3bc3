//! `qualm drift --json` against scipy (`tests/reference/scipy_drift.py`: `ks_2samp` and PSI
//! from its definition), and its verdicts on ledgers with and without a shift.
//!
//! The reference needs Python 3 with numpy and scipy; `.ci/run` installs them into a virtual
//! environment and points `QUALM_PYTHON` at its interpreter.
//!
//! Tolerances: the KS distance and PSI agree to 1e-12 (the same f32 values, the same
//! definitions, f64 sums). The p-value to 0.02 absolute: qualm uses the Kolmogorov limit with
//! Stephens' correction, scipy's "asymp" the one-sample distribution at the rounded effective
//! sample size; both approximate the same law and differ most (0.012 here) where p is large.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qualm_core::{FrameStats, Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::ledger::LedgerEntry;
use serde_json::Value;

mod common;
use common::Random;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

/// Frames whose mean entropy is `shift + 0.4 u^2` and mean max-softmax `0.9 - 0.3 u'` (u, u'
/// uniform), rounded to 3 decimals so that ties occur; other statistics are all 0.
fn frames(seed: u64, n: usize, shift: f64) -> Vec<FrameStats> {
    let mut random = Random(seed);
    (0..n)
        .map(|_| {
            let entropy = shift + 0.4 * random.next().powi(2);
            let max_softmax = 0.9 - 0.3 * random.next();
            FrameStats {
                mean_entropy: ((entropy * 1000.0).round() / 1000.0) as f32,
                mean_max_softmax: ((max_softmax * 1000.0).round() / 1000.0) as f32,
                ..FrameStats::default()
            }
        })
        .collect()
}

fn write_ledger(path: &Path, frames: &[FrameStats]) -> String {
    let entries: Vec<LedgerEntry> = frames
        .iter()
        .enumerate()
        .map(|(i, stats)| {
            let time = format!("2026-12-03T10:{:02}:{:02}Z", (i / 60) % 60, i % 60);
            common::ledger_entry(format!("f{i}"), &time, *stats)
        })
        .collect();
    common::write_ledger(path, &entries);
    path.to_str().unwrap().into()
}

/// A calibration from `qualm thresholds` on the reference ledger (it stores the reference).
fn thresholds(dir: &Path, reference: &str) -> String {
    let out = dir.join("calibration.toml");
    let out = out.to_str().unwrap();
    let output = qualm(&[
        "thresholds",
        "--ledger",
        reference,
        "--keep-rate",
        "0.1",
        "--statistic",
        "mean_entropy",
        "--out",
        out,
        "--force",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    out.into()
}

fn drift(args: &[&str]) -> Value {
    let mut all = vec!["drift", "--json"];
    all.extend_from_slice(args);
    let output = qualm(&all);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn by_statistic(json: &Value) -> BTreeMap<String, Value> {
    json["statistics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["statistic"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn values_json(path: &Path, frames: &[FrameStats]) -> PathBuf {
    let map: BTreeMap<&str, Vec<f32>> = [Statistic::MeanEntropy, Statistic::MeanMaxSoftmax]
        .iter()
        .map(|s| (s.as_str(), frames.iter().map(|f| s.value(f)).collect()))
        .collect();
    fs::write(path, serde_json::to_string(&map).unwrap()).unwrap();
    path.to_path_buf()
}

fn scipy(field: &Path, reference: &Path) -> Value {
    let python = std::env::var("QUALM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/scipy_drift.py");
    let output = Command::new(&python)
        .args([&script, field, reference])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        output.status.success(),
        "the scipy reference failed (it needs numpy and scipy; `bash .ci/run` installs them and \
         sets QUALM_PYTHON): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn ks_and_psi_match_scipy() {
    let dir = tempfile::tempdir().unwrap();
    // Sizes 237 and 411; the field's entropy shifted by 0.03 (a KS around 0.1-0.2).
    for (shift, field_n) in [(0.03, 237), (0.0, 150)] {
        let reference = frames(1, 411, 0.0);
        let field = frames(2, field_n, shift);
        let reference_ledger = write_ledger(&dir.path().join("reference.jsonl"), &reference);
        let field_ledger = write_ledger(&dir.path().join("field.jsonl"), &field);
        let calibration = thresholds(dir.path(), &reference_ledger);

        let ours = drift(&[
            "--ledger",
            &field_ledger,
            "--calibration",
            &calibration,
            "--reference",
            &reference_ledger,
        ]);
        assert_eq!(ours["reference"]["kind"], "values");
        let theirs = scipy(
            &values_json(&dir.path().join("field.json"), &field),
            &values_json(&dir.path().join("reference.json"), &reference),
        );
        let ours = by_statistic(&ours);
        for name in ["mean_entropy", "mean_max_softmax"] {
            let (a, b) = (&ours[name], &theirs[name]);
            for (key, tolerance) in [("ks", 1e-12), ("psi", 1e-12), ("ks_p", 0.02)] {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!((x - y).abs() <= tolerance, "{name} {key}: qualm {x}, scipy {y}");
            }
        }
        // Constant statistics (all 0 on both sides) do not drift at all.
        assert_eq!(ours["p50_entropy"]["ks"], 0.0);
        assert_eq!(ours["p50_entropy"]["psi"], 0.0);
    }
}

#[test]
fn stored_reference_tells_a_shift_from_a_fresh_sample() {
    let dir = tempfile::tempdir().unwrap();
    let reference_ledger = write_ledger(&dir.path().join("reference.jsonl"), &frames(3, 500, 0.0));
    let calibration = thresholds(dir.path(), &reference_ledger);
    let stored = Calibration::load(Path::new(&calibration)).unwrap();
    let stored = stored.provenance.reference.unwrap();
    assert_eq!((stored.frames, stored.kind.as_str()), (500, "quantiles"));
    assert_eq!(stored.statistics["mean_entropy"].len(), 100);

    // A fresh sample of the same law: the threshold holds.
    let same = write_ledger(&dir.path().join("same.jsonl"), &frames(4, 400, 0.0));
    let json = drift(&["--ledger", &same, "--calibration", &calibration]);
    assert_eq!(json["reference"]["kind"], "quantiles");
    assert_eq!(json["threshold_holds"], true, "{json}");
    assert_eq!(json["mismatched_settings"], 0);
    let rate = json["keep_rate"]["observed"].as_f64().unwrap();
    assert!((rate - 0.1).abs() < 0.04, "keep rate {rate}");

    // Entropy up by 0.1: PSI past 0.25, the gate keeps far more than 10%.
    let shifted = write_ledger(&dir.path().join("shifted.jsonl"), &frames(5, 400, 0.1));
    let json = drift(&["--ledger", &shifted, "--calibration", &calibration]);
    assert_eq!(json["threshold_holds"], false, "{json}");
    let entropy = &by_statistic(&json)["mean_entropy"];
    assert!(entropy["psi"].as_f64().unwrap() > 0.25, "{entropy}");
    assert_eq!(entropy["shifted"], true);
    assert_eq!(json["keep_rate"]["changed"], true);
    assert!(json["verdict"].as_str().unwrap().contains("no longer means"), "{json}");
}

#[test]
fn old_calibration_files_load_and_drift_asks_for_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    // The committed calibration as it was before files stored the reference still loads.
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/selfie/calibration.toml");
    let text = fs::read_to_string(committed).unwrap();
    let (before, _) = text.split_once("[provenance.reference]").unwrap();
    fs::write(dir.path().join("before.toml"), before).unwrap();
    let loaded = Calibration::load(&dir.path().join("before.toml")).unwrap();
    assert!(loaded.provenance.reference.is_none());
    assert_eq!(loaded.provenance.frames, 795);

    let calibration = Calibration {
        model_sha256: "ab".repeat(32),
        temperature: 1.5,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::MeanEntropy, threshold: 0.2 },
        provenance: Provenance::default(),
    };
    let path = dir.path().join("old.toml");
    calibration.save(&path).unwrap();
    let field = write_ledger(&dir.path().join("field.jsonl"), &frames(6, 50, 0.0));
    let output = qualm(&["drift", "--ledger", &field, "--calibration", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("old.toml") && stderr.contains("--reference"), "{stderr}");
}

#[test]
fn few_field_frames_rest_on_ks_and_the_keep_rate() {
    let dir = tempfile::tempdir().unwrap();
    let reference_ledger = write_ledger(&dir.path().join("reference.jsonl"), &frames(7, 500, 0.0));
    let calibration = thresholds(dir.path(), &reference_ledger);

    // 27.877 (1/n + 1/500) <= 0.25 needs n >= 143.5: 40 frames are too few for the PSI.
    let mut crossed = 0;
    for seed in 10..30 {
        let few = write_ledger(&dir.path().join("few.jsonl"), &frames(seed, 40, 0.0));
        let json = drift(&["--ledger", &few, "--calibration", &calibration]);
        assert_eq!(json["psi_min_frames"], 144);
        let entropy = &by_statistic(&json)["mean_entropy"];
        assert_eq!(
            (&entropy["psi_counts"], &entropy["psi_level"]),
            (&false.into(), &"too few frames".into())
        );
        let ks_p = entropy["ks_p"].as_f64().unwrap();
        assert_eq!(entropy["shifted"], ks_p < 0.01, "{entropy}");
        crossed += usize::from(entropy["psi"].as_f64().unwrap() > 0.25);
    }
    // The rule matters: some of these unshifted 40-frame samples cross 0.25 by chance.
    assert!(crossed > 0, "no 40-frame sample crossed PSI 0.25");

    // A real shift still shows on 40 frames, through KS.
    let shifted = write_ledger(&dir.path().join("shifted.jsonl"), &frames(31, 40, 0.1));
    let json = drift(&["--ledger", &shifted, "--calibration", &calibration]);
    let entropy = &by_statistic(&json)["mean_entropy"];
    assert!(entropy["ks_p"].as_f64().unwrap() < 0.01, "{entropy}");
    assert_eq!(json["threshold_holds"], false, "{json}");
}
