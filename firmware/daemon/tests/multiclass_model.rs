//! The 9-class evaluation model (`models/multiclass`) under tract and under qualmd: tract's
//! logits against the onnxruntime logits committed beside the model, and one observing run.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use half::f16;
use npyz::NpyFile;
use qualm_daemon::card::ModelCard;
use qualm_daemon::ledger::read_ledger;
use qualm_daemon::model::SegmentationModel;

const CLASSES: usize = 9;
const SIDE: usize = 128;
const PLANE: usize = SIDE * SIDE;

/// Test frames whose onnxruntime int8 logits are committed (`logits/test/test_00NN.npy`).
const FRAMES: usize = 20;

fn multiclass() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/multiclass")
}

fn card() -> PathBuf {
    multiclass().join("multiclass_int8.toml")
}

fn frame(index: usize) -> PathBuf {
    multiclass().join(format!("data/test/images/test_{index:04}.png"))
}

/// onnxruntime's logits of one test frame, `[classes, height, width]` row-major, stored as f16.
fn reference_logits(index: usize) -> Vec<f32> {
    let path = multiclass().join(format!("logits/test/test_{index:04}.npy"));
    let npy = NpyFile::new(BufReader::new(File::open(&path).unwrap())).unwrap();
    assert_eq!(npy.shape(), [CLASSES as u64, SIDE as u64, SIDE as u64], "{}", path.display());
    let values: Vec<f16> = npy.into_vec().unwrap();
    values.into_iter().map(f16::to_f32).collect()
}

/// Class of the largest logit at each pixel of a `[classes, height * width]` map.
fn argmax(logits: &[f32]) -> Vec<usize> {
    (0..PLANE)
        .map(|pixel| {
            (0..CLASSES)
                .max_by(|&a, &b| logits[a * PLANE + pixel].total_cmp(&logits[b * PLANE + pixel]))
                .unwrap()
        })
        .collect()
}

#[test]
fn tract_matches_onnxruntime_on_the_committed_test_logits() {
    let mut model = SegmentationModel::load(&card()).unwrap();
    assert_eq!(model.card().output.classes.len(), CLASSES);

    let (mut max_difference, mut sum_difference, mut values) = (0.0f32, 0.0f64, 0usize);
    let (mut agreeing, mut worst_frame_agreement) = (0usize, 1.0f64);
    for index in 0..FRAMES {
        let image = image::open(frame(index)).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (SIDE as u32, SIDE as u32), "frames are fed unresized");
        model.prepare(&image).unwrap();
        let output = model.infer().unwrap();
        assert_eq!(output.shape(), [1, CLASSES, SIDE, SIDE]);
        let view = output.try_as_plain_ram().unwrap();
        let tract = view.as_slice::<f32>().unwrap();
        let reference = reference_logits(index);

        for (a, b) in tract.iter().zip(&reference) {
            let difference = (a - b).abs();
            max_difference = max_difference.max(difference);
            sum_difference += f64::from(difference);
        }
        values += reference.len();
        let same = argmax(tract).iter().zip(argmax(&reference)).filter(|(a, b)| *a == b).count();
        agreeing += same;
        worst_frame_agreement = worst_frame_agreement.min(same as f64 / PLANE as f64);
    }

    let mean_difference = sum_difference / values as f64;
    let agreement = agreeing as f64 / (FRAMES * PLANE) as f64;
    eprintln!(
        "tract vs onnxruntime, {FRAMES} frames: max |dz| {max_difference}, mean |dz| \
         {mean_difference:.6}, argmax agreement {agreement:.6} (worst frame \
         {worst_frame_agreement:.6})"
    );
}

#[test]
fn qualmd_observes_test_frames_with_nine_classes() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    fs::create_dir(&frames).unwrap();
    for index in 0..FRAMES {
        fs::copy(frame(index), frames.join(format!("test_{index:04}.png"))).unwrap();
    }

    let ledger = dir.path().join("ledger.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--model")
        .arg(card())
        .arg("--observe")
        .arg("--frames")
        .arg(&frames)
        .arg("--spool")
        .arg(dir.path().join("spool"))
        .arg("--ledger")
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let entries = read_ledger(&ledger).unwrap();
    let names: Vec<String> = (0..FRAMES).map(|index| format!("test_{index:04}")).collect();
    let seen: Vec<&str> = entries.iter().map(|entry| entry.frame.as_str()).collect();
    assert_eq!(seen, names, "one ledger line per frame, in name order");

    let card = ModelCard::load(&card()).unwrap();
    let mut predicted = [false; CLASSES];
    for entry in &entries {
        assert!(!entry.kept && entry.reason == "observe_only", "{entry:?}");
        let stats = entry.stats.unwrap();
        assert_eq!(stats.pixels as usize, PLANE);
        assert_eq!(stats.nonfinite_pixels, 0, "{}", entry.frame);
        for value in [
            stats.mean_entropy,
            stats.mean_max_softmax,
            stats.mean_margin,
            stats.mean_energy,
            stats.interior_mean_entropy,
            stats.uncertain_fraction,
        ] {
            assert!(value.is_finite(), "{}: {stats:?}", entry.frame);
        }
        // Normalized entropy H / ln 9 lies in [0, 1]; the top class of 9 has p >= 1/9.
        assert!((0.0..=1.0).contains(&stats.mean_entropy), "{}", entry.frame);
        assert!(stats.mean_max_softmax >= 1.0 / CLASSES as f32, "{}", entry.frame);

        assert_eq!(stats.classes_dropped, 0, "9 classes fit the class list");
        let pixels: u32 = stats.classes.iter().map(|class| class.pixels).sum();
        assert_eq!(pixels as usize, PLANE, "{}: every pixel has a class", entry.frame);
        for class in stats.classes.iter() {
            assert!(usize::from(class.class) < CLASSES, "{}: class {}", entry.frame, class.class);
            predicted[usize::from(class.class)] = true;
        }
    }
    assert_eq!(card.output.classes.len(), CLASSES);
    // The 20 frames show digits and all three textures: far more than a two-class map.
    let distinct = predicted.iter().filter(|&&seen| seen).count();
    assert!(distinct >= 6, "predicted classes {predicted:?}");
}
