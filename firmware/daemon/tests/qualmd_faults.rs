//! qualmd under faults, on the committed real frames and model: killed at random moments, a
//! spool over its quota, a spool that cannot be written; and the keep policy end to end
//! (budget windows, baseline, near-duplicates, cooldown, region of interest).
//!
//! `QUALMD_KILL_RUNS` sets how many runs are killed (default 50);
//! `firmware/daemon/scripts/fault-soak.sh` runs 200.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use qualm_core::policy::SplitMix64;
use qualm_core::{Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::card::{ModelCard, sha256_file};
use qualm_daemon::ledger::LedgerEntry;
use qualm_daemon::pipeline::RECORD_FILES;
use qualm_daemon::spool::{Spool, SpoolLimits};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn frames() -> PathBuf {
    repo().join("models/frames/vtest")
}

/// A calibration for the committed int8 model gating on mean entropy.
fn calibration(dir: &Path, threshold: f32) -> PathBuf {
    let card = ModelCard::load(&repo().join("models/selfie/selfie_int8.toml")).unwrap();
    let calibration = Calibration {
        model_sha256: sha256_file(&card.model_path()).unwrap(),
        temperature: 1.0,
        uncertain_level: 0.5,
        gate: Gate { statistic: Statistic::MeanEntropy, threshold },
        provenance: Provenance::default(),
    };
    let path = dir.join("calibration.toml");
    calibration.save(&path).unwrap();
    path
}

/// Writes a configuration for the 40 frames with the given extra top-level keys and
/// `[policy]` keys; returns its path.
fn write_config(dir: &Path, threshold: f32, extra: &str, policy: &str) -> PathBuf {
    let calibration = calibration(dir, threshold);
    let text = format!(
        "model = {model:?}\ncalibration = {calibration:?}\nspool = \"spool\"\n\
         ledger = \"ledger.jsonl\"\n{extra}\n[source]\nframes = {frames:?}\n[policy]\n{policy}\n",
        model = repo().join("models/selfie/selfie_int8.toml"),
        frames = frames(),
    );
    let path = dir.join("qualmd.toml");
    fs::write(&path, text).unwrap();
    path
}

fn qualmd(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qualmd"));
    command.arg("--config").arg(config).env("QUALMD_LOG", "warn");
    command
}

fn run(config: &Path) -> Output {
    let output = qualmd(config).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Ledger lines; a last line cut short by a kill is left out, any other bad line fails.
fn ledger(dir: &Path) -> Vec<LedgerEntry> {
    let text = fs::read_to_string(dir.join("ledger.jsonl")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut entries = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(entry) => entries.push(entry),
            Err(error) if i + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!("last ledger line cut short: {error}");
            }
            Err(error) => panic!("ledger line {}: {error}: {line}", i + 1),
        }
    }
    entries
}

/// Records whose last ledger line says kept (not evicted since).
fn ledger_records(entries: &[LedgerEntry]) -> BTreeSet<String> {
    let mut last = BTreeMap::new();
    for entry in entries {
        if let Some(record) = &entry.record {
            last.insert(record.clone(), entry.reason != "evicted");
        }
    }
    last.into_iter().filter(|(_, kept)| *kept).map(|(record, _)| record).collect()
}

/// Names of the spool's entries.
fn spool_names(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir.join("spool")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != qualm_daemon::lock::LOCK_FILE)
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Every record folder is complete: all files, and a meta.json that parses.
fn assert_complete(dir: &Path, names: &BTreeSet<String>) {
    for name in names {
        let record = dir.join("spool").join(name);
        for file in RECORD_FILES {
            assert!(record.join(file).is_file(), "{} lacks {file}", record.display());
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&fs::read(record.join("meta.json")).unwrap()).unwrap();
        assert!(meta["priority"].is_number(), "{}: {meta}", record.display());
    }
}

fn mean_entropy(entry: &LedgerEntry) -> f32 {
    entry.stats.unwrap().mean_entropy
}

