//! `qualm stats` end to end: .npy files written here, the JSON output checked against an
//! independent f64 computation, and the error cases.
//!
//! Tolerances: 1e-5 absolute on means of scores in [0, 1] and 1e-4 on energy means (f32
//! scores summed in f64); histogram quantiles to one bin (1/256) plus 1e-6; counts exact.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

/// Writes `data` as a C-order .npy array of `shape` in `dir`.
fn write_npy<T: npyz::AutoSerialize + Clone>(
    dir: &Path,
    name: &str,
    shape: &[u64],
    data: &[T],
) -> PathBuf {
    let path = dir.join(name);
    common::write_npy(&path, shape, data);
    path
}

fn qualm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qualm")).args(args).output().unwrap()
}

/// Runs `qualm stats ... --json` and parses its one JSON object.
fn stats_json(args: &[&str]) -> Value {
    let mut all = vec!["stats"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = qualm(&all);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "qualm {all:?} failed: {stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "expected one line of JSON, found {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

/// Runs `qualm stats ...`, expects exit code 1, returns stderr.
fn stats_error(args: &[&str]) -> String {
    let mut all = vec!["stats"];
    all.extend_from_slice(args);
    let output = qualm(&all);
    assert_eq!(output.status.code(), Some(1), "qualm {all:?} should fail");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "expected one error line, found {stderr}");
    stderr
}

fn number(json: &Value, key: &str) -> f64 {
    json[key].as_f64().unwrap_or_else(|| panic!("no number at {key} in {json}"))
}

/// Deterministic logits in [-6, 6] with one class lifted by 5 per 4 x 4 block.
fn logits(c: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut data: Vec<f32> = (0..c * h * w)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 12.0 - 6.0
        })
        .collect();
    for y in 0..h {
        for x in 0..w {
            let class = (y / 4 * 3 + x / 4) % c;
            data[(class * h + y) * w + x] += 5.0;
        }
    }
    data
}

/// The f64 reference of a frame given per-pixel class logits (None = ignored).
struct Reference {
    scored: usize,
    nonfinite: usize,
    means: [f64; 4],
    entropies: Vec<f64>,
    uncertain_fraction: f64,
    boundary_fraction: f64,
    interior_mean_entropy: f64,
    segments: usize,
}

fn reference(pixels: &[Option<Vec<f64>>], h: usize, w: usize, t: f64, k: usize) -> Reference {
    // Scores per pixel by their definitions, from probabilities.
    let scores: Vec<Option<(usize, [f64; 4])>> = pixels
        .iter()
        .map(|logits| {
            let logits = logits.as_ref()?;
            if logits.iter().any(|z| z.is_nan() || *z == f64::INFINITY) {
                return Some((usize::MAX, [f64::NAN; 4]));
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let top = logits.iter().position(|&z| z == max).unwrap();
            let sum: f64 = logits.iter().map(|z| ((z - max) / t).exp()).sum();
            let mut p: Vec<f64> = logits.iter().map(|z| ((z - max) / t).exp() / sum).collect();
            let entropy = if logits.len() > 1 {
                -p.iter().filter(|&&p| p > 0.0).map(|p| p * p.ln()).sum::<f64>()
                    / (logits.len() as f64).ln()
            } else {
                0.0
            };
            let energy = -t * (max / t + sum.ln());
            let p1 = p[top];
            p[top] = 0.0;
            let p2 = p.iter().copied().fold(0.0, f64::max);
            Some((top, [p1, entropy, p1 - p2, energy]))
        })
        .collect();

    let nonfinite = scores.iter().filter(|s| matches!(s, Some((usize::MAX, _)))).count();
    let valid: Vec<usize> =
        (0..h * w).filter(|&p| matches!(scores[p], Some((c, _)) if c != usize::MAX)).collect();
    let score = |p: usize, i: usize| scores[p].unwrap().1[i];
    let n = valid.len() as f64;
    let means = [0, 1, 2, 3].map(|i| valid.iter().map(|&p| score(p, i)).sum::<f64>() / n);
    let entropies: Vec<f64> = valid.iter().map(|&p| score(p, 1)).collect();
    let uncertain_fraction = entropies.iter().filter(|&&e| e > 0.5).count() as f64 / n;

    // Band by definition over the class map (non-finite pixels as class 0).
    let class = |p: usize| match scores[p] {
        Some((c, _)) if c != usize::MAX => c,
        _ => 0,
    };
    let in_band = |p: usize| {
        let (x, y) = (p % w, p / w);
        (y.saturating_sub(k)..(y + k + 1).min(h)).any(|v| {
            (x.saturating_sub(k)..(x + k + 1).min(w)).any(|u| class(v * w + u) != class(p))
        })
    };
    let band: Vec<usize> = valid.iter().copied().filter(|&p| in_band(p)).collect();
    let interior: Vec<usize> = valid.iter().copied().filter(|&p| !in_band(p)).collect();
    let interior_mean_entropy =
        interior.iter().map(|&p| score(p, 1)).sum::<f64>() / interior.len().max(1) as f64;

    // Segments by flood fill over scored pixels, 8-connectivity.
    let mut seen = vec![false; h * w];
    let mut segments = 0;
    for &seed in &valid {
        if seen[seed] {
            continue;
        }
        segments += 1;
        seen[seed] = true;
        let mut queue = VecDeque::from([seed]);
        while let Some(p) = queue.pop_front() {
            let (x, y) = ((p % w) as i64, (p / w) as i64);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (u, v) = (x + dx, y + dy);
                    if u < 0 || v < 0 || u >= w as i64 || v >= h as i64 {
                        continue;
                    }
                    let q = v as usize * w + u as usize;
                    if !seen[q] && valid.contains(&q) && class(q) == class(seed) {
                        seen[q] = true;
                        queue.push_back(q);
                    }
                }
            }
        }
    }

    Reference {
        scored: valid.len(),
        nonfinite,
        means,
        entropies,
        uncertain_fraction,
        boundary_fraction: band.len() as f64 / n,
        interior_mean_entropy,
        segments,
    }
}

