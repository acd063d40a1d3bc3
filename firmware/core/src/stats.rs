//! Reduction of a frame's per-pixel scores to fixed-size statistics.
//!
//! [`analyze`] works in two passes. The first reads the model output once, in tiles, writes
//! each pixel's class and scores into caller-owned buffers, and takes the frame-wide sums,
//! counts and histograms of each tile while its scores are still one array per score. Between
//! the passes the class map is turned into a boundary band and a union-find forest of
//! segments. The second pass reads the buffers in row-major order, by runs of one class, gives
//! each pixel its segment id and adds the run to its class, its segment and the interior.
//! Nothing is allocated.

use crate::list::FixedList;
use crate::map::{Element, MapError, OutputMap};
use crate::math;
use crate::region;
use crate::score::{self, SCORES, Score, TileOutput, TileScores};
use crate::score::{MAX_CLASSES, Temperature};

/// Bins of every score histogram; quantiles are exact to one bin (`1 / 256` of the range).
pub const ENTROPY_BINS: usize = 256;

/// Default capacity of [`FrameStats::classes`].
pub const CLASS_CAPACITY: usize = 32;

/// Default capacity of [`FrameStats::segment_list`].
pub const SEGMENT_CAPACITY: usize = 32;

/// A fixed-bin histogram of values in `[0, 1]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram<const BINS: usize> {
    counts: [u32; BINS],
    total: u32,
}

impl<const BINS: usize> Default for Histogram<BINS> {
    fn default() -> Self {
        Self { counts: [0; BINS], total: 0 }
    }
}

impl<const BINS: usize> Histogram<BINS> {
    const NON_EMPTY: () = assert!(BINS > 0, "a histogram needs at least one bin");

    /// Counts `value`; values outside `[0, 1]` go to the first or last bin, NaN to the first.
    #[inline]
    pub fn add(&mut self, value: f32) {
        let () = Self::NON_EMPTY;
        let bin = ((value * BINS as f32) as usize).min(BINS - 1);
        self.counts[bin] += 1;
        self.total += 1;
    }

    /// Number of values counted.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Count of each bin; bin `i` holds `[i / BINS, (i + 1) / BINS)`, the last one includes 1.
    pub fn counts(&self) -> &[u32; BINS] {
        &self.counts
    }

    /// The `q`-quantile, interpolated linearly inside the bin where the cumulative count
    /// reaches `q * total`; 0 for an empty histogram.
    pub fn quantile(&self, q: f32) -> f32 {
        if self.total == 0 {
            return 0.0;
        }

        let target = q.clamp(0.0, 1.0) * self.total as f32;
        let mut below = 0u32;
        for (bin, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f32 >= target {
                let inside = ((target - below as f32) / count as f32).clamp(0.0, 1.0);
                return (bin as f32 + inside) / BINS as f32;
            }
            below += count;
        }
        1.0
    }
}

/// The range of the energy histogram, `min < max`, both finite; energies outside it are
/// counted in its first or last bin.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EnergyRange {
    min: f32,
    max: f32,
}

impl EnergyRange {
    /// Checks that both ends are finite and `min < max`.
    ///
    /// # Errors
    /// Hands back the rejected pair.
    pub fn try_new(min: f32, max: f32) -> Result<Self, (f32, f32)> {
        if min.is_finite() && max.is_finite() && min < max {
            Ok(Self { min, max })
        } else {
            Err((min, max))
        }
    }

    /// Lower end.
    pub fn min(self) -> f32 {
        self.min
    }

    /// Upper end.
    pub fn max(self) -> f32 {
        self.max
    }
}

impl Default for EnergyRange {
    /// `[-64, 16]`: logits of a trained segmentation net rarely pass 60, and the energy of a
    /// one-class map is `-z`.
    fn default() -> Self {
        Self { min: -64.0, max: 16.0 }
    }
}

/// Settings of the per-frame reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsConfig {
    /// Temperature applied to the logits before every score.
    pub temperature: Temperature,
    /// Normalized-entropy level above which a pixel counts as uncertain (default 0.5).
    pub uncertain_level: f32,
    /// Max-softmax level below which a pixel counts in `low_max_softmax_fraction` (default 0.5).
    pub max_softmax_level: f32,
    /// Margin level below which a pixel counts in `low_margin_fraction` (default 0.2).
    pub margin_level: f32,
    /// Energy level above which a pixel counts in `high_energy_fraction` (default -5).
    pub energy_level: f32,
    /// Range of the energy histogram and its quantiles (default `[-64, 16]`).
    pub energy_range: EnergyRange,
    /// Half-width `k` of the boundary band in pixels (default 2): a pixel is in the band when a
    /// pixel of another predicted class lies within Chebyshev distance `k`; 0 turns it off.
    pub boundary_width: u8,
    /// Smallest segment, in pixels, that may be the worst segment (default 32), so that specks
    /// of a few pixels do not dominate it.
    pub min_segment_pixels: u32,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            temperature: Temperature::ONE,
            uncertain_level: 0.5,
            max_softmax_level: 0.5,
            margin_level: 0.2,
            energy_level: -5.0,
            energy_range: EnergyRange::default(),
            boundary_width: 2,
            min_segment_pixels: 32,
        }
    }
}

/// Pixel count and mean scores of one predicted class.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClassStats {
    /// Class id.
    pub class: u8,
    /// Scored pixels predicted as this class.
    pub pixels: u32,
    /// Mean max-softmax of those pixels.
    pub mean_max_softmax: f32,
    /// Mean normalized entropy of those pixels.
    pub mean_entropy: f32,
    /// Mean margin of those pixels.
    pub mean_margin: f32,
    /// Mean energy of those pixels.
    pub mean_energy: f32,
}

/// One 8-connected segment of scored pixels of the same predicted class.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SegmentStats {
    /// Segment id: segments are numbered from 0 in row-major order of their first pixel, the
    /// same ids as [`FrameMaps::labels`].
    pub id: u32,
    /// Predicted class.
    pub class: u8,
    /// Column of the segment's first pixel in row-major order (its top row, leftmost).
    pub x: u32,
    /// Row of the segment's first pixel.
    pub y: u32,
    /// Pixels in the segment.
    pub pixels: u32,
    /// Mean normalized entropy over the segment.
    pub mean_entropy: f32,
}

/// The statistics of one frame, of fixed size: at most `CLASSES` per-class entries and
/// `SEGMENTS` listed segments, with counts of what did not fit.
///
/// Pixel accounting: `pixels = ignored_pixels + nonfinite_pixels + scored`, where the scored
/// pixels are the finite ones the ROI keeps. Every mean, quantile and fraction is over scored
/// pixels (of the frame, or of its interior for the `interior_` fields), and is 0 when there
/// are none. Quantiles come from 256-bin histograms (over `[0, 1]`, and over the configured
/// [`EnergyRange`] for energy) and are exact to one bin.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FrameStats<
    const CLASSES: usize = CLASS_CAPACITY,
    const SEGMENTS: usize = SEGMENT_CAPACITY,
