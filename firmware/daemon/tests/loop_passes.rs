//! `--loop` over a folder: the end of each pass was a warning every time. A looped recording
//! ends by design; qualmd says so once, and the repeats map to the records already stored.

use std::fs;
use std::process::Command;

use qualm_core::Statistic;
use qualm_daemon::ledger::read_ledger;
use qualm_daemon::lock::LOCK_FILE;

mod common;

#[test]
fn looping_a_folder_logs_once_and_repeats_map_to_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let frames = common::copy_frames(dir.path(), &["vtest_0000.jpg", "vtest_0020.jpg"]);
    let card = common::repo().join("models/selfie/selfie_int8.toml");
    common::write_calibration(dir.path(), &card, Statistic::P90Entropy, 0.0);

    // Three passes over two frames (threshold 0 keeps all), without duplicate suppression.
    let output = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--model")
        .arg(&card)
        .arg("--calibration")
        .arg(dir.path().join("calibration.toml"))
        .arg("--frames")
        .arg(&frames)
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--ledger")
        .arg(dir.path().join("ledger.jsonl"))
        .args(["--loop", "--max-frames", "6"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert_eq!(stderr.matches("recording ended, looping it").count(), 1, "{stderr}");

    // Every pass keeps both frames, under the same two record names.
    let entries = read_ledger(&dir.path().join("ledger.jsonl")).unwrap();
    assert_eq!(entries.len(), 6);
    assert!(entries.iter().all(|e| e.kept));
    assert_eq!(entries[0].record, entries[2].record);
    assert_eq!(entries[1].record, entries[5].record);
    let records = fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != LOCK_FILE)
        .count();
    assert_eq!(records, 2);
}