/// Compares the JSON with the reference.
fn check(json: &Value, want: &Reference) {
    let keys = ["mean_max_softmax", "mean_entropy", "mean_margin", "mean_energy"];
    for (key, mean) in keys.iter().zip(want.means) {
        let tolerance = if *key == "mean_energy" { 1e-4 } else { 1e-5 };
        assert!((number(json, key) - mean).abs() < tolerance, "{key}: {} vs {mean}", json[key]);
    }
    let mut sorted = want.entropies.clone();
    sorted.sort_by(f64::total_cmp);
    for (key, q) in [("p50_entropy", 0.5), ("p90_entropy", 0.9), ("p99_entropy", 0.99)] {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        let got = number(json, key);
        assert!(
            (got - sorted[rank]).abs() <= 1.0 / 256.0 + 1e-6,
            "{key}: {got} vs {}",
            sorted[rank]
        );
    }
    assert!((number(json, "uncertain_fraction") - want.uncertain_fraction).abs() < 1e-6);
    assert!((number(json, "boundary_fraction") - want.boundary_fraction).abs() < 1e-6);
    let interior = number(json, "interior_mean_entropy");
    assert!((interior - want.interior_mean_entropy).abs() < 1e-5, "interior entropy {interior}");
    assert_eq!(number(json, "segments") as usize, want.segments, "segments");
    assert_eq!(number(json, "nonfinite_pixels") as usize, want.nonfinite);
    let scored =
        number(json, "pixels") - number(json, "ignored_pixels") - number(json, "nonfinite_pixels");
    assert_eq!(scored as usize, want.scored);
}

/// Per-pixel f64 logits of a `[c, h, w]` array.
fn chw_pixels(data: &[f32], c: usize, h: usize, w: usize) -> Vec<Option<Vec<f64>>> {
    (0..h * w).map(|p| Some((0..c).map(|k| f64::from(data[k * h * w + p])).collect())).collect()
}

#[test]
fn float32_chw_matches_f64_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h, w) = (5, 9, 11);
    let mut data = logits(c, h, w, 1);
    data[3] = f32::NAN;
    let path = write_npy(dir.path(), "logits.npy", &[c as u64, h as u64, w as u64], &data);

    let json = stats_json(&["--logits", path.to_str().unwrap()]);
    check(&json, &reference(&chw_pixels(&data, c, h, w), h, w, 1.0, 2));
    assert_eq!(number(&json, "nonfinite_pixels"), 1.0);

    // Every statistic the gate knows is a top-level JSON key.
    for statistic in qualm_core::Statistic::ALL {
        assert!(json.get(statistic.as_str()).is_some(), "no key {statistic}");
    }
    assert!(json["segment_list"].is_array() && json["classes"].is_array());
}