> {
    /// Pixels in the frame, `height * width`, including ignored and non-finite ones.
    pub pixels: u32,
    /// Pixels the region-of-interest mask ignores (0 in the mask); in no statistic.
    pub ignored_pixels: u32,
    /// Pixels kept by the ROI with a NaN or `+inf` logit (or only `-inf` logits); in no
    /// statistic.
    pub nonfinite_pixels: u32,
    /// Mean max-softmax probability.
    pub mean_max_softmax: f32,
    /// Mean normalized entropy `H / ln C`.
    pub mean_entropy: f32,
    /// Mean margin `p1 - p2`.
    pub mean_margin: f32,
    /// Mean energy `-T logsumexp(z / T)`.
    pub mean_energy: f32,
    /// Median normalized entropy.
    pub p50_entropy: f32,
    /// 90th percentile of normalized entropy.
    pub p90_entropy: f32,
    /// 99th percentile of normalized entropy.
    pub p99_entropy: f32,
    /// Median max-softmax.
    pub p50_max_softmax: f32,
    /// 90th percentile of max-softmax.
    pub p90_max_softmax: f32,
    /// 99th percentile of max-softmax.
    pub p99_max_softmax: f32,
    /// Median margin.
    pub p50_margin: f32,
    /// 90th percentile of margin.
    pub p90_margin: f32,
    /// 99th percentile of margin.
    pub p99_margin: f32,
    /// Median energy (clamped to the configured energy range).
    pub p50_energy: f32,
    /// 90th percentile of energy (clamped to the configured energy range).
    pub p90_energy: f32,
    /// 99th percentile of energy (clamped to the configured energy range).
    pub p99_energy: f32,
    /// Fraction of pixels whose normalized entropy exceeds `uncertain_level`.
    pub uncertain_fraction: f32,
    /// Fraction of pixels whose max-softmax is below `max_softmax_level`.
    pub low_max_softmax_fraction: f32,
    /// Fraction of pixels whose margin is below `margin_level`.
    pub low_margin_fraction: f32,
    /// Fraction of pixels whose energy exceeds `energy_level`.
    pub high_energy_fraction: f32,
    /// Fraction of pixels in the boundary band (see [`StatsConfig::boundary_width`]).
    pub boundary_fraction: f32,
    /// Pixels outside the boundary band.
    pub interior_pixels: u32,
    /// Mean max-softmax of the interior.
    pub interior_mean_max_softmax: f32,
    /// Mean normalized entropy of the interior.
    pub interior_mean_entropy: f32,
    /// Mean margin of the interior.
    pub interior_mean_margin: f32,
    /// Mean energy of the interior.
    pub interior_mean_energy: f32,
    /// Median normalized entropy of the interior.
    pub interior_p50_entropy: f32,
    /// 90th percentile of normalized entropy of the interior.
    pub interior_p90_entropy: f32,
    /// 99th percentile of normalized entropy of the interior.
    pub interior_p99_entropy: f32,
    /// [`uncertain_fraction`](Self::uncertain_fraction) of the interior.
    pub interior_uncertain_fraction: f32,
    /// [`low_max_softmax_fraction`](Self::low_max_softmax_fraction) of the interior.
    pub interior_low_max_softmax_fraction: f32,
    /// [`low_margin_fraction`](Self::low_margin_fraction) of the interior.
    pub interior_low_margin_fraction: f32,
    /// [`high_energy_fraction`](Self::high_energy_fraction) of the interior.
    pub interior_high_energy_fraction: f32,
    /// The predicted classes with the most pixels, at most `CLASSES`, by ascending class id.
    pub classes: FixedList<ClassStats, CLASSES>,
    /// Predicted classes left out of `classes` for want of room.
    pub classes_dropped: u32,
    /// Pixels of the classes left out of `classes`.
    pub classes_dropped_pixels: u32,
    /// Number of segments found: 8-connected regions of scored pixels of one predicted class.
    pub segments: u32,
    /// The largest segments, at most `SEGMENTS`, largest first (ties: lower id first).
    pub segment_list: FixedList<SegmentStats, SEGMENTS>,
    /// Segments left out of `segment_list` for want of room (`segments - segment_list.len()`).
    pub segments_dropped: u32,
    /// The largest segment (ties: lower id); `None` when no pixel was scored.
    pub largest_segment: Option<SegmentStats>,
    /// Pixels of the largest segment as a fraction of scored pixels (0 when none).
    pub largest_segment_fraction: f32,
    /// The segment of highest mean entropy among those of at least `min_segment_pixels`
    /// pixels (ties: lower id); `None` when no segment is that large.
    pub worst_segment: Option<SegmentStats>,
    /// Mean entropy of the worst segment (0 when there is none).
    pub worst_segment_entropy: f32,
}

impl<const CLASSES: usize, const SEGMENTS: usize> Default for FrameStats<CLASSES, SEGMENTS> {
    fn default() -> Self {
        Self {
            pixels: 0,
            ignored_pixels: 0,
            nonfinite_pixels: 0,
            mean_max_softmax: 0.0,
            mean_entropy: 0.0,
            mean_margin: 0.0,
            mean_energy: 0.0,
            p50_entropy: 0.0,
            p90_entropy: 0.0,
            p99_entropy: 0.0,
            p50_max_softmax: 0.0,
            p90_max_softmax: 0.0,
            p99_max_softmax: 0.0,
            p50_margin: 0.0,
            p90_margin: 0.0,
            p99_margin: 0.0,
            p50_energy: 0.0,
            p90_energy: 0.0,
            p99_energy: 0.0,
            uncertain_fraction: 0.0,
            low_max_softmax_fraction: 0.0,
            low_margin_fraction: 0.0,
            high_energy_fraction: 0.0,
            boundary_fraction: 0.0,
            interior_pixels: 0,
            interior_mean_max_softmax: 0.0,
            interior_mean_entropy: 0.0,
            interior_mean_margin: 0.0,
            interior_mean_energy: 0.0,
            interior_p50_entropy: 0.0,
            interior_p90_entropy: 0.0,
            interior_p99_entropy: 0.0,
            interior_uncertain_fraction: 0.0,
            interior_low_max_softmax_fraction: 0.0,
            interior_low_margin_fraction: 0.0,
            interior_high_energy_fraction: 0.0,
            classes: FixedList::default(),
            classes_dropped: 0,
            classes_dropped_pixels: 0,
            segments: 0,
            segment_list: FixedList::default(),
            segments_dropped: 0,
            largest_segment: None,
            largest_segment_fraction: 0.0,
            worst_segment: None,
            worst_segment_entropy: 0.0,
        }
    }
}

