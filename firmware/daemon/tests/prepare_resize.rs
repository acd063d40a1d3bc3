//! The model input `prepare` writes (fast_image_resize, triangle filter) against a plain f64
//! triangle resize and against the `image` crate's `Triangle` resize it replaced, on the real
//! frames of `models/frames/vtest`.

use std::path::{Path, PathBuf};

use image::RgbImage;
use qualm_daemon::card::{ModelCard, TensorLayout};
use qualm_daemon::model::InputPreparer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn frames() -> Vec<RgbImage> {
    let folder = root().join("models/frames/vtest");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jpg"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 40, "the 40 bundled frames");
    paths.iter().map(|path| image::open(path).unwrap().to_rgb8()).collect()
}

/// Triangle-filter weights of one axis from `from` to `to` samples, in f64: output sample `o`
/// is centred at `(o + 0.5) * from / to` in the source and takes source sample `i` (centre
/// `i + 0.5`) with weight `max(0, 1 - |i + 0.5 - centre| / scale)`, `scale = max(1, from /
/// to)`, normalized to sum 1.
fn triangle_weights(from: usize, to: usize) -> Vec<Vec<(usize, f64)>> {
    let ratio = from as f64 / to as f64;
    let scale = ratio.max(1.0);
    (0..to)
        .map(|output| {
            let centre = (output as f64 + 0.5) * ratio;
            let taps: Vec<(usize, f64)> = (0..from)
                .map(|input| (input, 1.0 - ((input as f64 + 0.5 - centre) / scale).abs()))
                .filter(|&(_, weight)| weight > 0.0)
                .collect();
            let total: f64 = taps.iter().map(|&(_, weight)| weight).sum();
            taps.into_iter().map(|(input, weight)| (input, weight / total)).collect()
        })
        .collect()
}

/// `frame` stretched to `width` x `height` with [`triangle_weights`] on both axes, unrounded.
fn reference_resize(frame: &RgbImage, width: usize, height: usize) -> Vec<[f64; 3]> {
    let (frame_width, frame_height) = (frame.width() as usize, frame.height() as usize);
    let columns = triangle_weights(frame_width, width);
    let rows = triangle_weights(frame_height, height);
    let mut horizontal = vec![[0.0; 3]; width * frame_height];
    for y in 0..frame_height {
        for (x, taps) in columns.iter().enumerate() {
            for &(input, weight) in taps {
                let pixel = frame.get_pixel(input as u32, y as u32).0;
                for channel in 0..3 {
                    horizontal[y * width + x][channel] += weight * f64::from(pixel[channel]);
                }
            }
        }
    }
    let mut resized = vec![[0.0; 3]; width * height];
    for (y, taps) in rows.iter().enumerate() {
        for x in 0..width {
            for &(input, weight) in taps {
                for channel in 0..3 {
                    resized[y * width + x][channel] +=
                        weight * horizontal[input * width + x][channel];
                }
            }
        }
    }
    resized
}

/// The prepared values of `frame` as pixel levels (0 to 255) per `[pixel][channel]`, undoing
/// the card's normalization and layout (the selfie cards are NCHW, RGB).
fn prepared_levels(card: &ModelCard, preparer: &mut InputPreparer, frame: &RgbImage) -> Vec<f64> {
    assert_eq!(card.input.layout, TensorLayout::Nchw);
    let mut input = vec![0.0f32; card.input.shape.iter().product()];
    preparer.prepare(frame, &mut input).unwrap();
    let plane = input.len() / 3;
    (0..plane)
        .flat_map(|pixel| (0..3).map(move |channel| (pixel, channel)))
        .map(|(pixel, channel)| {
            let value = f64::from(input[channel * plane + pixel]);
            let (mean, std) =
                (f64::from(card.input.mean[channel]), f64::from(card.input.std[channel]));
            (value * std + mean) * 255.0
        })
        .collect()
}

#[test]
fn prepared_frames_match_an_f64_triangle_resize_within_one_level() {
    let card = ModelCard::load(&root().join("models/selfie/selfie_int8.toml")).unwrap();
    let [_, _, height, width] = card.input.shape;
    let mut preparer = InputPreparer::new(&card.input);
    let mut worst = 0.0f64;
    for frame in frames().iter().step_by(8) {
        let levels = prepared_levels(&card, &mut preparer, frame);
        let reference = reference_resize(frame, width, height);
        for (pixel, expected) in reference.iter().enumerate() {
            for channel in 0..3 {
                worst = worst.max((levels[pixel * 3 + channel] - expected[channel]).abs());
            }
        }
    }
    // fast_image_resize works in fixed point and rounds to 8 bits between its two passes:
    // within one level of the exact value (rounding alone gives up to half a level).
    eprintln!("largest difference to the f64 triangle resize: {worst:.3} levels");
    assert!(worst <= 1.0 + 1e-3, "largest difference {worst} levels");
    assert!(worst >= 0.4, "values are rounded to whole levels: {worst}");
}

#[test]
fn prepared_frames_stay_within_one_level_of_the_image_crate_triangle_resize() {
    let card = ModelCard::load(&root().join("models/selfie/selfie_int8.toml")).unwrap();
    let [_, _, height, width] = card.input.shape;
    let mut preparer = InputPreparer::new(&card.input);
    let (mut worst, mut differing, mut values) = (0.0f64, 0usize, 0usize);
    for frame in &frames() {
        let levels = prepared_levels(&card, &mut preparer, frame);
        let old = image::imageops::resize(
            frame,
            width as u32,
            height as u32,
            image::imageops::FilterType::Triangle,
        );
        for (level, &expected) in levels.iter().zip(old.as_raw()) {
            let difference = (level - f64::from(expected)).abs();
            worst = worst.max(difference);
            differing += usize::from(difference > 0.5);
            values += 1;
        }
    }
    eprintln!(
        "against image's Triangle on 40 frames: largest difference {worst:.3} levels, \
         {differing} of {values} values differ"
    );
    assert!(worst <= 1.0 + 1e-3, "largest difference {worst} levels");
}