#[test]
fn kill_at_random_moments_loses_no_kept_record() {
    let runs: u64 = std::env::var("QUALMD_KILL_RUNS").map_or(50, |n| n.parse().unwrap());
    // Threshold 0 keeps every frame; budget windows of 3 frames with 2 records each and a
    // quota of 3 records make candidates, pending records and evictions happen all the time.
    // Six frames keep a run short enough for many kills.
    let policy = "budget_records = 2\nbudget_window = \"3s\"\nframe_interval = \"1s\"";
    let extra = "spool_max_records = 3\nmax_frames = 6";

    // One full run first: how long a run takes, and what a finished one looks like.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 0.0, extra, policy);
    let started = Instant::now();
    run(&config);
    let full = started.elapsed();
    let names = spool_names(dir.path());
    assert_eq!(names, ledger_records(&ledger(dir.path())));
    assert_eq!(names.len(), 3);
    assert_complete(dir.path(), &names);

    let mut rng = SplitMix64(0x5EED);
    let mut killed_while_pending = 0;
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), 0.0, extra, policy);
        let delay = full.mul_f64(rng.next_unit());
        let mut child =
            qualmd(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let before = spool_names(dir.path());
        killed_while_pending += u64::from(before.iter().any(|n| n.starts_with(".pending-")));
        let entries = ledger(dir.path());

        // What qualmd does at its next start: partial records removed, pending ones final.
        if dir.path().join("spool").exists() {
            Spool::open(&dir.path().join("spool"), SpoolLimits::default()).unwrap();
        }
        let after = spool_names(dir.path());
        assert!(after.iter().all(|n| !n.starts_with('.')), "run {run} ({delay:?}): {after:?}");
        assert_complete(dir.path(), &after);
        let claimed = ledger_records(&entries);
        let lost: Vec<&String> = claimed.difference(&after).collect();
        assert!(lost.is_empty(), "run {run} killed after {delay:?} lost {lost:?}");
    }
    eprintln!("{runs} kills, {killed_while_pending} with a budget window open");
}

#[test]
fn a_full_spool_evicts_the_least_uncertain_and_counts_match_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 0.0, "spool_max_records = 5\nmax_frames = 12", "");
    let output = run(&config);
    let entries = ledger(dir.path());

    let scored: Vec<&LedgerEntry> = entries.iter().filter(|e| e.stats.is_some()).collect();
    assert_eq!(scored.len(), 12, "every frame scored and ledgered");
    let kept: Vec<&&LedgerEntry> = scored.iter().filter(|e| e.kept).collect();
    let evicted = entries.iter().filter(|e| e.reason == "evicted").count();
    assert_eq!(kept.len() - evicted, 5);
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("{} kept", kept.len())));

    // The five most uncertain kept frames stay (ties are not expected on real frames).
    let mut ranked = kept.clone();
    ranked.sort_by(|a, b| mean_entropy(b).total_cmp(&mean_entropy(a)));
    let expected: BTreeSet<String> =
        ranked[..5].iter().map(|e| e.record.clone().unwrap()).collect();
    assert_eq!(spool_names(dir.path()), expected);
    assert_eq!(ledger_records(&entries), expected);
    assert_complete(dir.path(), &expected);
}

#[test]
fn an_unwritable_spool_never_stops_inference() {
    let dir = tempfile::tempdir().unwrap();
    // The spool path is a file: no folder can be made there, as on a read-only or full disk
    // (tests run as root, so folder permissions would not stop the writes).
    fs::write(dir.path().join("spool"), b"not a folder").unwrap();
    let config = write_config(dir.path(), 0.0, "max_frames = 5", "");
    let output = qualmd(&config).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let entries = ledger(dir.path());
    assert_eq!(entries.len(), 5);
    for entry in &entries {
        assert!(entry.stats.is_some(), "{} not scored", entry.frame);
        assert_eq!((entry.kept, entry.reason.as_str()), (false, "spool_error"), "{}", entry.frame);
        assert!(entry.error.as_ref().unwrap().contains("cannot create spool folder"));
    }
    assert!(String::from_utf8_lossy(&output.stderr).contains("spool unavailable"));
}

