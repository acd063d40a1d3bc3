//! Frame files that must not be scored as if they were whole: one that decodes to more pixels
//! than the `[decode]` limits, and a JPEG cut short (its decoder fills the rest with gray and
//! reports nothing). Each is ledgered as an error naming the file; qualmd goes on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use qualm_daemon::ledger::{LedgerEntry, read_ledger};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320) as PNG chunks need it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A PNG header of a 20000 x 20000 RGB image (1.2 GB of pixels) with no pixel data: a decoder
/// that does not check the size first would try to allocate it.
fn huge_png() -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&20_000u32.to_be_bytes());
    header.extend_from_slice(&20_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &header));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn run(dir: &Path, decode: &str) -> Vec<LedgerEntry> {
    let card = repo().join("models/selfie/selfie_int8.toml");
    let ledger = dir.join("ledger.jsonl");
    let _ = fs::remove_file(&ledger);
    let config = format!(
        "model = {card:?}\nspool = \"spool\"\nledger = \"ledger.jsonl\"\n\
         [source]\nframes = \"frames\"\n{decode}"
    );
    fs::write(dir.join("qualmd.toml"), config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--config")
        .arg(dir.join("qualmd.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    read_ledger(&ledger).unwrap()
}

#[test]
fn oversized_and_truncated_frames_are_ledgered_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    fs::create_dir(&frames).unwrap();
    let whole = fs::read(repo().join("models/frames/vtest/vtest_0000.jpg")).unwrap();
    fs::write(frames.join("a_whole.jpg"), &whole).unwrap();
    fs::write(frames.join("b_cut.jpg"), &whole[..whole.len() / 2]).unwrap();
    fs::write(frames.join("c_huge.png"), huge_png()).unwrap();

    let entries = run(dir.path(), "");
    let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["observe_only", "error", "error"]);
    let cut = entries[1].error.as_deref().unwrap();
    assert!(cut.contains("b_cut.jpg") && cut.contains("end-of-image marker"), "{cut}");
    let huge = entries[2].error.as_deref().unwrap();
    assert!(huge.contains("c_huge.png") && huge.contains("8192x8192"), "{huge}");
    assert!(huge.contains("exceeds limit"), "{huge}");

    // The limits come from the `[decode]` table: 700 pixels wide refuses the 768-wide frame.
    let entries = run(dir.path(), "[decode]\nmax_width = 700\n");
    let error = entries[0].error.as_deref().unwrap();
    assert!(error.contains("a_whole.jpg") && error.contains("700x8192"), "{error}");
}

/// Frames pass through the staged loop (prepare, inference and gate threads) and come out in
/// name order, bad ones in their own places: the decode error of one frame neither reorders nor
/// holds up the frames around it.
#[test]
fn bad_frames_between_good_ones_keep_their_places_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    fs::create_dir(&frames).unwrap();
    let real = ["vtest_0000.jpg", "vtest_0020.jpg", "vtest_0040.jpg", "vtest_0060.jpg"];
    let mut names = Vec::new();
    for (index, source) in real.iter().enumerate() {
        let bytes = fs::read(repo().join("models/frames/vtest").join(source)).unwrap();
        let good = format!("f{:02}_good.jpg", index * 2);
        fs::write(frames.join(&good), &bytes).unwrap();
        names.push(good);
        if index < real.len() - 1 {
            let cut = format!("f{:02}_cut.jpg", index * 2 + 1);
            fs::write(frames.join(&cut), &bytes[..bytes.len() / 3]).unwrap();
            names.push(cut);
        }
    }

    let entries = run(dir.path(), "");
    let seen: Vec<String> = entries.iter().map(|e| format!("{}.jpg", e.frame)).collect();
    assert_eq!(seen, names, "one ledger line per frame, in name order");
    for (entry, name) in entries.iter().zip(&names) {
        let expected = if name.ends_with("_cut.jpg") { "error" } else { "observe_only" };
        assert_eq!(entry.reason, expected, "{name}");
    }
}