#[test]
fn temperature_and_boundary_width_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h, w) = (4, 12, 10);
    let data = logits(c, h, w, 2);
    let path = write_npy(dir.path(), "logits.npy", &[c as u64, h as u64, w as u64], &data);

    let args =
        ["--logits", path.to_str().unwrap(), "--temperature", "2.5", "--boundary-width", "1"];
    let json = stats_json(&args);
    check(&json, &reference(&chw_pixels(&data, c, h, w), h, w, 2.5, 1));
}

#[test]
fn hwc_and_batched_layouts_give_the_same_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h, w) = (3, 8, 6);
    let data = logits(c, h, w, 3);
    let mut hwc = vec![0.0f32; data.len()];
    for k in 0..c {
        for p in 0..h * w {
            hwc[p * c + k] = data[k * h * w + p];
        }
    }
    let chw = write_npy(dir.path(), "chw.npy", &[1, c as u64, h as u64, w as u64], &data);
    let hwc = write_npy(dir.path(), "hwc.npy", &[h as u64, w as u64, c as u64], &hwc);

    let from_chw = stats_json(&["--logits", chw.to_str().unwrap()]);
    let from_hwc = stats_json(&["--logits", hwc.to_str().unwrap(), "--layout", "hwc"]);
    assert_eq!(from_chw, from_hwc);
    check(&from_chw, &reference(&chw_pixels(&data, c, h, w), h, w, 1.0, 2));
}

#[test]
fn int8_is_read_with_scale_and_zero_point() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h, w) = (6, 7, 7);
    let q: Vec<i8> = logits(c, h, w, 4).iter().map(|&z| (z * 10.0).round() as i8).collect();
    let path = write_npy(dir.path(), "q.npy", &[c as u64, h as u64, w as u64], &q);

    let json =
        stats_json(&["--logits", path.to_str().unwrap(), "--scale", "0.1", "--zero-point", "-3"]);
    let real: Vec<f32> = q.iter().map(|&v| 0.1 * (f32::from(v) + 3.0)).collect();
    check(&json, &reference(&chw_pixels(&real, c, h, w), h, w, 1.0, 2));

    let unsigned: Vec<u8> = q.iter().map(|&v| (i16::from(v) + 128) as u8).collect();
    let path = write_npy(dir.path(), "u.npy", &[c as u64, h as u64, w as u64], &unsigned);
    let shifted =
        stats_json(&["--logits", path.to_str().unwrap(), "--scale", "0.1", "--zero-point", "125"]);
    assert_eq!(json, shifted);
}

#[test]
fn float16_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h, w) = (3, 5, 6);
    let data: Vec<half::f16> = logits(c, h, w, 5).iter().map(|&z| half::f16::from_f32(z)).collect();
    let path = write_npy(dir.path(), "half.npy", &[c as u64, h as u64, w as u64], &data);

    let json = stats_json(&["--logits", path.to_str().unwrap()]);
    let real: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
    check(&json, &reference(&chw_pixels(&real, c, h, w), h, w, 1.0, 2));
}

#[test]
fn two_dimensional_array_is_a_sigmoid_logit() {
    let dir = tempfile::tempdir().unwrap();
    let (h, w) = (6, 5);
    let z = logits(1, h, w, 6);
    let path = write_npy(dir.path(), "mask.npy", &[h as u64, w as u64], &z);

    let json = stats_json(&["--logits", path.to_str().unwrap()]);
    let pixels: Vec<Option<Vec<f64>>> = z.iter().map(|&z| Some(vec![0.0, f64::from(z)])).collect();
    check(&json, &reference(&pixels, h, w, 1.0, 2));

    // The same values as probabilities of the positive class.
    let p: Vec<f32> = z.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
    let path = write_npy(dir.path(), "p.npy", &[h as u64, w as u64], &p);
    let json = stats_json(&["--logits", path.to_str().unwrap(), "--kind", "sigmoid-probability"]);
    let pixels: Vec<Option<Vec<f64>>> =
        p.iter().map(|&p| Some(vec![(1.0 - f64::from(p)).ln(), f64::from(p).ln()])).collect();
    let want = reference(&pixels, h, w, 1.0, 2);
    assert!((number(&json, "mean_entropy") - want.means[1]).abs() < 1e-4);
}

