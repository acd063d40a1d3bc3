//! What a new user ran into: `qualm ... | head` panicking on the closed pipe, and
//! `thresholds --out` replacing a calibration file without a word.

use std::fs;
use std::process::{Command, Output, Stdio};

use qualm_core::FrameStats;

mod common;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("frame.npy");
    let data: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 7) as f32 - 3.0).collect();
    common::write_npy(&logits, &[3, 16, 16], &data);

    // The reading end is closed before qualm prints, as `head` does once it has its lines.
    let mut child = Command::new(env!("CARGO_BIN_EXE_qualm"))
        .args(["stats", "--logits", logits.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn thresholds_refuse_to_replace_a_calibration_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let entries: Vec<_> = (0..40)
        .map(|i| {
            let stats = FrameStats { mean_entropy: i as f32 / 40.0, ..FrameStats::default() };
            common::ledger_entry(format!("f{i}"), "2026-01-01T00:00:00Z", stats)
        })
        .collect();
    common::write_ledger(&ledger, &entries);
    let out = dir.path().join("calibration.toml");
    fs::write(&out, "in use\n").unwrap();

    let args = ["thresholds", "--ledger", ledger.to_str().unwrap(), "--keep-rate", "0.1"];
    let output = qualm(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}: the calibration file exists already", out.display());
    assert!(stderr.contains(&expected) && stderr.contains("--force"), "{stderr}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "in use\n", "the file is untouched");

    let output = qualm(&[&args[..], &["--out", out.to_str().unwrap(), "--force"]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(fs::read_to_string(&out).unwrap().contains("threshold"));
}