/// Per-segment running sums, one slot per possible segment (so one per pixel).
///
/// Scratch for [`analyze`]; its content between calls means nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SegmentScratch {
    first_pixel: u32,
    pixels: u32,
    entropy_sum: f64,
}

/// Caller-owned per-pixel outputs and scratch of [`analyze`], each one entry per pixel,
/// `[height, width]` row-major.
///
/// Allocated once for a fixed input size and reused for every frame, so the per-frame path
/// allocates nothing. About 39 bytes per pixel in all (10 MiB for 512 x 512).
#[derive(Debug)]
pub struct FrameMaps<'a> {
    /// Top-1 class of each pixel (0 for non-finite pixels).
    pub classes: &'a mut [u8],
    /// Normalized entropy of each pixel scaled to `0..=255` (255 for non-finite pixels).
    pub uncertainty: &'a mut [u8],
    /// The scores of each pixel in [`Score`] order (all NaN for non-finite pixels).
    pub scores: &'a mut [[f32; SCORES]],
    /// 1 for pixels in the boundary band, else 0 (see [`StatsConfig::boundary_width`]).
    pub boundary: &'a mut [u8],
    /// Segment id of each pixel, or [`NO_SEGMENT`](crate::NO_SEGMENT) for ignored and
    /// non-finite pixels.
    pub labels: &'a mut [u32],
    /// Per-segment scratch.
    pub segments: &'a mut [SegmentScratch],
}

/// Fixed-size [`FrameMaps`] buffers for frames of `PIXELS` pixels, for targets without an
/// allocator; put it in a `static`, it is large.
#[derive(Clone, Debug)]
pub struct FrameBuffers<const PIXELS: usize> {
    /// See [`FrameMaps::classes`].
    pub classes: [u8; PIXELS],
    /// See [`FrameMaps::uncertainty`].
    pub uncertainty: [u8; PIXELS],
    /// See [`FrameMaps::scores`].
    pub scores: [[f32; SCORES]; PIXELS],
    /// See [`FrameMaps::boundary`].
    pub boundary: [u8; PIXELS],
    /// See [`FrameMaps::labels`].
    pub labels: [u32; PIXELS],
    /// See [`FrameMaps::segments`].
    pub segments: [SegmentScratch; PIXELS],
}

impl<const PIXELS: usize> FrameBuffers<PIXELS> {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        const EMPTY: SegmentScratch =
            SegmentScratch { first_pixel: 0, pixels: 0, entropy_sum: 0.0 };
        Self {
            classes: [0; PIXELS],
            uncertainty: [0; PIXELS],
            scores: [[0.0; SCORES]; PIXELS],
            boundary: [0; PIXELS],
            labels: [0; PIXELS],
            segments: [EMPTY; PIXELS],
        }
    }

    /// Borrows the buffers for one call of [`analyze`].
    pub fn as_maps(&mut self) -> FrameMaps<'_> {
        FrameMaps {
            classes: &mut self.classes,
            uncertainty: &mut self.uncertainty,
            scores: &mut self.scores,
            boundary: &mut self.boundary,
            labels: &mut self.labels,
            segments: &mut self.segments,
        }
    }
}

impl<const PIXELS: usize> Default for FrameBuffers<PIXELS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Owned [`FrameMaps`] buffers for hosts with an allocator.
#[cfg(any(test, feature = "alloc"))]
#[derive(Clone, Debug, Default)]
pub struct OwnedFrameMaps {
    /// See [`FrameMaps::classes`].
    pub classes: alloc::vec::Vec<u8>,
    /// See [`FrameMaps::uncertainty`].
    pub uncertainty: alloc::vec::Vec<u8>,
    /// See [`FrameMaps::scores`].
    pub scores: alloc::vec::Vec<[f32; SCORES]>,
    /// See [`FrameMaps::boundary`].
    pub boundary: alloc::vec::Vec<u8>,
    /// See [`FrameMaps::labels`].
    pub labels: alloc::vec::Vec<u32>,
    /// See [`FrameMaps::segments`].
    pub segments: alloc::vec::Vec<SegmentScratch>,
}

#[cfg(any(test, feature = "alloc"))]
impl OwnedFrameMaps {
    /// Buffers for frames of `pixels` pixels.
    pub fn new(pixels: usize) -> Self {
        Self {
            classes: alloc::vec![0; pixels],
            uncertainty: alloc::vec![0; pixels],
            scores: alloc::vec![[0.0; SCORES]; pixels],
            boundary: alloc::vec![0; pixels],
            labels: alloc::vec![0; pixels],
            segments: alloc::vec![SegmentScratch::default(); pixels],
        }
    }

    /// Borrows the buffers for one call of [`analyze`].
    pub fn as_maps(&mut self) -> FrameMaps<'_> {
        FrameMaps {
            classes: &mut self.classes,
            uncertainty: &mut self.uncertainty,
            scores: &mut self.scores,
            boundary: &mut self.boundary,
            labels: &mut self.labels,
            segments: &mut self.segments,
        }
    }
}

/// Running sums of the four scores over a set of pixels.
#[derive(Clone, Copy, Default)]
struct Sums {
    pixels: u32,
    sums: [f64; SCORES],
}

impl Sums {
    /// Adds `pixels` pixels whose scores sum to `sums`.
    #[inline(always)]
    fn add(&mut self, pixels: u32, sums: &[f64; SCORES]) {
        self.pixels += pixels;
        for (sum, &value) in self.sums.iter_mut().zip(sums) {
            *sum += value;
        }
    }

    fn means(&self) -> [f32; SCORES] {
        let n = f64::from(self.pixels.max(1));
        self.sums.map(|sum| (sum / n) as f32)
    }
}

/// Sums, counts beyond the configured levels, and the entropy histogram of a set of pixels.
struct Summary {
    sums: Sums,
    beyond: [u32; SCORES],
    entropy: Histogram<ENTROPY_BINS>,
}

impl Summary {
    fn fractions(&self) -> [f32; SCORES] {
        let n = self.sums.pixels.max(1) as f32;
        self.beyond.map(|count| count as f32 / n)
    }
}

/// Copies of each histogram of the first pass. Consecutive pixels count into different copies:
/// a run of pixels in one bin (every sure region: entropy 0, max-softmax and margin 1) would
/// otherwise wait on the previous increment of the same counter through memory.
const COPIES: usize = 2;

