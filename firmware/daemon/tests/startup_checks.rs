//! Start-up errors a new user met: a missing frame folder reported only after the model had
//! loaded, and a `[policy]` error that did not say which file it was in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qualmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualmd")).args(args).output().unwrap()
}

#[test]
fn a_missing_frame_folder_is_reported_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let card = repo().join("models/selfie/selfie_int8.toml");
    let spool = dir.path().join("spool");
    let output = qualmd(&[
        "--model",
        card.to_str().unwrap(),
        "--frames",
        missing.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
        "--ledger",
        dir.path().join("ledger.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("cannot read frame folder {}", missing.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("model loaded"), "{stderr}");
    assert!(!spool.exists(), "nothing created for a run that cannot start");
}

#[test]
fn policy_errors_name_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("qualmd.toml");
    let card = repo().join("models/selfie/selfie_int8.toml");
    let frames = repo().join("models/frames/vtest");
    fs::write(
        &config,
        format!(
            "model = {card:?}\nspool = \"spool\"\nledger = \"ledger.jsonl\"\n\
             [source]\nframes = {frames:?}\n[policy]\nbudget_records = 5\n"
        ),
    )
    .unwrap();
    let output = qualmd(&["--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "{}: invalid setting: policy: expected budget_window with budget_records",
        config.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}
