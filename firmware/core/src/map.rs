//! Read-only views of a model's output map, in whatever element type and layout it came in.

use core::fmt;

use crate::math;
use crate::score::MAX_CLASSES;

/// Memory layout of a `[classes, height, width]` map, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Layout {
    /// Channel planes one after the other: index `(c * H + y) * W + x`.
    Chw,
    /// Channels interleaved per pixel: index `(y * W + x) * C + c`.
    Hwc,
}

/// What the numbers in the map mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutputKind {
    /// Unnormalised class logits `z`, `C >= 1` channels.
    Logits,
    /// Softmax probabilities, `C >= 1` channels; read as logits `ln p`.
    Probabilities,
    /// One channel holding the pre-sigmoid logit `z` of the positive class; read as the two
    /// class logits `[0, z]`, since `sigmoid(z) = softmax([0, z])[1]`.
    SigmoidLogit,
    /// One channel holding `sigmoid(z)`; read as the two class logits `[ln(1 - p), ln p]`.
    SigmoidProbability,
}

impl OutputKind {
    /// The number of classes a map of this kind with `channels` channels describes.
    pub fn classes(self, channels: usize) -> usize {
        match self {
            Self::Logits | Self::Probabilities => channels,
            Self::SigmoidLogit | Self::SigmoidProbability => 2,
        }
    }
}

/// Affine int8 / uint8 quantization: `real = scale * (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Quantization {
    /// Real value of one quantization step.
    pub scale: f32,
    /// Quantized value that stands for real zero.
    pub zero_point: i32,
}

impl Quantization {
    /// The identity mapping used for float maps.
    pub const IDENTITY: Self = Self { scale: 1.0, zero_point: 0 };
}

/// An element type a map can be read from without a float copy of the whole map.
pub trait Element: Copy {
    /// The element as a real number under `quantization` (ignored by float types).
    fn to_real(self, quantization: Quantization) -> f32;

    /// The values as `f32` when they already are (then scoring reads them without a copy).
    fn as_f32_slice(values: &[Self]) -> Option<&[f32]> {
        let _ = values;
        None
    }
}

impl Element for f32 {
    #[inline]
    fn to_real(self, _: Quantization) -> f32 {
        self
    }

    fn as_f32_slice(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Element for half::f16 {
    #[inline]
    fn to_real(self, _: Quantization) -> f32 {
        self.to_f32()
    }
}

impl Element for i8 {
    #[inline]
    fn to_real(self, q: Quantization) -> f32 {
        q.scale * (i32::from(self) - q.zero_point) as f32
    }
}

impl Element for u8 {
    #[inline]
    fn to_real(self, q: Quantization) -> f32 {
        q.scale * (i32::from(self) - q.zero_point) as f32
    }
}

/// Why a map could not be viewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MapError {
    /// The data length is not `channels * height * width`.
    Length {
        /// `channels * height * width`.
        expected: usize,
        /// The length of the data given.
        found: usize,
    },
    /// The class count is outside `1..=256`, or a sigmoid map has other than one channel.
    Channels {
        /// The channel count given.
        found: usize,
    },
    /// Height or width is zero.
    Empty,
    /// The frame has `u32::MAX` pixels or more; pixel indices and counts are `u32`.
    TooLarge {
        /// `height * width`, saturated at `usize::MAX`.
        pixels: usize,
    },
    /// A per-pixel buffer or mask does not hold one entry per pixel.
    BufferLength {
        /// Which buffer: a field name of `FrameMaps`, or `roi`.
        buffer: &'static str,
        /// `height * width`.
        expected: usize,
        /// The length of the buffer given.
        found: usize,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { expected, found } => {
                write!(f, "expected {expected} values (channels x height x width), found {found}")
            }
            Self::Channels { found } => write!(
                f,
                "expected 1 to 256 class channels (exactly 1 for a sigmoid output), found {found}"
            ),
            Self::Empty => {
                write!(f, "expected a map of at least one pixel, found height or width 0")
            }
            Self::TooLarge { pixels } => {
                write!(f, "expected fewer than 2^32 - 1 pixels, found {pixels}")
            }
            Self::BufferLength { buffer, expected, found } => write!(
                f,
                "expected {expected} entries (height x width) in the {buffer} buffer, found {found}"
            ),
        }
    }
}

impl core::error::Error for MapError {}

/// A borrowed `[channels, height, width]` output map of one frame.
#[derive(Clone, Copy, Debug)]
pub struct OutputMap<'a, T> {
    data: &'a [T],
    channels: usize,
    height: usize,
    width: usize,
    layout: Layout,
    kind: OutputKind,
    quantization: Quantization,
}