/// Lanes of the first pass's `f32` partial sums: each lane sums at most `TILE_PIXELS / LANES`
/// = 16 values of a tile before the lanes join an `f64` total, so the rounding error stays
/// within a few parts in 1e7, far inside the 1e-5 the means are tested to, and the loop
/// vectorizes (a single running `f32` sum would be both slower and less exact).
const LANES: usize = 16;

/// Pixels of a run summed in `f32` before the sum joins an `f64` total, in the second pass:
/// the same reasoning as [`LANES`].
const BLOCK: usize = 16;

/// The histogram bin of `value`: `(value - offset) * scale` rounded down and clamped to the
/// bins, as in [`Histogram::add`], for a value that is not NaN; without a float-to-int `as`, so
/// that the loops around it vectorize.
#[inline(always)]
fn bin(value: f32, offset: f32, scale: f32) -> usize {
    let position = ((value - offset) * scale).clamp(0.0, (ENTROPY_BINS - 1) as f32);
    // The mask changes nothing (the floor is in 0..BINS) but lets the compiler drop the bounds
    // check of the increment.
    math::floor_small(position) as usize & (ENTROPY_BINS - 1)
}

/// The per-score settings of the reduction.
struct Levels {
    /// The histogram bin of score `j` is `bin(score, offset[j], scale[j])`: `0, BINS` for the
    /// scores in `[0, 1]`, the energy range scaled to the bins.
    offset: [f32; SCORES],
    scale: [f32; SCORES],
    /// Max-softmax and margin count below their level, entropy and energy above: multiplied
    /// by `sign` (an exact negation or nothing), every score counts above `levels`.
    sign: [f32; SCORES],
    levels: [f32; SCORES],
}

impl Levels {
    fn new(config: &StatsConfig) -> Self {
        const BINS: f32 = ENTROPY_BINS as f32;
        let range = config.energy_range;
        // `((e - min) / (max - min)) * BINS` as in `Histogram::add`: multiplying by the power
        // of two BINS before or after the product rounds the same way, so the bins are equal.
        let energy_scale = 1.0 / (range.max - range.min) * BINS;
        Self {
            offset: [0.0, 0.0, 0.0, range.min],
            scale: [BINS, BINS, BINS, energy_scale],
            sign: [-1.0, 1.0, -1.0, 1.0],
            levels: [
                -config.max_softmax_level,
                config.uncertain_level,
                -config.margin_level,
                config.energy_level,
            ],
        }
    }

    /// Whether score `j` of value `value` is beyond its level.
    #[inline(always)]
    fn beyond(&self, j: usize, value: f32) -> bool {
        value * self.sign[j] > self.levels[j]
    }
}

/// The frame-wide statistics, taken in the first pass tile by tile while the scores are still
/// one array per score: pixel accounting, sums, counts beyond the levels and histograms.
struct FrameReduction {
    levels: Levels,
    ignored: u32,
    nonfinite: u32,
    scored: u32,
    sums: [f64; SCORES],
    beyond: [u32; SCORES],
    /// Histograms of the four scores, in [`Score`] order, [`COPIES`] times each.
    counts: [[[u32; ENTROPY_BINS]; COPIES]; SCORES],
}

/// Per-tile scratch of [`FrameReduction::add_tile`], kept between tiles rather than zeroed for
/// each: with many classes a tile is as small as 16 pixels, and clearing whole arrays would
/// cost more than the tile. A separate borrow, so that the compiler knows the histogram
/// increments do not write into it.
struct TileScratch {
    /// 1 for a pixel that counts (kept and finite), else 0.
    counted: [u32; score::TILE_PIXELS],
    /// The histogram bin of each pixel, for one score.
    bins: [u32; score::TILE_PIXELS],
}

impl FrameReduction {
    fn new(config: &StatsConfig) -> Self {
        Self {
            levels: Levels::new(config),
            ignored: 0,
            nonfinite: 0,
            scored: 0,
            sums: [0.0; SCORES],
            beyond: [0; SCORES],
            counts: [[[0; ENTROPY_BINS]; COPIES]; SCORES],
        }
    }

    /// Adds the first `n` pixels of `tile`, `roi` their ROI entries.
    fn add_tile(
        &mut self,
        tile: &TileScores,
        n: usize,
        roi: Option<&[u8]>,
        scratch: &mut TileScratch,
    ) {
        // The loops run over whole groups of LANES; entries past n count 0 times.
        let padded = n.next_multiple_of(LANES);
        let TileScratch { counted, bins } = scratch;
        counted[n..padded].fill(0);
        let kept = match roi {
            Some(roi) => {
                for ((c, &finite), &keep) in counted.iter_mut().zip(&tile.finite[..n]).zip(roi) {
                    *c = finite & u32::from(keep != 0);
                }
                roi.iter().map(|&keep| u32::from(keep != 0)).sum()
            }
            None => {
                counted[..n].copy_from_slice(&tile.finite[..n]);
                n as u32
            }
        };
        let counted = &counted[..padded];
        let scored: u32 = counted.iter().sum();
        self.ignored += n as u32 - kept;
        self.nonfinite += kept - scored;
        self.scored += scored;

        let levels = &self.levels;
        for j in 0..SCORES {
            let values = &tile.values[j][..padded];
            let mut lanes = [0.0f32; LANES];
            let mut beyond = [0u32; LANES];
            let groups = values.chunks_exact(LANES).zip(counted.chunks_exact(LANES));
            for ((values, counted), bins) in groups.zip(bins.chunks_exact_mut(LANES)) {
                for k in 0..LANES {
                    let value = values[k];
                    let take = counted[k] != 0;
                    lanes[k] += if take { value } else { 0.0 };
                    beyond[k] += u32::from(take & levels.beyond(j, value));
                    bins[k] = bin(value, levels.offset[j], levels.scale[j]) as u32;
                }
            }
            self.sums[j] += lanes.iter().map(|&lane| f64::from(lane)).sum::<f64>();
            self.beyond[j] += beyond.iter().sum::<u32>();

            let counts = &mut self.counts[j];
            for (bins, counted) in
                bins[..padded].chunks_exact(COPIES).zip(counted.chunks_exact(COPIES))
            {
                for copy in 0..COPIES {
                    counts[copy][bins[copy] as usize & (ENTROPY_BINS - 1)] += counted[copy];
                }
            }
        }
    }

    /// The histogram of score `j`.
    fn histogram(&self, j: usize) -> Histogram<ENTROPY_BINS> {
        let mut counts = [0u32; ENTROPY_BINS];
        for copy in &self.counts[j] {
            for (count, &add) in counts.iter_mut().zip(copy) {
                *count += add;
            }
        }
        Histogram { counts, total: self.scored }
    }
}

