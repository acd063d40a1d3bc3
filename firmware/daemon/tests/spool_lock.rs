//! Two qualmd on one spool: the second exits with 1 and names the first one's pid.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use qualm_daemon::lock::LOCK_FILE;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qualmd(dir: &Path, ledger: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qualmd"));
    command
        .arg("--model")
        .arg(repo().join("models/selfie/selfie_int8.toml"))
        .arg("--frames")
        .arg(repo().join("models/frames/vtest"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--ledger")
        .arg(dir.join(ledger));
    command
}

#[test]
fn a_second_qualmd_on_one_spool_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    // Looping over the folder keeps the first one running until it is killed.
    let mut first = qualmd(dir.path(), "first.jsonl")
        .arg("--loop")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The lock file holds the pid once the lock is taken.
    let lock = dir.path().join("spool").join(LOCK_FILE);
    let pid = first.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_to_string(&lock).map_or(true, |text| text.trim() != pid) {
        assert!(Instant::now() < deadline, "the first qualmd took no lock in 30 s");
        sleep(Duration::from_millis(50));
    }

    let second = qualmd(dir.path(), "second.jsonl").output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();

    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    let expected = format!(
        "spool {} is in use by another qualmd (pid {pid})",
        dir.path().join("spool").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!dir.path().join("second.jsonl").exists(), "the second wrote no ledger");

    // The lock goes with the process, however it ended.
    let third = qualmd(dir.path(), "third.jsonl").arg("--max-frames").arg("1").output().unwrap();
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
}
