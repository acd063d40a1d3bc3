//! Decoding frame files with bounds: a pixel and memory limit, and a guard against JPEG files
//! cut short. qualmd's folder source and the `qualm` host tools decode frames through here.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, bail};
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};
use serde::Deserialize;

/// The `[decode]` table: the largest frame a file may decode to. A frame over a limit is
/// refused before its pixels are allocated (a 20000 x 20000 PNG would take 1.6 GB).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Widest frame in pixels [default: 8192].
    pub max_width: u32,
    /// Tallest frame in pixels [default: 8192].
    pub max_height: u32,
    /// Most bytes the decoder may allocate for one frame [default: 256 MiB].
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_width: 8192, max_height: 8192, max_alloc_bytes: 256 << 20 }
    }
}

impl DecodeLimits {
    /// The limits as the `image` crate takes them.
    fn to_image_limits(self) -> Limits {
        let mut limits = Limits::default();
        limits.max_image_width = Some(self.max_width);
        limits.max_image_height = Some(self.max_height);
        limits.max_alloc = Some(self.max_alloc_bytes);
        limits
    }

    /// Checks that every limit is above 0.
    ///
    /// # Errors
    /// When one is 0, naming it.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("max_width", u64::from(self.max_width)),
            ("max_height", u64::from(self.max_height)),
            ("max_alloc_bytes", self.max_alloc_bytes),
        ] {
            if value == 0 {
                bail!("decode: expected {key} above 0, found 0");
            }
        }
        Ok(())
    }
}

/// Reads and decodes the JPEG or PNG file at `path` into RGB within `limits`. An RGB file's
/// pixels are moved, not copied (one frame-sized buffer per frame, not two).
///
/// # Errors
/// When the file cannot be read, is not a JPEG or PNG, is larger than a limit, is a JPEG
/// without its end marker (cut short), or does not decode; the message names the file.
pub fn decode_frame(path: &Path, limits: DecodeLimits) -> anyhow::Result<RgbImage> {
    Ok(decode_image(path, limits)?.into_rgb8())
}

/// [`decode_frame`] keeping the file's own pixel type (for label and mask PNGs).
///
/// # Errors
/// As [`decode_frame`].
pub fn decode_image(path: &Path, limits: DecodeLimits) -> anyhow::Result<DynamicImage> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let format = image::guess_format(&bytes).with_context(|| {
        format!("cannot decode {}: expected a JPEG or PNG file", path.display())
    })?;

    // zune-jpeg decodes a JPEG cut short without an error and fills the missing rows with
    // gray, which would be scored as if it were the scene. A whole JPEG ends with the EOI
    // marker FF D9; checking for it is cheap and catches a file cut anywhere. Some encoders
    // pad after EOI, so trailing zero bytes are allowed.
    if format == ImageFormat::Jpeg {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if !bytes[..end].ends_with(&[0xFF, 0xD9]) {
            bail!(
                "cannot decode {}: expected a JPEG ending with the end-of-image marker \
                 FF D9, found none (file cut short?)",
                path.display()
            );
        }
    }

    let mut reader = ImageReader::with_format(Cursor::new(&bytes), format);
    reader.limits(limits.to_image_limits());
    reader.decode().with_context(|| {
        format!(
            "cannot decode {} within {}x{} pixels and {} bytes",
            path.display(),
            limits.max_width,
            limits.max_height,
            limits.max_alloc_bytes
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/frames/vtest/vtest_0000.jpg")
    }

    #[test]
    fn whole_frames_decode_as_before() {
        let image = decode_frame(&frame(), DecodeLimits::default()).unwrap();
        assert_eq!(image, image::open(frame()).unwrap().to_rgb8());
    }

    #[test]
    fn truncated_jpeg_is_refused_naming_the_file() {
        let bytes = fs::read(frame()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.jpg");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

        // The decoder itself says nothing: that is why the end marker is checked.
        assert!(image::open(&cut).is_ok());
        let message = format!("{:#}", decode_frame(&cut, DecodeLimits::default()).unwrap_err());
        assert!(message.contains("cut.jpg") && message.contains("FF D9"), "{message}");

        // Zero padding after the end marker is still a whole file.
        let padded = dir.path().join("padded.jpg");
        fs::write(&padded, [bytes.as_slice(), &[0; 16]].concat()).unwrap();
        assert!(decode_frame(&padded, DecodeLimits::default()).is_ok());
    }

    #[test]
    fn frames_over_the_limits_are_refused_before_decoding() {
        // vtest frames are 768 x 576.
        let limits = DecodeLimits { max_width: 767, ..DecodeLimits::default() };
        let message = format!("{:#}", decode_frame(&frame(), limits).unwrap_err());
        assert!(message.contains("vtest_0000.jpg") && message.contains("767x8192"), "{message}");
        let limits = DecodeLimits { max_alloc_bytes: 768 * 576 * 3 - 1, ..DecodeLimits::default() };
        assert!(decode_frame(&frame(), limits).is_err());
        let limits = DecodeLimits { max_width: 768, max_height: 576, max_alloc_bytes: 4 << 20 };
        assert!(decode_frame(&frame(), limits).is_ok());
    }
}