/// What the second pass adds up besides segments and classes: the interior's sums, and the
/// counts and entropy histogram of the band's scored pixels (the interior's are the frame's
/// less the band's, exactly, whereas its sums are taken directly so that they do not lose
/// digits to a difference).
struct InteriorReduction {
    interior: Sums,
    band_beyond: [u32; SCORES],
    /// [`COPIES`] copies, as in the first pass.
    band_entropy: [[u32; ENTROPY_BINS]; COPIES],
}

impl InteriorReduction {
    fn new() -> Self {
        Self {
            interior: Sums::default(),
            band_beyond: [0; SCORES],
            band_entropy: [[0; ENTROPY_BINS]; COPIES],
        }
    }

    /// Adds a run of scored pixels, `band` their boundary-band flags; returns the sums of their
    /// scores, for the class and the segment the run belongs to.
    #[inline(always)]
    fn add_run(&mut self, levels: &Levels, scores: &[[f32; SCORES]], band: &[u8]) -> [f64; SCORES] {
        let mut run = [0.0f64; SCORES];
        for (block, band) in scores.chunks(BLOCK).zip(band.chunks(BLOCK)) {
            let mut all = [0.0f32; SCORES];
            let mut inside = [0.0f32; SCORES];
            let mut inside_pixels = 0;
            for (i, (pixel, &flag)) in block.iter().zip(band).enumerate() {
                let interior = flag == 0;
                for j in 0..SCORES {
                    all[j] += pixel[j];
                    inside[j] += if interior { pixel[j] } else { 0.0 };
                }
                inside_pixels += u32::from(interior);
                if !interior {
                    for (j, (count, &value)) in self.band_beyond.iter_mut().zip(pixel).enumerate() {
                        *count += u32::from(levels.beyond(j, value));
                    }
                    let entropy = Score::Entropy.index();
                    let scale = levels.scale[entropy];
                    self.band_entropy[i % COPIES][bin(pixel[entropy], 0.0, scale)] += 1;
                }
            }
            self.interior.add(inside_pixels, &inside.map(f64::from));
            for (sum, value) in run.iter_mut().zip(all) {
                *sum += f64::from(value);
            }
        }
        run
    }
}

/// Scores every pixel of `map` and reduces the scores to [`FrameStats`], writing the per-pixel
/// maps into `maps`. No pixel is ignored; see [`analyze_with`] for a region of interest and
/// other capacities. Allocates nothing.
///
/// # Errors
/// [`MapError::BufferLength`] when a buffer of `maps` does not hold exactly one entry per
/// pixel.
pub fn analyze<T: Element>(
    map: &OutputMap<'_, T>,
    config: &StatsConfig,
    maps: FrameMaps<'_>,
) -> Result<FrameStats, MapError> {
    analyze_with(map, config, maps, None)
}

