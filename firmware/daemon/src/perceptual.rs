//! A 64-bit perceptual hash of a frame for near-duplicate suppression: the difference hash
//! (dHash) of the frame in gray, shrunk to 9x8.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};

/// The frame's difference hash: bit `8 * row + column` is set when, in the 9x8 gray thumbnail,
/// pixel `column` of that row is darker than pixel `column + 1`. Frames that look alike differ
/// in few bits (Hamming distance); a re-encode or sensor noise flips a handful.
pub fn difference_hash(frame: &RgbImage) -> u64 {
    let gray: GrayImage = imageops::grayscale(frame);
    let thumbnail = imageops::resize(&gray, 9, 8, FilterType::Triangle);
    let mut hash = 0u64;
    for row in 0..8 {
        for column in 0..8 {
            let left = thumbnail.get_pixel(column, row)[0];
            let right = thumbnail.get_pixel(column + 1, row)[0];
            if left < right {
                hash |= 1 << (8 * row + column);
            }
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(width: u32, rising: bool) -> RgbImage {
        RgbImage::from_fn(width, 48, |x, _| {
            let level = (x * 255 / (width - 1)) as u8;
            let level = if rising { level } else { 255 - level };
            image::Rgb([level, level, level])
        })
    }

    #[test]
    fn a_brightening_ramp_sets_every_bit_and_a_darkening_one_none() {
        assert_eq!(difference_hash(&ramp(90, true)), u64::MAX);
        assert_eq!(difference_hash(&ramp(90, false)), 0);
    }

    #[test]
    fn a_re_encoded_frame_is_near_and_a_mirrored_one_far() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/frames/vtest/vtest_0000.jpg");
        let frame = image::open(path).unwrap().to_rgb8();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 30)
            .encode_image(&frame)
            .unwrap();
        let re_encoded = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        let mirrored = imageops::flip_horizontal(&frame);
        let distance =
            |a: &RgbImage, b: &RgbImage| (difference_hash(a) ^ difference_hash(b)).count_ones();
        let (near, far) = (distance(&frame, &re_encoded), distance(&frame, &mirrored));
        eprintln!("re-encoded {near}, mirrored {far}");
        assert!(near <= 4, "re-encoded at quality 30: {near} bits differ");
        assert!(far >= 16, "mirrored: {far} bits differ");
    }
}
