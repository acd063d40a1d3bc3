//! Reduction of a frame's per-pixel scores to fixed-size statistics.

use crate::map::{Element, MapError, OutputMap};
use crate::score::{MAX_CLASSES, PixelScores, Temperature, score_logits};

/// Bins of the entropy histogram over `[0, 1]`; quantiles are exact to `1 / ENTROPY_BINS`.
pub const ENTROPY_BINS: usize = 256;

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

    /// Counts `value`; values outside `[0, 1]` go to the first or last bin.
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

/// Settings of the per-frame reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsConfig {
    /// Temperature applied to the logits before every score.
    pub temperature: Temperature,
    /// Normalized-entropy level above which a pixel counts as uncertain.
    pub uncertain_level: f32,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { temperature: Temperature::ONE, uncertain_level: 0.5 }
    }
}

/// The statistics of one frame. Means are over finite pixels only.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FrameStats {
    /// Pixels in the frame.
    pub pixels: u32,
    /// Pixels with a NaN or `+inf` logit (or only `-inf` logits), left out of every mean.
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
    /// Fraction of finite pixels whose normalized entropy exceeds the configured level.
    pub uncertain_fraction: f32,
}

/// Caller-owned per-pixel outputs of [`analyze`], each `[height, width]` row-major.
///
/// Allocated once for a fixed input size and reused for every frame, so the per-frame path
/// allocates nothing.
#[derive(Debug)]
pub struct FrameMaps<'a> {
    /// Top-1 class of each pixel (0 for non-finite pixels).
    pub classes: &'a mut [u8],
    /// Normalized entropy of each pixel scaled to `0..=255` (255 for non-finite pixels).
    pub uncertainty: &'a mut [u8],
}

/// Owned [`FrameMaps`] buffers for hosts with an allocator.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct OwnedFrameMaps {
    /// See [`FrameMaps::classes`].
    pub classes: alloc::vec::Vec<u8>,
    /// See [`FrameMaps::uncertainty`].
    pub uncertainty: alloc::vec::Vec<u8>,
}

#[cfg(feature = "alloc")]
impl OwnedFrameMaps {
    /// Buffers for frames of `pixels` pixels.
    pub fn new(pixels: usize) -> Self {
        Self { classes: alloc::vec![0; pixels], uncertainty: alloc::vec![0; pixels] }
    }

    /// Borrows the buffers for one call of [`analyze`].
    pub fn as_maps(&mut self) -> FrameMaps<'_> {
        FrameMaps { classes: &mut self.classes, uncertainty: &mut self.uncertainty }
    }
}

/// Scores every pixel of `map` and reduces the scores to [`FrameStats`], writing the class and
/// uncertainty maps into `maps`. Allocates nothing.
///
/// # Errors
/// [`MapError::Length`] when a buffer of `maps` does not hold exactly one byte per pixel.
pub fn analyze<T: Element>(
    map: &OutputMap<'_, T>,
    config: &StatsConfig,
    maps: FrameMaps<'_>,
) -> Result<FrameStats, MapError> {
    let pixels = map.pixels();
    for found in [maps.classes.len(), maps.uncertainty.len()] {
        if found != pixels {
            return Err(MapError::Length { expected: pixels, found });
        }
    }

    let classes = map.classes();
    let mut logits = [0.0f32; MAX_CLASSES];
    let mut histogram = Histogram::<ENTROPY_BINS>::default();
    let mut sums = [0.0f64; 4];
    let mut uncertain = 0u32;
    let mut nonfinite = 0u32;

    for pixel in 0..pixels {
        map.pixel_logits(pixel, &mut logits);
        let Some(scores) = score_logits(&logits[..classes], config.temperature) else {
            nonfinite += 1;
            maps.classes[pixel] = 0;
            maps.uncertainty[pixel] = u8::MAX;
            continue;
        };

        let PixelScores { class, max_softmax, entropy, margin, energy } = scores;
        sums[0] += f64::from(max_softmax);
        sums[1] += f64::from(entropy);
        sums[2] += f64::from(margin);
        sums[3] += f64::from(energy);
        histogram.add(entropy);
        uncertain += u32::from(entropy > config.uncertain_level);
        maps.classes[pixel] = class;
        maps.uncertainty[pixel] = (entropy * 255.0 + 0.5) as u8;
    }

    let finite = pixels as u32 - nonfinite;
    let mean = |sum: f64| if finite > 0 { (sum / f64::from(finite)) as f32 } else { 0.0 };
    let stats = FrameStats {
        pixels: pixels as u32,
        nonfinite_pixels: nonfinite,
        mean_max_softmax: mean(sums[0]),
        mean_entropy: mean(sums[1]),
        mean_margin: mean(sums[2]),
        mean_energy: mean(sums[3]),
        p50_entropy: histogram.quantile(0.50),
        p90_entropy: histogram.quantile(0.90),
        p99_entropy: histogram.quantile(0.99),
        uncertain_fraction: if finite > 0 { uncertain as f32 / finite as f32 } else { 0.0 },
    };
    crate::log::trace!("frame: {} pixels, mean entropy {}", stats.pixels, stats.mean_entropy);
    Ok(stats)
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
        let mut classes = vec![0u8; h * w];
        let mut uncertainty = vec![0u8; h * w];
        let maps = FrameMaps { classes: &mut classes, uncertainty: &mut uncertainty };
        analyze(&map, &StatsConfig::default(), maps).unwrap()
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
        let (mut classes, mut uncertainty) = ([0u8; 3], [0u8; 3]);
        let maps = FrameMaps { classes: &mut classes, uncertainty: &mut uncertainty };
        let stats = analyze(&map, &StatsConfig::default(), maps).unwrap();
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        let want = (sigmoid(2.0) + (1.0 - sigmoid(-1.0)) + 0.5) / 3.0;
        assert!((stats.mean_max_softmax - want).abs() < 1e-6);
        assert_eq!(classes, [1, 0, 0]);
    }

    #[test]
    fn quantized_map_reads_in_place() {
        // int8 logits with scale 0.5, zero point -2: q = [-2, 0] means logits [0, 1].
        let q: [i8; 2] = [-2, 0];
        let map = OutputMap::try_new(&q, 2, 1, 1, Layout::Hwc, OutputKind::Logits)
            .unwrap()
            .with_quantization(Quantization { scale: 0.5, zero_point: -2 });
        let (mut classes, mut uncertainty) = ([0u8; 1], [0u8; 1]);
        let maps = FrameMaps { classes: &mut classes, uncertainty: &mut uncertainty };
        let stats = analyze(&map, &StatsConfig::default(), maps).unwrap();
        let p1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((stats.mean_max_softmax - p1).abs() < 1e-6);
    }

    #[test]
    fn wrong_buffer_length_is_an_error() {
        let data = [0.0f32; 4];
        let map = OutputMap::try_new(&data, 1, 2, 2, Layout::Chw, OutputKind::Logits).unwrap();
        let (mut classes, mut uncertainty) = ([0u8; 3], [0u8; 4]);
        let maps = FrameMaps { classes: &mut classes, uncertainty: &mut uncertainty };
        let err = analyze(&map, &StatsConfig::default(), maps).unwrap_err();
        assert_eq!(err, MapError::Length { expected: 4, found: 3 });
    }

    proptest::proptest! {
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