/// [`analyze`] with a region-of-interest mask and the capacities of [`FrameStats`] chosen by
/// the caller.
///
/// `roi` is `[height, width]` row-major; pixels where it is 0 are ignored: they count in
/// `ignored_pixels` and in no statistic and no segment. The boundary band is still taken from
/// the whole predicted class map, ignored pixels included: a pixel next to (say) the sky is on
/// a class boundary whether or not the sky is scored. Non-finite pixels take part in the band
/// as class 0.
///
/// # Errors
/// [`MapError::BufferLength`] when `roi` or a buffer of `maps` does not hold exactly one entry
/// per pixel.
pub fn analyze_with<T: Element, const CLASSES: usize, const SEGMENTS: usize>(
    map: &OutputMap<'_, T>,
    config: &StatsConfig,
    maps: FrameMaps<'_>,
    roi: Option<&[u8]>,
) -> Result<FrameStats<CLASSES, SEGMENTS>, MapError> {
    let pixels = map.pixels();
    let lengths = [
        ("classes", maps.classes.len()),
        ("uncertainty", maps.uncertainty.len()),
        ("scores", maps.scores.len()),
        ("boundary", maps.boundary.len()),
        ("labels", maps.labels.len()),
        ("segments", maps.segments.len()),
        ("roi", roi.map_or(pixels, <[u8]>::len)),
    ];
    for (buffer, found) in lengths {
        if found != pixels {
            return Err(MapError::BufferLength { buffer, expected: pixels, found });
        }
    }

    let FrameMaps { classes, uncertainty, scores, boundary, labels, segments } = maps;
    let width = map.width();
    let mut reduction = FrameReduction::new(config);
    score_map(map, config.temperature, roi, &mut reduction, classes, uncertainty, scores);

    // The band's scratch is the label buffer, which the segments overwrite next.
    region::boundary_band(classes, width, config.boundary_width, labels, boundary);
    let keep = |p: usize| roi.is_none_or(|roi| roi[p] != 0);
    // Only a pixel of uncertainty 255 can be non-finite; testing that byte first spares most
    // pixels a read of their 16-byte score record.
    let finite =
        |p: usize| uncertainty[p] != u8::MAX || !scores[p][Score::Entropy.index()].is_nan();
    let included = |p: usize| keep(p) && finite(p);
    region::link_segments(classes, width, included, labels);

    let mut inner = InteriorReduction::new();
    let mut per_class = [Sums::default(); MAX_CLASSES];
    let mut segment_count = 0u32;

    // Second pass, row-major, by runs of scored pixels of one class within a row: a run lies in
    // one segment, so it needs one segment id and one update of its segment and class. Parents
    // precede their children, so the first pixel of a run whose parent is not itself finds the
    // parent already relabelled with its segment id.
    for row_start in (0..pixels).step_by(width) {
        let row_end = row_start + width;
        let mut p = row_start;
        while p < row_end {
            if !included(p) {
                p += 1;
                continue;
            }
            let class = classes[p];
            let mut end = p + 1;
            // Eight pixels at a time while all are of the class, kept, and below uncertainty 255
            // (so finite), then one at a time.
            while end + 8 <= row_end
                && bytes(classes, end) == u64::from_le_bytes([class; 8])
                && !has_zero_byte(!bytes(uncertainty, end))
                && roi.is_none_or(|roi| !has_zero_byte(bytes(roi, end)))
            {
                end += 8;
            }
            while end < row_end && classes[end] == class && included(end) {
                end += 1;
            }

            let parent = labels[p] as usize;
            let id = if parent == p {
                let id = segment_count;
                segment_count += 1;
                segments[id as usize] =
                    SegmentScratch { first_pixel: p as u32, ..Default::default() };
                id
            } else {
                labels[parent]
            };
            labels[p..end].fill(id);

            let sums = inner.add_run(&reduction.levels, &scores[p..end], &boundary[p..end]);
            let run = (end - p) as u32;
            let segment = &mut segments[id as usize];
            segment.pixels += run;
            segment.entropy_sum += sums[Score::Entropy.index()];
            per_class[usize::from(class)].add(run, &sums);
            p = end;
        }
    }

    let (ignored, nonfinite, scored) = (reduction.ignored, reduction.nonfinite, reduction.scored);
    let entropy_histogram = reduction.histogram(Score::Entropy.index());
    let mut interior_entropy = entropy_histogram.clone();
    for copy in &inner.band_entropy {
        for (count, &band) in interior_entropy.counts.iter_mut().zip(copy) {
            *count -= band;
        }
    }
    interior_entropy.total = inner.interior.pixels;
    let mut interior_beyond = reduction.beyond;
    for (count, &band) in interior_beyond.iter_mut().zip(&inner.band_beyond) {
        *count -= band;
    }
    let frame = Summary {
        sums: Sums { pixels: scored, sums: reduction.sums },
        beyond: reduction.beyond,
        entropy: entropy_histogram,
    };
    let interior =
        Summary { sums: inner.interior, beyond: interior_beyond, entropy: interior_entropy };
    let max_softmax_histogram = reduction.histogram(Score::MaxSoftmax.index());
    let margin_histogram = reduction.histogram(Score::Margin.index());
    let energy_histogram = reduction.histogram(Score::Energy.index());
    let energy_range = config.energy_range;
    let [mean_max_softmax, mean_entropy, mean_margin, mean_energy] = frame.sums.means();
    let [low_max_softmax, uncertain, low_margin, high_energy] = frame.fractions();
    let interior_means = interior.sums.means();
    let interior_fractions = interior.fractions();
    let energy_quantile = |q: f32| {
        let fraction = energy_histogram.quantile(q);
        energy_range.min + fraction * (energy_range.max - energy_range.min)
    };
    let boundary_pixels = scored - interior.sums.pixels;

    let mut stats = FrameStats::<CLASSES, SEGMENTS> {
        pixels: pixels as u32,
        ignored_pixels: ignored,
        nonfinite_pixels: nonfinite,
        mean_max_softmax,
        mean_entropy,
        mean_margin,
        mean_energy,
        p50_entropy: frame.entropy.quantile(0.50),
        p90_entropy: frame.entropy.quantile(0.90),
        p99_entropy: frame.entropy.quantile(0.99),
        p50_max_softmax: max_softmax_histogram.quantile(0.50),
        p90_max_softmax: max_softmax_histogram.quantile(0.90),
        p99_max_softmax: max_softmax_histogram.quantile(0.99),
        p50_margin: margin_histogram.quantile(0.50),
        p90_margin: margin_histogram.quantile(0.90),
        p99_margin: margin_histogram.quantile(0.99),
        p50_energy: if scored > 0 { energy_quantile(0.50) } else { 0.0 },
        p90_energy: if scored > 0 { energy_quantile(0.90) } else { 0.0 },
        p99_energy: if scored > 0 { energy_quantile(0.99) } else { 0.0 },
        uncertain_fraction: uncertain,
        low_max_softmax_fraction: low_max_softmax,
        low_margin_fraction: low_margin,
        high_energy_fraction: high_energy,
        boundary_fraction: boundary_pixels as f32 / scored.max(1) as f32,
        interior_pixels: interior.sums.pixels,
        interior_mean_max_softmax: interior_means[0],
        interior_mean_entropy: interior_means[1],
        interior_mean_margin: interior_means[2],
        interior_mean_energy: interior_means[3],
        interior_p50_entropy: interior.entropy.quantile(0.50),
        interior_p90_entropy: interior.entropy.quantile(0.90),
        interior_p99_entropy: interior.entropy.quantile(0.99),
        interior_uncertain_fraction: interior_fractions[1],
        interior_low_max_softmax_fraction: interior_fractions[0],
        interior_low_margin_fraction: interior_fractions[2],
        interior_high_energy_fraction: interior_fractions[3],
        segments: segment_count,
        ..FrameStats::default()
    };
    fill_classes(&per_class, &mut stats);
    fill_segments(&segments[..segment_count as usize], classes, width, config, &mut stats);

    crate::log::trace!(
        "frame: {} pixels, mean entropy {}, {} segments",
        stats.pixels,
        stats.mean_entropy,
        stats.segments
    );
    Ok(stats)
}

/// The eight bytes of `values` from `start`, as one word.
#[inline(always)]
fn bytes(values: &[u8], start: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&values[start..start + 8]);
    u64::from_le_bytes(word)
}

/// Whether a byte of `word` is 0: subtracting 1 from each byte borrows into its top bit only
/// from a byte that was 0 (a byte with its top bit already set is masked out by `!word`).
#[inline(always)]
fn has_zero_byte(word: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    word.wrapping_sub(ONES) & !word & HIGHS != 0
}

/// First pass: scores `map` tile by tile into the per-pixel buffers, and takes the frame-wide
/// statistics of each tile on the way.
fn score_map<T: Element>(
    map: &OutputMap<'_, T>,
    temperature: Temperature,
    roi: Option<&[u8]>,
    reduction: &mut FrameReduction,
    classes: &mut [u8],
    uncertainty: &mut [u8],
    scores: &mut [[f32; SCORES]],
) {
    let class_count = map.classes();
    let step = score::tile_pixels(class_count);
    let mut tile = [0.0f32; score::TILE_VALUES];
    let mut tile_scores = TileScores::new();
    let mut scratch =
        TileScratch { counted: [0; score::TILE_PIXELS], bins: [0; score::TILE_PIXELS] };

    // f32 CHW logits and f32 sigmoid logits are read in place; everything else is converted
    // into a tile first.
    let direct = map.direct_chw();
    let sigmoid = map.direct_sigmoid_logit();
    let mut start = 0;
    while start < classes.len() {
        let end = (start + step).min(classes.len());
        let n = end - start;
        match (direct, sigmoid) {
            (Some(data), _) => {
                let pixels = map.pixels();
                score::score_tile(
                    data,
                    start,
                    pixels,
                    class_count,
                    temperature,
                    n,
                    &mut tile_scores,
                );
            }
            (None, Some(z)) => {
                score::score_pair(None, &z[start..end], temperature, &mut tile_scores)
            }
            (None, None) => {
                map.load_tile(start, n, &mut tile);
                score::score_tile(&tile, 0, n, class_count, temperature, n, &mut tile_scores);
            }
        }
        reduction.add_tile(&tile_scores, n, roi.map(|roi| &roi[start..end]), &mut scratch);
        tile_scores.write(TileOutput {
            classes: &mut classes[start..end],
            uncertainty: &mut uncertainty[start..end],
            scores: &mut scores[start..end],
        });
        start = end;
    }
}

