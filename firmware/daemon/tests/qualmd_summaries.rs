//! qualmd with `[device] summary_interval`: a looping run on real frames writes summary lines
//! whose counts and histograms match the frame lines between them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use qualm_core::{Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::card::{ModelCard, sha256_file};
use qualm_daemon::ledger::{LedgerEntry, read_ledger};
use qualm_daemon::summary::{HISTOGRAM_BINS, SUMMARY_KIND, SummaryLine};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Plain f64 reference: bin `floor((v - low) / (high - low) * bins)`, the top edge in the last.
fn reference_bins(values: &[f64], low: f64, high: f64) -> [u64; HISTOGRAM_BINS] {
    let mut counts = [0; HISTOGRAM_BINS];
    for &value in values.iter().filter(|v| (low..=high).contains(*v)) {
        let bin = ((value - low) / (high - low) * HISTOGRAM_BINS as f64).floor() as usize;
        counts[bin.min(HISTOGRAM_BINS - 1)] += 1;
    }
    counts
}

/// Checks one summary against the frame lines written since the previous one.
fn check_summary(summary: &SummaryLine, frames: &[LedgerEntry]) {
    assert_eq!(summary.frames, frames.len() as u64, "{summary:?}");
    assert_eq!(summary.kept, frames.iter().filter(|e| e.kept).count() as u64);
    assert_eq!(summary.failed, frames.iter().filter(|e| e.reason == "error").count() as u64);
    let mut reasons = BTreeMap::new();
    for entry in frames {
        *reasons.entry(entry.reason.clone()).or_insert(0) += 1;
    }
    assert_eq!(summary.reasons, reasons);

    let entropies: Vec<f64> =
        frames.iter().filter_map(|e| e.stats.as_ref()).map(|s| f64::from(s.mean_entropy)).collect();
    assert_eq!(summary.entropy_histogram.counts, reference_bins(&entropies, 0.0, 1.0));
    assert_eq!(summary.entropy_histogram.total(), entropies.len() as u64);
    if frames.iter().any(|e| e.statistic.is_some()) {
        assert_eq!(summary.statistic, Some(Statistic::P90Entropy));
    }
    let gated: Vec<f64> = frames
        .iter()
        .filter(|e| e.statistic.is_some())
        .filter_map(|e| e.stats.as_ref())
        .map(|s| f64::from(s.p90_entropy))
        .collect();
    assert_eq!(summary.statistic_histogram.counts, reference_bins(&gated, 0.0, 1.0));
    assert_eq!(summary.statistic_histogram.total(), gated.len() as u64);
}

#[test]
fn summaries_count_the_frame_lines_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    fs::create_dir(&frames).unwrap();
    for name in ["vtest_0000.jpg", "vtest_0020.jpg", "vtest_0040.jpg"] {
        fs::copy(repo().join("models/frames/vtest").join(name), frames.join(name)).unwrap();
    }
    let card = repo().join("models/selfie/selfie_int8.toml");
    let calibration = Calibration {
        model_sha256: sha256_file(&ModelCard::load(&card).unwrap().model_path()).unwrap(),
        temperature: 1.0,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::P90Entropy, threshold: 0.0 },
        provenance: Provenance::default(),
    };
    calibration.save(&dir.path().join("calibration.toml")).unwrap();

    // Looped frames repeat: the first three are kept, the repeats are duplicates.
    let ledger = dir.path().join("ledger.jsonl");
    let config = format!(
        "model = {card:?}\ncalibration = \"calibration.toml\"\nspool = \"spool\"\n\
         ledger = \"ledger.jsonl\"\nmax_frames = 24\n[source]\nframes = \"frames\"\n\
         [policy]\nduplicate_distance = 6\n[device]\nrestart = true\nsummary_interval = \"100ms\"\n"
    );
    fs::write(dir.path().join("qualmd.toml"), config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--config")
        .arg(dir.path().join("qualmd.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Walk the lines in order: frame lines (not `evicted` ones) since the last summary.
    let mut summaries = 0;
    let mut since = Vec::new();
    let mut all_frames = 0;
    for line in fs::read_to_string(&ledger).unwrap().lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        if value["kind"] == SUMMARY_KIND {
            check_summary(&serde_json::from_value(value).unwrap(), &since);
            summaries += 1;
            all_frames += since.len();
            since.clear();
        } else {
            let entry: LedgerEntry = serde_json::from_value(value).unwrap();
            if entry.reason != "evicted" {
                since.push(entry);
            }
        }
    }
    assert!(since.is_empty(), "the run ends with a summary");
    assert_eq!(all_frames, 24);
    assert!(summaries >= 2, "24 frames take longer than 100 ms: {summaries} summaries");

    // Readers see only the frame lines.
    let entries = read_ledger(&ledger).unwrap();
    assert_eq!(entries.len(), 24);
    assert_eq!(entries[0].reason, "kept");
    assert!(entries.iter().any(|e| e.reason == "duplicate"), "repeats are duplicates");
}