impl<'a, T: Element> OutputMap<'a, T> {
    /// Views `data` as a map of `channels x height x width` values.
    ///
    /// # Errors
    /// [`MapError`] when the length does not match the shape, the shape is empty, or the channel
    /// count does not fit the kind.
    pub fn try_new(
        data: &'a [T],
        channels: usize,
        height: usize,
        width: usize,
        layout: Layout,
        kind: OutputKind,
    ) -> Result<Self, MapError> {
        if height == 0 || width == 0 {
            return Err(MapError::Empty);
        }

        let sigmoid = matches!(kind, OutputKind::SigmoidLogit | OutputKind::SigmoidProbability);
        if !(1..=MAX_CLASSES).contains(&channels) || (sigmoid && channels != 1) {
            return Err(MapError::Channels { found: channels });
        }

        let pixels = height.saturating_mul(width);
        if pixels >= u32::MAX as usize {
            return Err(MapError::TooLarge { pixels });
        }

        let expected = channels * pixels;
        if data.len() != expected {
            return Err(MapError::Length { expected, found: data.len() });
        }

        let quantization = Quantization::IDENTITY;
        Ok(Self { data, channels, height, width, layout, kind, quantization })
    }

    /// Reads the elements as `scale * (q - zero_point)` (int8 / uint8 model outputs).
    pub fn with_quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of pixels, `height * width`.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Number of classes the map describes (2 for a sigmoid map).
    pub fn classes(&self) -> usize {
        self.kind.classes(self.channels)
    }

    /// The memory layout of the data.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The data itself when it is `f32` logits in CHW layout: channel `c` of pixel `p` is then
    /// at `c * pixels() + p`, and the score kernel reads it in place.
    pub(crate) fn direct_chw(&self) -> Option<&'a [f32]> {
        let plain = self.layout == Layout::Chw && self.kind == OutputKind::Logits;
        if plain { T::as_f32_slice(self.data) } else { None }
    }

    /// The data itself when it is one `f32` sigmoid logit per pixel (either layout, which is the
    /// same for one channel): the two-class kernel then reads it in place.
    pub(crate) fn direct_sigmoid_logit(&self) -> Option<&'a [f32]> {
        if self.kind == OutputKind::SigmoidLogit { T::as_f32_slice(self.data) } else { None }
    }

    /// Writes the class logits of `len` pixels from `start` (row-major index) into `tile` as a
    /// `[classes, len]` block, channel-major: logit `c` of pixel `start + i` at `c * len + i`.
    ///
    /// The block layout lets the score kernel run each step over contiguous memory, one class
    /// at a time, for many pixels at once.
    ///
    /// # Panics
    /// Panics when `start + len > pixels()` or `tile` is shorter than `classes() * len`.
    pub(crate) fn load_tile(&self, start: usize, len: usize, tile: &mut [f32]) {
        let tile = &mut tile[..self.classes() * len];
        match self.kind {
            OutputKind::Logits => {
                for (c, row) in tile.chunks_exact_mut(len).enumerate() {
                    self.read_channel(c, start, row, |z| z);
                }
            }
            OutputKind::Probabilities => {
                for (c, row) in tile.chunks_exact_mut(len).enumerate() {
                    self.read_channel(c, start, row, math::ln);
                }
            }
            OutputKind::SigmoidLogit => {
                let (negative, positive) = tile.split_at_mut(len);
                negative.fill(0.0);
                self.read_channel(0, start, positive, |z| z);
            }
            OutputKind::SigmoidProbability => {
                let (negative, positive) = tile.split_at_mut(len);
                self.read_channel(0, start, negative, |p| math::ln(1.0 - p));
                self.read_channel(0, start, positive, math::ln);
            }
        }
    }

    /// Writes `convert(channel c)` of the `out.len()` pixels from `start` into `out`: a
    /// contiguous run of the data for CHW, a strided one for HWC.
    #[inline(always)]
    fn read_channel(&self, c: usize, start: usize, out: &mut [f32], convert: impl Fn(f32) -> f32) {
        let q = self.quantization;
        let len = out.len();
        match self.layout {
            Layout::Chw => {
                let offset = c * self.pixels() + start;
                let source = &self.data[offset..offset + len];
                for (slot, &value) in out.iter_mut().zip(source) {
                    *slot = convert(value.to_real(q));
                }
            }
            Layout::Hwc => {
                let channels = self.channels;
                let source = &self.data[start * channels..(start + len) * channels];
                for (slot, pixel) in out.iter_mut().zip(source.chunks_exact(channels)) {
                    *slot = convert(pixel[c].to_real(q));
                }
            }
        }
    }

    /// Writes the class logits of pixel `index` (row-major) into `out[..classes()]`.
    ///
    /// # Panics
    /// Panics when `index >= pixels()` or `out` is shorter than `classes()`.
    #[inline]
    pub fn pixel_logits(&self, index: usize, out: &mut [f32]) {
        let q = self.quantization;
        let (start, stride) = match self.layout {
            Layout::Chw => (index, self.pixels()),
            Layout::Hwc => (index * self.channels, 1),
        };
        match self.kind {
            OutputKind::Logits => {
                for (c, slot) in out[..self.channels].iter_mut().enumerate() {
                    *slot = self.data[start + c * stride].to_real(q);
                }
            }
            OutputKind::Probabilities => {
                for (c, slot) in out[..self.channels].iter_mut().enumerate() {
                    *slot = math::ln(self.data[start + c * stride].to_real(q));
                }
            }
            OutputKind::SigmoidLogit => {
                out[0] = 0.0;
                out[1] = self.data[start].to_real(q);
            }
            OutputKind::SigmoidProbability => {
                let p = self.data[start].to_real(q);
                out[0] = math::ln(1.0 - p);
                out[1] = math::ln(p);
            }
        }
    }
}