/// Fills the per-class entries: the `CLASSES` classes with the most pixels (ties: lower id),
/// listed by ascending id; the rest are counted as dropped.
fn fill_classes<const CLASSES: usize, const SEGMENTS: usize>(
    per_class: &[Sums; MAX_CLASSES],
    stats: &mut FrameStats<CLASSES, SEGMENTS>,
) {
    // The pixel count a class needs to be listed: the CLASSES-th largest count.
    let mut chosen = [false; MAX_CLASSES];
    for _ in 0..CLASSES {
        let best = (0..MAX_CLASSES)
            .filter(|&c| !chosen[c] && per_class[c].pixels > 0)
            .max_by_key(|&c| (per_class[c].pixels, core::cmp::Reverse(c)));
        match best {
            Some(c) => chosen[c] = true,
            None => break,
        }
    }

    for (class, sums) in per_class.iter().enumerate().filter(|(_, s)| s.pixels > 0) {
        if !chosen[class] {
            stats.classes_dropped += 1;
            stats.classes_dropped_pixels += sums.pixels;
            continue;
        }
        let [mean_max_softmax, mean_entropy, mean_margin, mean_energy] = sums.means();
        let entry = ClassStats {
            class: class as u8,
            pixels: sums.pixels,
            mean_max_softmax,
            mean_entropy,
            mean_margin,
            mean_energy,
        };
        // Cannot fail: at most CLASSES classes are chosen.
        let _ = stats.classes.try_push(entry);
    }
}

