//! Bad input never panics and never loses stored records: property tests of the configuration
//! and calibration parsers, the spool's start-up scan, the ledger reader and the frame decoder
//! on random and mutated inputs.
//!
//! CI runs proptest's default number of cases; `PROPTEST_CASES=100000` (as in
//! `firmware/daemon/scripts/fault-soak.sh`) runs many more.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;
use qualm_daemon::calibration::Calibration;
use qualm_daemon::config::Config;
use qualm_daemon::ledger::read_ledger;
use qualm_daemon::source::FolderSource;
use qualm_daemon::spool::{RecordFile, RecordRank, Spool, SpoolLimits};

const CONFIG: &str = r#"model = "models/selfie/selfie_int8.toml"
calibration = "models/selfie/calibration.toml"
spool = "out/spool"
ledger = "out/ledger.jsonl"
max_frames = 10
jpeg_quality = 90
roi = "mask.png"
spool_max_records = 100
spool_max_bytes = 1000000

[source]
frames = "models/frames/vtest"

[policy]
budget_records = 5
budget_window = "10m"
baseline_rate = 0.01
seed = 7
duplicate_distance = 4
cooldown = "2s"
frame_interval = "40ms"
"#;

const CALIBRATION: &str = r#"model_sha256 = "00ff"
temperature = 1.5
uncertain_level = 0.5
combine = "all"

[gate]
statistic = "mean_entropy"
threshold = 0.25

[[rules]]
statistic = "mean_max_softmax"
threshold = 0.9

[provenance]
frames = 795
"#;

const LEDGER_LINE: &str = r#"{"time":"2026-01-01T00:00:00.000Z","frame":"f","origin":"o","model_sha256":"00","kept":true,"reason":"kept","record":"f-0123456789ab"}"#;

/// Text that is mostly a valid file with a few random edits, or random text outright.
fn mutated(valid: &'static str) -> impl Strategy<Value = String> {
    let edit = (any::<prop::sample::Index>(), 0usize..12, "[ -~\n\u{e9}\"\\[\\]=]{0,12}");
    prop_oneof![
        1 => ".{0,200}",
        4 => prop::collection::vec(edit, 1..4).prop_map(move |edits| {
            let mut text = valid.to_owned();
            for (at, cut, insert) in edits {
                let mut start = at.index(text.len() + 1);
                while !text.is_char_boundary(start) {
                    start -= 1;
                }
                let mut end = (start + cut).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(start..end, &insert);
            }
            text
        }),
    ]
}

fn bytes_mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>());
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300),
        2 => (prop::collection::vec(edit, 1..6), any::<prop::sample::Index>()).prop_map(
            move |(edits, cut)| {
                let mut bytes = valid.clone();
                for (at, value) in edits {
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                }
                let keep = bytes.len() - cut.index(bytes.len() / 4 + 1);
                bytes.truncate(keep);
                bytes
            }
        ),
    ]
}

fn small_frame(format: image::ImageFormat) -> Vec<u8> {
    let frame =
        image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, 99]));
    let mut bytes = Vec::new();
    frame.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

/// The error message of a load names the file.
fn names_file(error: &anyhow::Error, path: &Path) -> bool {
    format!("{error:#}").contains(&*path.to_string_lossy())
}

proptest! {
    #[test]
    fn configuration_parser_refuses_bad_files_by_name(text in mutated(CONFIG)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qualmd.toml");
        fs::write(&path, &text).unwrap();
        match Config::load(&path) {
            Ok(config) => {
                // Values the file format cannot check: refused with a message, not a panic.
                if let Err(error) = config.validate() {
                    let message = format!("{error:#}");
                    prop_assert!(!message.is_empty());
                }
            }
            Err(error) => prop_assert!(names_file(&error, &path), "{:#}", error),
        }
    }

    #[test]
    fn calibration_parser_refuses_bad_files_by_name(text in mutated(CALIBRATION)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.toml");
        fs::write(&path, &text).unwrap();
        let loads = [Calibration::load(&path).map(drop), Calibration::load_rules(&path).map(drop)];
        for result in loads {
            if let Err(error) = result {
                prop_assert!(names_file(&error, &path), "{:#}", error);
            }
        }
    }

    #[test]
    fn ledger_reader_names_the_bad_line(
        lines in prop::collection::vec(prop_oneof![
            3 => Just(LEDGER_LINE.to_owned()),
            1 => mutated(LEDGER_LINE),
        ], 0..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        fs::write(&path, lines.join("\n")).unwrap();
        match read_ledger(&path) {
            Ok(entries) => prop_assert!(entries.len() <= lines.len()),
            Err(error) => {
                let message = format!("{error:#}");
                prop_assert!(
                    names_file(&error, &path) && message.contains(" line "),
                    "{}",
                    message
                );
            }
        }
    }

    #[test]
    fn frame_decoder_skips_bad_frames_by_name(
        jpeg in bytes_mutated(small_frame(image::ImageFormat::Jpeg)),
        png in bytes_mutated(small_frame(image::ImageFormat::Png)),
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.jpg"), &jpeg).unwrap();
        fs::write(dir.path().join("b.png"), &png).unwrap();
        let mut count = 0;
        for item in FolderSource::open(dir.path()).unwrap() {
            count += 1;
            match item {
                Ok(frame) => prop_assert!(frame.image.width() > 0 && frame.image.height() > 0),
                Err(bad) => {
                    let message = format!("{:#}", bad.error);
                    prop_assert!(message.contains(&bad.id), "{}", message);
                }
            }
        }
        prop_assert_eq!(count, 2);
    }

    #[test]
    fn spool_scan_keeps_every_record_among_junk(
        junk in prop::collection::vec((
            prop_oneof![
                Just(String::new()),
                Just(".pending-".to_owned()),
                Just(".partial-".to_owned()),
                Just(".".to_owned()),
            ],
            "[a-z0-9._-]{1,10}",
            0u8..4,
            mutated(r#"{"frame": "j", "priority": 0.5, "baseline": false}"#),
        ), 0..10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let spool_path = dir.path().join("spool");
        let mut spool = Spool::open(&spool_path, SpoolLimits::default()).unwrap();
        let meta = br#"{"frame": "real", "priority": 0.5}"#;
        for key in ["real-aaaa", "real-bbbb"] {
            let files = [RecordFile { name: "meta.json", bytes: meta }];
            let rank = RecordRank { priority: 0.5, baseline: false };
            spool.store(key, "real", &files, rank, false).unwrap();
        }
        drop(spool);

        for (prefix, name, kind, content) in &junk {
            let path = spool_path.join(format!("{prefix}{name}"));
            if path.exists() || name.starts_with("real") {
                continue;
            }
            let _ = match kind {
                0 => fs::write(&path, content.as_bytes()),
                1 => fs::create_dir(&path),
                2 => {
                    fs::create_dir(&path).and_then(|()| fs::write(path.join("meta.json"), content))
                }
                _ => fs::create_dir_all(path.join("meta.json")),
            };
        }

        let spool = Spool::open(&spool_path, SpoolLimits::default()).unwrap();
        prop_assert!(spool.len() >= 2);
        for key in ["real-aaaa", "real-bbbb"] {
            prop_assert_eq!(fs::read(spool_path.join(key).join("meta.json")).unwrap(), meta);
        }
        // A second scan finds the same records: the first one left a stable spool.
        let again = Spool::open(&spool_path, SpoolLimits::default()).unwrap();
        prop_assert_eq!(again.len(), spool.len());
        prop_assert_eq!(again.scan_report().finalized + again.scan_report().removed_partial, 0);
    }
}
