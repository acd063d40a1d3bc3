//! What a new user ran into: `qualm ... | head` panicking on the closed pipe, and
//! `thresholds --out` replacing a calibration file without a word.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use qualm_core::FrameStats;

mod common;

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

/// `qualm thresholds --ledger LEDGER --keep-rate 0.1 --out OUT` and `extra`.
fn thresholds(ledger: &Path, out: &Path, extra: &[&str]) -> Output {
    let (ledger, out) = (ledger.to_str().unwrap(), out.to_str().unwrap());
    qualm(
        &[&["thresholds", "--ledger", ledger, "--keep-rate", "0.1", "--out", out], extra].concat(),
    )
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

    let output = thresholds(&ledger, &out, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}: the calibration file exists already", out.display());
    assert!(stderr.contains(&expected) && stderr.contains("--force"), "{stderr}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "in use\n", "the file is untouched");

    let output = thresholds(&ledger, &out, &["--force"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(fs::read_to_string(&out).unwrap().contains("threshold"));
}

#[test]
fn a_mixed_ledger_names_the_settings_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let time = "2026-01-01T00:00:00Z";
    let first = common::ledger_entry("a".into(), time, FrameStats::default());
    let mut second = common::ledger_entry("b".into(), time, FrameStats::default());
    second.temperature = None;
    common::write_ledger(&ledger, &[first, second]);
    let output = thresholds(&ledger, &dir.path().join("c.toml"), &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let model = "ab".repeat(32);
    let expected = format!(
        "found frame b with model {model}, temperature none, uncertain level 0.5 after frames \
         with model {model}, temperature 1.5, uncertain level 0.5"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("Some("), "{stderr}");
}

/// Softmax of `[C, H, W]` logits, per pixel, in f64.
fn softmax(logits: &[f32], channels: usize) -> Vec<f32> {
    let plane = logits.len() / channels;
    let mut out = vec![0.0; logits.len()];
    for pixel in 0..plane {
        let z: Vec<f64> = (0..channels).map(|c| f64::from(logits[c * plane + pixel])).collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        for c in 0..channels {
            out[c * plane + pixel] = ((z[c] - max).exp() / sum) as f32;
        }
    }
    out
}

fn stats(args: &[&str]) -> Output {
    qualm(&[&["stats"], args].concat())
}

#[test]
fn logits_read_as_probabilities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logits: Vec<f32> = (0..3 * 8 * 8).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let logits_path = dir.path().join("logits.npy");
    common::write_npy(&logits_path, &[3, 8, 8], &logits);
    let output = stats(&["--logits", logits_path.to_str().unwrap(), "--kind", "probabilities"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("logits.npy: cannot read the values as probabilities"), "{stderr}");
    assert!(stderr.contains("these look like logits"), "{stderr}");

    // Their softmax is accepted and scores as the logits do (entropy of p is entropy of z).
    let probabilities_path = dir.path().join("probabilities.npy");
    common::write_npy(&probabilities_path, &[3, 8, 8], &softmax(&logits, 3));
    let json = |args: &[&str]| -> serde_json::Value {
        let output = stats(&[args, &["--json"]].concat());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let from_logits = json(&["--logits", logits_path.to_str().unwrap()]);
    let probabilities = probabilities_path.to_str().unwrap();
    let from_probabilities = json(&["--logits", probabilities, "--kind", "probabilities"]);
    let entropy = |j: &serde_json::Value| j["mean_entropy"].as_f64().unwrap();
    assert!((entropy(&from_logits) - entropy(&from_probabilities)).abs() < 1e-5);
    assert_eq!(from_probabilities["nonfinite_pixels"], 0);

    // Values in [0, 1] that do not sum to 1 are not softmax outputs either.
    let halves = vec![0.5f32; 3 * 8 * 8];
    common::write_npy(&probabilities_path, &[3, 8, 8], &halves);
    let output = stats(&["--logits", probabilities, "--kind", "probabilities"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("found a sum of 1.5 at y 0, x 0"), "{stderr}");
}

#[test]
fn a_short_npy_says_bytes_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.npy");
    common::write_npy(&path, &[2, 4, 4], &[0.5f32; 32]);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let output = stats(&["--logits", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = "cut.npy: expected 128 bytes of array data for shape [2, 4, 4], found 118";
    assert!(stderr.contains(expected), "{stderr}");
}

/// `qualm drift --calibration models/selfie/calibration.toml` needs the reference the
/// committed file once lacked.
#[test]
fn the_committed_calibration_carries_its_drift_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("models/selfie/calibration.toml");
    let calibration = qualm_daemon::calibration::Calibration::load(&path).unwrap();
    let reference = calibration.provenance.reference.expect("a [provenance.reference] table");
    assert_eq!((reference.frames, reference.kind.as_str()), (795, "quantiles"));
    let entropy = &reference.statistics["interior_mean_entropy"];
    assert_eq!(entropy.len(), 100);
    assert!(entropy.windows(2).all(|w| w[0] <= w[1]), "sorted quantiles");
}
