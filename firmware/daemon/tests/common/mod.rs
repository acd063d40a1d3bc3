//! Helpers shared by the daemon's CLI tests.
#![allow(dead_code, reason = "each test binary uses its own part of these helpers")]

use std::fs;
use std::path::{Path, PathBuf};

use qualm_core::{Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::card::{ModelCard, sha256_file};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Copies the bundled frames `names` (of `models/frames/vtest`) into a new folder `dir/frames`.
pub fn copy_frames(dir: &Path, names: &[&str]) -> PathBuf {
    let frames = dir.join("frames");
    fs::create_dir_all(&frames).unwrap();
    for name in names {
        fs::copy(repo().join("models/frames/vtest").join(name), frames.join(name)).unwrap();
    }
    frames
}

/// Writes `dir/calibration.toml` for the model of `card`: temperature 1, uncertain level 0.5,
/// one gate.
pub fn write_calibration(dir: &Path, card: &Path, statistic: Statistic, threshold: f32) {
    let calibration = Calibration {
        model_sha256: sha256_file(&ModelCard::load(card).unwrap().model_path()).unwrap(),
        temperature: 1.0,
        uncertain_level: 0.5,
        gate: Gate { statistic, threshold },
        provenance: Provenance::default(),
    };
    calibration.save(&dir.join("calibration.toml")).unwrap();
}
