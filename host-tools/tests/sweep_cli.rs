//! `qualm sweep` on a few bundled multiclass test frames: severity 0 is the clean evaluation,
//! noise raises the mean entropy, and the result does not depend on the thread count.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Frames of the bundled labeled test set used here: few, so the test stays fast.
const FRAMES: usize = 6;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/multiclass")
}

/// A labeled folder with the first [`FRAMES`] frames of the bundled test set.
fn small_set(dir: &Path) -> String {
    let source = models().join("data/test");
    let mut stems: Vec<String> = fs::read_dir(source.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    stems.sort();
    for folder in ["images", "labels"] {
        fs::create_dir_all(dir.join(folder)).unwrap();
        for stem in &stems[..FRAMES] {
            let name = format!("{stem}.png");
            fs::copy(source.join(folder).join(&name), dir.join(folder).join(&name)).unwrap();
        }
    }
    dir.to_str().unwrap().into()
}

fn run_json(args: &[&str]) -> Value {
    let output = qualm(args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn row<'a>(json: &'a Value, corruption: &str, severity: u64) -> &'a Value {
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["corruption"] == corruption && r["severity"] == severity)
        .unwrap_or_else(|| panic!("no row {corruption} {severity} in {json}"))
}

#[test]
fn severity_zero_is_the_clean_evaluation_and_noise_raises_entropy() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set(dir.path());
    let card = models().join("multiclass_int8.toml");
    let card = card.to_str().unwrap();
    let sweep = |threads: &str| {
        run_json(&[
            "sweep",
            "--model",
            card,
            "--data",
            &data,
            "--severities",
            "0,3",
            "--corruptions",
            "gaussian-noise",
            "--threads",
            threads,
            "--json",
        ])
    };
    let json = sweep("2");
    assert_eq!(json["frames"], FRAMES);
    assert!(json["gate"]["source"].as_str().unwrap().contains("90th percentile"), "{json}");

    // Severity 0 is the clean frame, value for value.
    let clean = row(&json, "clean", 0);
    let zero = row(&json, "gaussian-noise", 0);
    for key in ["accuracy", "ece", "nll", "means", "keep_rate"] {
        assert_eq!(clean[key], zero[key], "{key}");
    }

    // And the clean row is the clean evaluation: `qualm calibrate` at T = 1 on the same frames.
    let calibrated = run_json(&["calibrate", "--model", card, "--data", &data, "--json"]);
    for key in ["accuracy", "ece", "mce", "nll", "brier"] {
        let (ours, theirs) = (clean[key].as_f64().unwrap(), calibrated["before"][key].as_f64());
        assert_eq!(Some(ours), theirs, "{key}");
    }

    // Noise of sigma 32 makes the model less sure on these frames.
    let noisy = row(&json, "gaussian-noise", 3);
    let entropy = |r: &Value| r["means"]["mean_entropy"].as_f64().unwrap();
    assert!(entropy(noisy) > entropy(clean), "noisy {} clean {}", entropy(noisy), entropy(clean));
    assert_eq!(noisy["parameter"], "sigma 32 levels");

    // The clean gate keeps frames above the 90th percentile of 6: only the largest.
    let keep = clean["keep_rate"].as_f64().unwrap();
    assert!(keep <= 1.0 / FRAMES as f64 + 1e-12, "keep {keep}");

    // Seeded per frame: another thread count gives the same numbers.
    assert_eq!(sweep("1")["rows"], json["rows"]);
}

#[test]
fn a_severity_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let card = models().join("multiclass_int8.toml");
    let output = qualm(&[
        "sweep",
        "--model",
        card.to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
        "--severities",
        "1,7",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("expected --severities from 0 to 3, found 7"), "{stderr}");
}
