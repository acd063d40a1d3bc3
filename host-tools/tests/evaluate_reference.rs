//! `qualm evaluate --json` against an independent float64 reference with scikit-learn
//! (`tests/reference/sklearn_metrics.py`), on generated logits and labels.
//!
//! The reference needs Python 3 with numpy, scipy and scikit-learn. `.ci/run` installs them
//! into a virtual environment and points `QUALM_PYTHON` at its interpreter; without the
//! variable the test uses `python3` and fails, saying so, when scikit-learn is missing.
//!
//! Tolerances: calibration metrics (accuracy, ECE, MCE, NLL, Brier) to 1e-5 absolute, since
//! qualm sums f32 logits in f64 and the reference works in f64 throughout. Ranking metrics to
//! 2e-4: qualm ranks f32 scores from a fast `exp`, so pixels whose reference scores differ by
//! less than the f32 rounding may swap places or tie; on 20,000 pixels that moves AUROC by
//! far less than this. The tie cases draw every pixel from a few logit vectors, so the scores
//! tie exactly in both and must agree to 1e-9.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{Random, write_npy};

const SCORES: [&str; 4] = ["max_softmax", "entropy", "margin", "energy"];
const PIXEL_METRICS: [&str; 4] = ["auroc", "aupr_error", "fpr_at_95_tpr", "aurc"];

/// A generated data set on disk: logits/*.npy, labels/*.png, and the labels again as
/// labels_npy/*.npy for the reference (which reads no PNG).
struct Case {
    _dir: tempfile::TempDir,
    logits: PathBuf,
    labels: PathBuf,
    labels_npy: PathBuf,
}

/// How the logits of one pixel are drawn, given its label.
enum Draw {
    /// The label's logit lifted by a random amount over Gaussian noise of `noise`: a model
    /// that is right on most pixels and unsure on some.
    Noisy { noise: f64 },
    /// One of a few fixed logit vectors, so scores tie exactly.
    Palette(Vec<Vec<f32>>),
}

fn generate(seed: u64, frames: usize, classes: usize, side: (usize, usize), draw: &Draw) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let (logits, labels, labels_npy) =
        (dir.path().join("logits"), dir.path().join("labels"), dir.path().join("labels_npy"));
    for folder in [&logits, &labels, &labels_npy] {
        std::fs::create_dir(folder).unwrap();
    }

    let mut random = Random(seed);
    let (height, width) = side;
    let pixels = height * width;
    for frame in 0..frames {
        // Labels: a few rectangles of classes on a random background class, 5% ignored.
        let mut label = vec![random.below(classes) as u8; pixels];
        for _ in 0..3 {
            let class = random.below(classes) as u8;
            let (y0, x0) = (random.below(height), random.below(width));
            let (h, w) = (1 + random.below(height / 2), 1 + random.below(width / 2));
            for y in y0..(y0 + h).min(height) {
                label[y * width + x0..y * width + (x0 + w).min(width)].fill(class);
            }
        }
        for value in &mut label {
            if random.next() < 0.05 {
                *value = 255;
            }
        }

        // A frame-wide difficulty, so that some frames fail and others pass.
        let difficulty = random.next() * 4.0;
        let mut values = vec![0.0f32; classes * pixels];
        for (pixel, &class) in label.iter().enumerate() {
            let vector: Vec<f32> = match draw {
                Draw::Noisy { noise } => {
                    let lift = 4.5 + random.normal() - difficulty;
                    let true_class =
                        if class == 255 { random.below(classes) } else { class.into() };
                    (0..classes)
                        .map(|c| {
                            let signal = if c == true_class { lift } else { 0.0 };
                            (signal + noise * random.normal()) as f32
                        })
                        .collect()
                }
                Draw::Palette(vectors) => vectors[random.below(vectors.len())].clone(),
            };
            for (c, z) in vector.into_iter().enumerate() {
                values[c * pixels + pixel] = z;
            }
        }

        let stem = format!("frame_{frame:03}");
        let shape = [classes as u64, height as u64, width as u64];
        write_npy(&logits.join(format!("{stem}.npy")), &shape, &values);
        write_npy(&labels_npy.join(format!("{stem}.npy")), &shape[1..], &label);
        image::GrayImage::from_raw(width as u32, height as u32, label)
            .unwrap()
            .save(labels.join(format!("{stem}.png")))
            .unwrap();
    }
    Case { _dir: dir, logits, labels, labels_npy }
}