#[test]
fn budget_windows_keep_their_most_uncertain_frames() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "budget_records = 2\nbudget_window = \"10s\"\nframe_interval = \"1s\"";
    let config = write_config(dir.path(), 0.0, "max_frames = 20", policy);
    run(&config);
    let entries = ledger(dir.path());
    let scored: Vec<&LedgerEntry> = entries.iter().filter(|e| e.stats.is_some()).collect();
    assert_eq!(scored.len(), 20);

    // Frames 0-9 and 10-19: the two of highest mean entropy in each window stay.
    let mut expected = BTreeSet::new();
    for window in scored.chunks(10) {
        let mut ranked = window.to_vec();
        ranked.sort_by(|a, b| mean_entropy(b).total_cmp(&mean_entropy(a)));
        expected.extend(ranked[..2].iter().map(|e| e.record.clone().unwrap()));
    }
    assert_eq!(spool_names(dir.path()), expected, "all final, no .pending- left");
    assert_eq!(ledger_records(&entries), expected);
    for entry in &scored {
        assert!(matches!(entry.reason.as_str(), "kept" | "budget"), "{}", entry.reason);
    }
}

#[test]
fn baseline_duplicates_and_cooldown_end_to_end() {
    // Nothing passes a threshold of 1; the baseline alone keeps frames, drawn as the core does.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 1.0, "max_frames = 12", "baseline_rate = 0.25\nseed = 3");
    run(&config);
    let mut rng = SplitMix64(3);
    let draws: Vec<bool> = (0..12).map(|_| rng.next_unit() < 0.25).collect();
    let entries = ledger(dir.path());
    for (entry, drawn) in entries.iter().zip(&draws) {
        let expected = if *drawn { "baseline" } else { "below_threshold" };
        assert_eq!((entry.reason.as_str(), entry.kept), (expected, *drawn), "{}", entry.frame);
        if *drawn {
            let meta =
                dir.path().join("spool").join(entry.record.as_ref().unwrap()).join("meta.json");
            let meta: serde_json::Value = serde_json::from_slice(&fs::read(meta).unwrap()).unwrap();
            assert_eq!(meta["baseline"], true);
        }
    }
    assert!(draws.iter().any(|d| *d));
    assert_eq!(entries.len(), 12);

    // Every hash is within 64 bits of every other: after the first, all are duplicates.
    let dir = tempfile::tempdir().unwrap();
    run(&config_in(dir.path(), "duplicate_distance = 64"));
    let reasons: Vec<String> = ledger(dir.path()).into_iter().map(|e| e.reason).collect();
    assert_eq!(reasons[0], "kept");
    assert!(reasons[1..].iter().all(|r| r == "duplicate"), "{reasons:?}");

    // One frame a second, 3 s cooldown: frames 0, 3, 6, 9 are kept.
    let dir = tempfile::tempdir().unwrap();
    run(&config_in(dir.path(), "cooldown = \"3s\"\nframe_interval = \"1s\""));
    for (i, entry) in ledger(dir.path()).iter().enumerate() {
        let expected = if i % 3 == 0 { "kept" } else { "cooldown" };
        assert_eq!(entry.reason, expected, "frame {i}");
    }
}

fn config_in(dir: &Path, policy: &str) -> PathBuf {
    write_config(dir, 0.0, "max_frames = 10", policy)
}

#[test]
fn a_region_of_interest_leaves_its_outside_out_of_the_statistics() {
    let dir = tempfile::tempdir().unwrap();
    // Left half of the frame ignored; the model output is 256x256, so 128 x 256 pixels.
    let mask = image::GrayImage::from_fn(768, 576, |x, _| image::Luma([u8::from(x >= 384) * 255]));
    mask.save(dir.path().join("mask.png")).unwrap();
    let config = write_config(dir.path(), 0.0, "roi = \"mask.png\"\nmax_frames = 2", "");
    run(&config);
    for entry in ledger(dir.path()) {
        let stats = entry.stats.unwrap();
        assert_eq!((stats.pixels, stats.ignored_pixels), (256 * 256, 128 * 256), "{}", entry.frame);
    }

    fs::write(dir.path().join("mask.png"), b"junk").unwrap();
    let output = qualmd(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("mask.png"));
}

#[test]
fn a_spool_limit_of_zero_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 0.0, "spool_max_bytes = 0", "");
    let output = qualmd(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("spool_max_bytes"));
}
