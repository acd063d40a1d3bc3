//! A frame whose logits are all NaN or infinite has no scored pixel and means of 0: before
//! the non-finite guard it looked perfectly certain and was never kept. qualmd now ledgers it
//! as `non_finite` and keeps it as a record, since it is exactly the frame to look at.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo;
use qualm_core::Statistic;
use qualm_daemon::ledger::read_ledger;

mod common;

/// Writes a copy of the fp32 selfie card into `dir`; `std = 0` divides every input value by
/// zero, so the model sees only infinities and NaN and returns only non-finite logits.
fn card(dir: &Path, std: &str) -> PathBuf {
    let original = repo().join("models/selfie/selfie_fp32.toml");
    let text = fs::read_to_string(&original).unwrap();
    let model = repo().join("models/selfie/selfie_fp32.onnx");
    let text = text
        .replace("file = \"selfie_fp32.onnx\"", &format!("file = {model:?}"))
        .replace("std = [1.0, 1.0, 1.0]", &format!("std = [{std}, {std}, {std}]"));
    let path = dir.join(format!("card_{std}.toml"));
    fs::write(&path, text).unwrap();
    path
}

/// Runs qualmd over two bundled frames with a gate nothing finite passes (entropy above 2).
fn run(dir: &Path, card: &Path) -> (String, Vec<qualm_daemon::ledger::LedgerEntry>) {
    let frames = common::copy_frames(dir, &["vtest_0000.jpg", "vtest_0020.jpg"]);
    common::write_calibration(dir, card, Statistic::MeanEntropy, 2.0);

    let ledger = dir.join("ledger.jsonl");
    let _ = fs::remove_file(&ledger);
    let output = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--model")
        .arg(card)
        .arg("--calibration")
        .arg(dir.join("calibration.toml"))
        .arg("--frames")
        .arg(&frames)
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--ledger")
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8_lossy(&output.stdout).into_owned(), read_ledger(&ledger).unwrap())
}

#[test]
fn all_nonfinite_logits_are_ledgered_and_kept() {
    let dir = tempfile::tempdir().unwrap();

    // The same frames with the card's own normalization are scored and not kept.
    let (_, entries) = run(dir.path(), &card(dir.path(), "1.0"));
    assert!(entries.iter().all(|e| e.reason == "below_threshold" && !e.kept), "{entries:?}");
    assert!(entries.iter().all(|e| e.stats.unwrap().nonfinite_pixels == 0));

    let (stdout, entries) = run(dir.path(), &card(dir.path(), "0.0"));
    assert_eq!(entries.len(), 2);
    for entry in &entries {
        let stats = entry.stats.unwrap();
        assert_eq!((stats.pixels, stats.nonfinite_pixels), (256 * 256, 256 * 256));
        assert_eq!(entry.reason, "non_finite", "{entry:?}");
        assert!(entry.kept, "{entry:?}");
        let error = entry.error.as_deref().unwrap();
        assert_eq!(error, "65536 of 65536 pixels have non-finite logits");
        let record = dir.path().join("spool").join(entry.record.as_deref().unwrap());
        let meta = fs::read_to_string(record.join("meta.json")).unwrap();
        assert!(meta.contains("\"reason\": \"65536 of 65536 pixels"), "{meta}");
    }
    assert!(stdout.contains(", 0 dropped, 2 non-finite,"), "{stdout}");
}