fn qualm_evaluate(case: &Case, temperature: f64, failed_iou: f64) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_qualm"))
        .arg("evaluate")
        .arg("--logits")
        .arg(&case.logits)
        .arg("--labels")
        .arg(&case.labels)
        .args(["--temperature", &temperature.to_string()])
        .args(["--failed-iou", &failed_iou.to_string()])
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "qualm evaluate failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn reference(case: &Case, temperature: f64, failed_iou: f64) -> Value {
    let python = std::env::var("QUALM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sklearn_metrics.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&case.logits)
        .arg(&case.labels_npy)
        .arg(temperature.to_string())
        .arg(failed_iou.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the scikit-learn reference failed (it needs numpy, scipy and scikit-learn; `bash \
         .ci/run` installs them and sets QUALM_PYTHON): {stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Asserts that two JSON numbers agree to `tolerance`, or that both are null.
fn assert_close(what: &str, ours: &Value, theirs: &Value, tolerance: f64) {
    match (ours.as_f64(), theirs.as_f64()) {
        (Some(a), Some(b)) => {
            assert!((a - b).abs() <= tolerance, "{what}: qualm {a}, reference {b}, tol {tolerance}")
        }
        (None, None) => assert!(ours.is_null() && theirs.is_null(), "{what}: {ours} vs {theirs}"),
        _ => panic!("{what}: qualm {ours}, reference {theirs}"),
    }
}

fn compare(case: &Case, temperature: f64, failed_iou: f64, ranking_tolerance: f64) -> Value {
    let ours = qualm_evaluate(case, temperature, failed_iou);
    let theirs = reference(case, temperature, failed_iou);
    for key in ["accuracy", "ece", "mce", "nll", "brier"] {
        assert_close(key, &ours[key], &theirs[key], 1e-5);
    }
    assert_eq!(ours["failed_frames"]["failed"], theirs["failed_frames"], "failed frames");
    for score in SCORES {
        for metric in PIXEL_METRICS {
            let (a, b) = (
                &ours["scores"][score]["pixel"][metric],
                &theirs["scores"][score]["pixel"][metric],
            );
            assert_close(&format!("{score} pixel {metric}"), a, b, ranking_tolerance);
        }
        let (a, b) =
            (&ours["scores"][score]["frame"]["auroc"], &theirs["scores"][score]["frame"]["auroc"]);
        assert_close(&format!("{score} frame auroc"), a, b, 1e-9);
    }
    ours
}

#[test]
fn noisy_logits_match_scikit_learn_at_two_temperatures() {
    let case = generate(11, 24, 5, (24, 32), &Draw::Noisy { noise: 1.0 });
    for temperature in [1.0, 1.7] {
        let ours = compare(&case, temperature, 0.5, 2e-4);

        // The case must exercise what it claims: errors and correct pixels, failed and passed.
        let errors = ours["scores"]["entropy"]["pixel"]["errors"].as_u64().unwrap();
        let correct = ours["scores"]["entropy"]["pixel"]["correct"].as_u64().unwrap();
        assert!(errors > 1000 && correct > 1000, "{errors} errors, {correct} correct");
        let failed = ours["failed_frames"]["failed"].as_u64().unwrap();
        assert!(failed > 2 && failed < 22, "{failed} of 24 frames failed");
    }
}

#[test]
fn many_classes_match_scikit_learn() {
    let case = generate(5, 8, 40, (16, 16), &Draw::Noisy { noise: 0.6 });
    compare(&case, 1.0, 0.3, 2e-4);
}

#[test]
fn exact_ties_count_one_half_as_in_scikit_learn() {
    // Four logit vectors for three classes: every pixel's score is one of four values, and
    // whether it is an error depends on its label, so each tie group mixes both classes.
    let palette =
        vec![vec![2.0, 0.0, 0.0], vec![0.0, 1.0, 0.5], vec![0.3, 0.3, 0.0], vec![-1.0, -1.0, 4.0]];
    let case = generate(3, 12, 3, (10, 12), &Draw::Palette(palette));
    compare(&case, 1.0, 0.5, 1e-9);
}

#[test]
fn saturated_confidences_of_exactly_one_match_scikit_learn() {
    // Confidence exactly 1 (the last reliability bin's right edge) and a near-uniform
    // confidence in the first occupied bin, with errors in both.
    let palette = vec![vec![60.0, -60.0], vec![-60.0, 60.0], vec![0.01, 0.0], vec![0.0, 0.02]];
    let case = generate(8, 10, 2, (12, 12), &Draw::Palette(palette));
    compare(&case, 1.0, 0.5, 1e-9);
}

#[test]
fn all_pixels_right_gives_null_pixel_metrics_with_a_reason() {
    // Logits that always pick class 0, on labels that are all 0 (or ignored).
    let dir = tempfile::tempdir().unwrap();
    let (logits, labels) = (dir.path().join("logits"), dir.path().join("labels"));
    std::fs::create_dir(&logits).unwrap();
    std::fs::create_dir(&labels).unwrap();
    let mut values = vec![0.0f32; 3 * 16];
    values[..16].fill(3.0);
    write_npy(&logits.join("a.npy"), &[3, 4, 4], &values);
    let mut label = vec![0u8; 16];
    label[5] = 255;
    image::GrayImage::from_raw(4, 4, label).unwrap().save(labels.join("a.png")).unwrap();

    let case = Case { _dir: dir, labels_npy: PathBuf::new(), logits, labels };
    let ours = qualm_evaluate(&case, 1.0, 0.5);
    assert_eq!(ours["accuracy"].as_f64(), Some(1.0));
    for score in SCORES {
        let pixel = &ours["scores"][score]["pixel"];
        assert!(pixel["auroc"].is_null(), "{score}: {pixel}");
        assert!(pixel["fpr_at_95_tpr"].is_null(), "{score}: {pixel}");
        assert!(pixel["aupr_error"].is_null(), "{score}: {pixel}");
        assert_eq!(pixel["aurc"].as_f64(), Some(0.0), "{score}: risk is 0 at every coverage");
        assert!(pixel["reason"].as_str().unwrap().contains("no error pixels"), "{pixel}");
    }
}

#[test]
fn ignore_pixels_only_gives_null_calibration_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (logits, labels) = (dir.path().join("logits"), dir.path().join("labels"));
    std::fs::create_dir(&logits).unwrap();
    std::fs::create_dir(&labels).unwrap();
    write_npy(&logits.join("a.npy"), &[2, 3, 3], &[0.5f32; 18]);
    image::GrayImage::from_raw(3, 3, vec![255u8; 9]).unwrap().save(labels.join("a.png")).unwrap();

    let case = Case { _dir: dir, labels_npy: PathBuf::new(), logits, labels };
    let ours = qualm_evaluate(&case, 1.0, 0.5);
    for key in ["accuracy", "ece", "mce", "nll", "brier"] {
        assert!(ours[key].is_null(), "{key}: {}", ours[key]);
    }
    assert!(ours["reason"].is_string(), "{ours}");
    assert!(ours["scores"]["entropy"]["pixel"]["auroc"].is_null());
    assert_eq!(ours["pixels"].as_u64(), Some(0));
}

/// One frame `a` of 2 x 3 x 3 logits and a label, in folders of their own; returns the
/// arguments of `qualm evaluate` for them.
fn one_frame(dir: &Path, logits: &[f32], label: image::GrayImage) -> Vec<String> {
    let (logits_dir, labels_dir) = (dir.join("logits"), dir.join("labels"));
    std::fs::create_dir_all(&logits_dir).unwrap();
    std::fs::create_dir_all(&labels_dir).unwrap();
    write_npy(&logits_dir.join("a.npy"), &[2, 3, 3], logits);
    label.save(labels_dir.join("a.png")).unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    ["evaluate", "--logits", &path(logits_dir), "--labels", &path(labels_dir), "--json"]
        .map(String::from)
        .to_vec()
}

/// Runs qualm with `args`, expects exit code 1, and returns stderr.
fn refused(args: &[String]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "no partial report");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_inputs_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = image::GrayImage::new(3, 3);

    // NaN and +inf logits: one line naming the file, class and pixel.
    let mut values = [0.5f32; 18];
    values[9 + 4] = f32::NAN;
    let message = refused(&one_frame(&dir.path().join("nan"), &values, zeros.clone()));
    assert!(message.contains("a.npy: expected finite logits (or -inf), found NaN"), "{message}");
    assert!(message.contains("class 1 at x 1, y 1"), "{message}");

    // -inf is a class ruled out, not an error.
    values[9 + 4] = f32::NEG_INFINITY;
    let args = one_frame(&dir.path().join("neg"), &values, zeros.clone());
    let output = Command::new(env!("CARGO_BIN_EXE_qualm")).args(&args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // A label of another size, and a label with a class id the logits do not have.
    let message =
        refused(&one_frame(&dir.path().join("size"), &[0.0; 18], image::GrayImage::new(4, 3)));
    assert!(message.contains("a.png: expected a label of 3x3"), "{message}");
    assert!(message.contains("found 4x3"), "{message}");
    let mut label = zeros.clone();
    label.put_pixel(2, 0, image::Luma([7]));
    let message = refused(&one_frame(&dir.path().join("class"), &[0.0; 18], label));
    assert!(message.contains("a.png: expected class ids 0 to 1 or 255"), "{message}");
    assert!(message.contains("found 7 at x 2, y 0"), "{message}");

    // A missing label, and an empty folder.
    let args = one_frame(&dir.path().join("missing"), &[0.0; 18], zeros);
    std::fs::remove_file(dir.path().join("missing/labels/a.png")).unwrap();
    let message = refused(&args);
    assert!(message.contains("a.png: expected the label of frame"), "{message}");
    std::fs::remove_file(dir.path().join("missing/logits/a.npy")).unwrap();
    let message = refused(&args);
    assert!(message.contains("logits: expected at least one .npy file, found none"), "{message}");
}

#[test]
fn calibrate_fits_the_nll_minimum_and_reports_the_reference_metrics() {
    let case = generate(21, 12, 4, (20, 20), &Draw::Noisy { noise: 1.3 });
    let plot = case.logits.with_file_name("reliability");
    let output = Command::new(env!("CARGO_BIN_EXE_qualm"))
        .arg("calibrate")
        .arg("--logits")
        .arg(&case.logits)
        .arg("--labels")
        .arg(&case.labels)
        .args(["--fit-stride", "1", "--json", "--plot"])
        .arg(&plot)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ours: Value = serde_json::from_slice(&output.stdout).unwrap();
    let temperature = ours["temperature"].as_f64().unwrap();
    assert!(ours["fit"]["converged"].as_bool().unwrap(), "{ours}");

    // The metrics at the fitted T and at T = 1 are the reference's at those temperatures.
    let at_fit = reference(&case, temperature, 0.5);
    let at_one = reference(&case, 1.0, 0.5);
    for key in ["accuracy", "ece", "mce", "nll", "brier"] {
        assert_close(key, &ours[key], &at_fit[key], 1e-5);
        assert_close(&format!("before {key}"), &ours["before"][key], &at_one[key], 1e-5);
    }

    // The fitted T minimizes the reference NLL: 1% either side is no better.
    let nll = |t: f64| reference(&case, t, 0.5)["nll"].as_f64().unwrap();
    let best = nll(temperature);
    assert!(best <= nll(temperature * 1.01) + 1e-9 && best <= nll(temperature / 1.01) + 1e-9);
    assert!((temperature - 1.0).abs() > 0.05, "the case needs a temperature away from 1");

    for extension in ["png", "svg"] {
        let path = plot.with_extension(extension);
        assert!(std::fs::metadata(&path).unwrap().len() > 1000, "{}", path.display());
    }
}