#[test]
fn roi_mask_removes_pixels_from_every_statistic() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h, w) = (3, 10, 8);
    let data = logits(c, h, w, 7);
    let path = write_npy(dir.path(), "logits.npy", &[c as u64, h as u64, w as u64], &data);
    let keep = |x: u32, y: u32| x + y > 5;
    let mask = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([if keep(x, y) { 200 } else { 0 }])
    });
    let roi = dir.path().join("roi.png");
    mask.save(&roi).unwrap();

    let json = stats_json(&["--logits", path.to_str().unwrap(), "--roi", roi.to_str().unwrap()]);
    let mut pixels = chw_pixels(&data, c, h, w);
    let mut ignored = 0;
    for (p, pixel) in pixels.iter_mut().enumerate() {
        if !keep((p % w) as u32, (p / w) as u32) {
            ignored += 1;
            *pixel = None;
        }
    }
    assert_eq!(number(&json, "ignored_pixels") as usize, ignored);

    // Means, quantiles and segments over kept pixels only (the band is checked elsewhere).
    let want = reference(&pixels, h, w, 1.0, 0);
    for (key, mean) in ["mean_max_softmax", "mean_entropy", "mean_margin"].iter().zip(want.means) {
        assert!((number(&json, key) - mean).abs() < 1e-5, "{key}");
    }
    assert_eq!(number(&json, "segments") as usize, want.segments);
}

#[test]
fn table_without_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_npy(dir.path(), "l.npy", &[2, 3, 3], &logits(2, 3, 3, 8));
    let output = qualm(&["stats", "--logits", path.to_str().unwrap()]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("entropy") && stdout.contains("segments"), "{stdout}");
}

#[test]
fn errors_name_the_file_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let q = write_npy(dir.path(), "q.npy", &[2, 2, 2], &[1i8; 8]);
    let message = stats_error(&["--logits", q.to_str().unwrap()]);
    assert!(message.contains("q.npy") && message.contains("expected --scale"), "{message}");

    let f64s = write_npy(dir.path(), "d.npy", &[2, 2, 2], &[1.0f64; 8]);
    let message = stats_error(&["--logits", f64s.to_str().unwrap()]);
    assert!(message.contains("d.npy") && message.contains("found dtype <f8"), "{message}");

    let flat = write_npy(dir.path(), "flat.npy", &[8], &[1.0f32; 8]);
    let message = stats_error(&["--logits", flat.to_str().unwrap()]);
    assert!(message.contains("flat.npy") && message.contains("found shape [8]"), "{message}");

    let batch = write_npy(dir.path(), "b.npy", &[2, 1, 2, 2], &[1.0f32; 8]);
    let message = stats_error(&["--logits", batch.to_str().unwrap()]);
    assert!(message.contains("expected a batch of 1") && message.contains("found 2"), "{message}");

    let float = write_npy(dir.path(), "f.npy", &[2, 3, 4], &[1.0f32; 24]);
    let roi = dir.path().join("small.png");
    image::GrayImage::new(3, 3).save(&roi).unwrap();
    let message =
        stats_error(&["--logits", float.to_str().unwrap(), "--roi", roi.to_str().unwrap()]);
    assert!(
        message.contains("small.png") && message.contains("4x3") && message.contains("found 3x3"),
        "{message}"
    );

    let message = stats_error(&["--logits", float.to_str().unwrap(), "--temperature", "0"]);
    assert!(message.contains("expected --temperature"), "{message}");

    let message = stats_error(&["--logits", float.to_str().unwrap(), "--kind", "sigmoid-logit"]);
    assert!(message.contains("f.npy") && message.contains("found 2"), "{message}");

    let missing = dir.path().join("missing.npy");
    let message = stats_error(&["--logits", missing.to_str().unwrap()]);
    assert!(message.contains("missing.npy"), "{message}");
}