/// Fills the segment list (largest first), the largest and the worst segment.
fn fill_segments<const CLASSES: usize, const SEGMENTS: usize>(
    segments: &[SegmentScratch],
    classes: &[u8],
    width: usize,
    config: &StatsConfig,
    stats: &mut FrameStats<CLASSES, SEGMENTS>,
) {
    let describe = |id: usize| {
        let segment = &segments[id];
        let first = segment.first_pixel as usize;
        SegmentStats {
            id: id as u32,
            class: classes[first],
            x: (first % width) as u32,
            y: (first / width) as u32,
            pixels: segment.pixels,
            mean_entropy: (segment.entropy_sum / f64::from(segment.pixels)) as f32,
        }
    };

    // Keep the SEGMENTS largest in a list sorted by size, descending, ids ascending on ties;
    // most segments of a noisy frame are specks that fail the first comparison.
    let mut top = [0usize; SEGMENTS];
    let mut kept = 0;
    let mut largest: Option<usize> = None;
    let mut worst: Option<(usize, f64)> = None;
    for (id, segment) in segments.iter().enumerate() {
        if largest.is_none_or(|l| segment.pixels > segments[l].pixels) {
            largest = Some(id);
        }
        if segment.pixels >= config.min_segment_pixels {
            let mean = segment.entropy_sum / f64::from(segment.pixels);
            if worst.is_none_or(|(_, w)| mean > w) {
                worst = Some((id, mean));
            }
        }

        let fits = SEGMENTS > 0
            && (kept < SEGMENTS || segment.pixels > segments[top[SEGMENTS - 1]].pixels);
        if !fits {
            continue;
        }
        let mut slot = kept.min(SEGMENTS - 1);
        while slot > 0 && segments[top[slot - 1]].pixels < segment.pixels {
            top[slot] = top[slot - 1];
            slot -= 1;
        }
        top[slot] = id;
        kept = (kept + 1).min(SEGMENTS);
    }

    for &id in &top[..kept] {
        // Cannot fail: at most SEGMENTS ids are kept.
        let _ = stats.segment_list.try_push(describe(id));
    }
    stats.segments_dropped = segments.len() as u32 - kept as u32;
    stats.largest_segment = largest.map(describe);
    let scored = segments.iter().map(|s| s.pixels).sum::<u32>().max(1);
    stats.largest_segment_fraction =
        largest.map_or(0.0, |l| segments[l].pixels as f32 / scored as f32);
    stats.worst_segment = worst.map(|(id, _)| describe(id));
    stats.worst_segment_entropy = stats.worst_segment.map_or(0.0, |s| s.mean_entropy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Layout, OutputKind, Quantization};

    /// The f64 reference for one pixel: normalized entropy and max-softmax from probabilities.
    fn reference_pixel(logits: &[f64]) -> Option<(f64, f64, f64, f64)> {
        if logits.iter().any(|z| z.is_nan() || *z == f64::INFINITY) {
            return None;
        }
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return None;
        }
        let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        let mut p: Vec<f64> = logits.iter().map(|z| (z - lse).exp()).collect();
        let h: f64 = p.iter().filter(|p| **p > 0.0).map(|p| -p * p.ln()).sum();
        let h = if logits.len() > 1 { h / (logits.len() as f64).ln() } else { 0.0 };
        p.sort_by(|a, b| b.total_cmp(a));
        let p2 = p.get(1).copied().unwrap_or(0.0);
        Some((p[0], h, p[0] - p2, -lse))
    }

    fn run(data: &[f32], c: usize, h: usize, w: usize, layout: Layout) -> FrameStats {
        let map = OutputMap::try_new(data, c, h, w, layout, OutputKind::Logits).unwrap();
        let mut maps = OwnedFrameMaps::new(h * w);
        analyze(&map, &StatsConfig::default(), maps.as_maps()).unwrap()
    }

    fn check_against_reference(data: &[f32], c: usize, h: usize, w: usize) {
        let stats = run(data, c, h, w, Layout::Chw);

        let mut sums = [0.0f64; 4];
        let mut energy_scale = 0.0f64;
        let mut entropies = Vec::new();
        let mut nonfinite = 0;
        for pixel in 0..h * w {
            let logits: Vec<f64> = (0..c).map(|k| data[k * h * w + pixel] as f64).collect();
            match reference_pixel(&logits) {
                Some((p1, e, m, en)) => {
                    for (sum, v) in sums.iter_mut().zip([p1, e, m, en]) {
                        *sum += v;
                    }
                    entropies.push(e);
                    energy_scale += en.abs();
                }
                None => nonfinite += 1,
            }
        }
        let n = entropies.len() as f64;
        assert_eq!(stats.nonfinite_pixels, nonfinite);
        if entropies.is_empty() {
            return;
        }

        // Means of f32 scores: 1e-5 absolute for [0, 1] scores. Per-pixel f32 energies carry a
        // relative rounding error, so the mean's tolerance scales with the mean |energy|.
        let got = [stats.mean_max_softmax, stats.mean_entropy, stats.mean_margin];
        for (g, sum) in got.iter().zip(sums) {
            assert!((*g as f64 - sum / n).abs() < 1e-5, "mean {g} vs {}", sum / n);
        }
        let energy = sums[3] / n;
        let tolerance = 1e-4 + 1e-6 * energy_scale / n;
        assert!(
            (stats.mean_energy as f64 - energy).abs() < tolerance,
            "{} vs {energy}",
            stats.mean_energy
        );

        // Histogram quantiles are exact to one bin width; the reference is the order statistic.
        entropies.sort_by(f64::total_cmp);
        for (q, got) in [(0.5, stats.p50_entropy), (0.9, stats.p90_entropy)] {
            let rank = ((q * n).ceil() as usize).clamp(1, entropies.len()) - 1;
            let want = entropies[rank];
            assert!((got as f64 - want).abs() <= 1.0 / ENTROPY_BINS as f64 + 1e-6, "{got} {want}");
        }
    }

    #[test]
    fn hand_computed_frame() {
        // Two pixels, two classes: [0, 0] (p = 1/2, H = 1) and [0, ln 3] (p1 = 3/4).
        let data = [0.0, 0.0, 0.0, 3.0f32.ln()];
        let stats = run(&data, 2, 1, 2, Layout::Hwc);
        assert!((stats.mean_max_softmax - 0.625).abs() < 1e-6);
        assert!((stats.mean_margin - 0.25).abs() < 1e-6);
        assert!((stats.mean_entropy - (1.0 + 0.811_278) / 2.0).abs() < 1e-5);
        assert_eq!(stats.uncertain_fraction, 1.0);
    }

    #[test]
    fn layouts_agree() {
        // The same 3-class 2x2 map written both ways.
        let chw = [1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5, -1.0, 5.0, 0.0, 2.0];
        let mut hwc = [0.0; 12];
        for c in 0..3 {
            for p in 0..4 {
                hwc[p * 3 + c] = chw[c * 4 + p];
            }
        }
        assert_eq!(run(&chw, 3, 2, 2, Layout::Chw), run(&hwc, 3, 2, 2, Layout::Hwc));
    }

    #[test]
    fn nonfinite_pixels_do_not_poison_means() {
        let data = [0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0];
        let stats = run(&data, 2, 1, 3, Layout::Chw);
        assert_eq!(stats.nonfinite_pixels, 1);
        assert_eq!(stats.mean_entropy, 1.0);
        assert_eq!(stats.mean_max_softmax, 0.5);
    }

    #[test]
    fn sigmoid_logit_is_two_class_softmax() {
        let z = [2.0f32, -1.0, 0.0];
        let map = OutputMap::try_new(&z, 1, 1, 3, Layout::Chw, OutputKind::SigmoidLogit).unwrap();
        let mut maps = OwnedFrameMaps::new(3);
        let stats = analyze(&map, &StatsConfig::default(), maps.as_maps()).unwrap();
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        let want = (sigmoid(2.0) + (1.0 - sigmoid(-1.0)) + 0.5) / 3.0;
        assert!((stats.mean_max_softmax - want).abs() < 1e-6);
        assert_eq!(maps.classes, [1, 0, 0]);
    }

    #[test]
    fn quantized_map_reads_in_place() {
        // int8 logits with scale 0.5, zero point -2: q = [-2, 0] means logits [0, 1].
        let q: [i8; 2] = [-2, 0];
        let map = OutputMap::try_new(&q, 2, 1, 1, Layout::Hwc, OutputKind::Logits)
            .unwrap()
            .with_quantization(Quantization { scale: 0.5, zero_point: -2 });
        let mut maps = OwnedFrameMaps::new(1);
        let stats = analyze(&map, &StatsConfig::default(), maps.as_maps()).unwrap();
        let p1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((stats.mean_max_softmax - p1).abs() < 1e-6);
    }

    #[test]
    fn wrong_buffer_length_is_an_error() {
        let data = [0.0f32; 4];
        let map = OutputMap::try_new(&data, 1, 2, 2, Layout::Chw, OutputKind::Logits).unwrap();
        let mut maps = OwnedFrameMaps::new(4);
        maps.classes.pop();
        let err = analyze(&map, &StatsConfig::default(), maps.as_maps()).unwrap_err();
        assert_eq!(err, MapError::BufferLength { buffer: "classes", expected: 4, found: 3 });
    }

    /// `bin` against the formula of `Histogram::add`, on every bin edge and its neighbours and
    /// on random values, for the `[0, 1]` scores and for the energy range.
    #[test]
    fn bins_match_histogram_add() {
        let reference = |position: f32| ((position as usize).min(ENTROPY_BINS - 1), position);
        let mut values = vec![-1.0, -0.0, 0.0, 1.0, 2.0, f32::INFINITY, f32::NEG_INFINITY];
        for edge in 0..=ENTROPY_BINS {
            let v = edge as f32 / ENTROPY_BINS as f32;
            values.extend([
                v,
                f32::from_bits(v.to_bits() + 1),
                f32::from_bits(v.to_bits().saturating_sub(1)),
            ]);
        }
        let mut state = 0x9e37_79b9u32;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            values.push(f32::from_bits(state % 0x3f80_0001)); // every float in [0, 1]
            values.push((state >> 8) as f32 / (1 << 24) as f32 * 120.0 - 90.0);
        }
        let range = EnergyRange::default();
        let scale = 1.0 / (range.max - range.min);
        let levels = Levels::new(&StatsConfig::default());
        for &v in &values {
            assert_eq!(bin(v, 0.0, levels.scale[0]), reference(v * 256.0).0, "{v}");
            let energy = reference((v - range.min) * scale * 256.0);
            assert_eq!(bin(v, levels.offset[3], levels.scale[3]), energy.0, "{v} {}", energy.1);
        }
    }

    proptest::proptest! {
        #[test]
        fn zero_byte_test_is_exact(word in proptest::collection::vec(
            proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(1u8),
                proptest::strategy::Just(0x80u8), proptest::strategy::Just(0xffu8), 0u8..=255],
            8,
        )) {
            let value = bytes(&word, 0);
            proptest::prop_assert_eq!(has_zero_byte(value), word.contains(&0));
            proptest::prop_assert_eq!(has_zero_byte(!value), word.contains(&u8::MAX));
        }

        #[test]
        fn frame_matches_f64_reference(
            c in 1usize..=24,
            h in 1usize..=12,
            w in 1usize..=12,
            seed in proptest::collection::vec(-20.0f32..20.0, 24 * 144),
        ) {
            let data = &seed[..c * h * w];
            check_against_reference(data, c, h, w);
        }

        #[test]
        fn extreme_frames_match_f64_reference(
            values in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(f32::NAN),
                proptest::strategy::Just(f32::INFINITY),
                proptest::strategy::Just(f32::NEG_INFINITY),
                proptest::strategy::Just(65504.0f32),
                proptest::strategy::Just(-65504.0f32),
                -1e4f32..1e4,
            ], 3 * 16),
        ) {
            check_against_reference(&values, 3, 4, 4);
        }
    }
}
