//! Every frame statistic of `analyze_with` against a straightforward f64 implementation: scores
//! from probabilities, the boundary band from its definition, segments by breadth-first flood
//! fill, per-class sums, and the ROI.
//!
//! Tolerances: 1e-5 absolute on means of scores in `[0, 1]` (f32 scores, polynomial exp / ln
//! with relative error under 2e-7, f64 sums); energy means to 1e-4 plus 1e-6 of the mean
//! |energy|; histogram quantiles to one bin width (1/256 of the range) plus 1e-6; fractions of
//! pixels beyond a level exactly, except for pixels whose f64 score lies within 1e-5 of the
//! level, which may fall either side. Counts (pixels, segments, band, classes) are exact.

use std::collections::VecDeque;

use proptest::prelude::*;
use qualm_core::{
    EnergyRange, FrameMaps, FrameStats, Layout, OutputKind, OutputMap, Quantization, SCORES,
    SegmentScratch, StatsConfig, Temperature, analyze_with,
};

/// Classes and segments small enough that the capacity limits are exercised.
const CLASSES: usize = 4;
const SEGMENTS: usize = 3;

/// Owned buffers for one call.
struct Buffers {
    classes: Vec<u8>,
    uncertainty: Vec<u8>,
    scores: Vec<[f32; SCORES]>,
    boundary: Vec<u8>,
    labels: Vec<u32>,
    segments: Vec<SegmentScratch>,
}

impl Buffers {
    fn new(pixels: usize) -> Self {
        Self {
            classes: vec![0; pixels],
            uncertainty: vec![0; pixels],
            scores: vec![[0.0; SCORES]; pixels],
            boundary: vec![0; pixels],
            labels: vec![0; pixels],
            segments: vec![SegmentScratch::default(); pixels],
        }
    }

    fn maps(&mut self) -> FrameMaps<'_> {
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

/// The f64 scores of one pixel: (class, max-softmax, normalized entropy, margin, energy).
fn reference_pixel(logits: &[f64], t: f64) -> Option<(u8, [f64; 4])> {
    if logits.iter().any(|z| z.is_nan() || *z == f64::INFINITY) {
        return None;
    }
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return None;
    }

    let top = logits.iter().position(|&z| z == max).unwrap();
    let lse = max / t + logits.iter().map(|z| (z / t - max / t).exp()).sum::<f64>().ln();
    let mut p: Vec<f64> = logits.iter().map(|z| (z / t - lse).exp()).collect();
    let h: f64 = p.iter().filter(|p| **p > 0.0).map(|p| -p * p.ln()).sum();
    let h = if logits.len() > 1 { h / (logits.len() as f64).ln() } else { 0.0 };
    let p1 = p[top];
    p[top] = -1.0;
    let p2 = p.iter().copied().fold(0.0, f64::max);
    Some((top as u8, [p1, h, p1 - p2, -t * lse]))
}

/// Band by definition: another class within Chebyshev distance k.
fn reference_band(classes: &[u8], w: usize, h: usize, k: usize) -> Vec<bool> {
    let mut band = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let c = classes[y * w + x];
            for v in y.saturating_sub(k)..(y + k + 1).min(h) {
                for u in x.saturating_sub(k)..(x + k + 1).min(w) {
                    band[y * w + x] |= classes[v * w + u] != c;
                }
            }
        }
    }
    band
}

/// Segments by breadth-first flood fill, seeds in row-major order: (first pixel, class,
/// pixels, mean entropy).
fn reference_segments(
    classes: &[u8],
    scored: &[bool],
    entropy: &[f64],
    w: usize,
    h: usize,
) -> Vec<(usize, u8, u32, f64)> {
    let mut seen = vec![false; w * h];
    let mut segments = Vec::new();
    for seed in 0..w * h {
        if !scored[seed] || seen[seed] {
            continue;
        }
        seen[seed] = true;
        let (mut size, mut sum) = (0u32, 0.0);
        let mut queue = VecDeque::from([seed]);
        while let Some(p) = queue.pop_front() {
            size += 1;
            sum += entropy[p];
            let (x, y) = ((p % w) as isize, (p / w) as isize);
            for (dx, dy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                let (u, v) = (x + dx, y + dy);
                if u < 0 || v < 0 || u >= w as isize || v >= h as isize {
                    continue;
                }
                let q = v as usize * w + u as usize;
                if scored[q] && !seen[q] && classes[q] == classes[seed] {
                    seen[q] = true;
                    queue.push_back(q);
                }
            }
        }
        segments.push((seed, classes[seed], size, sum / f64::from(size)));
    }
    segments
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// Histogram quantile vs the order statistic: within one bin of `width`, after clamping.
fn check_quantile(got: f32, values: &[f64], q: f64, lo: f64, hi: f64, what: &str) {
    if values.is_empty() {
        assert_eq!(got, 0.0, "{what} of no pixels");
        return;
    }
    let mut sorted: Vec<f64> = values.iter().map(|v| v.clamp(lo, hi)).collect();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    let tolerance = (hi - lo) / 256.0 + 1e-6 * (1.0 + hi.abs());
    assert!(
        (f64::from(got) - sorted[rank]).abs() <= tolerance,
        "{what}: {got} vs {}",
        sorted[rank]
    );
}

/// Fraction beyond a level, allowing pixels within 1e-5 of the level to fall either side.
fn check_fraction(got: f32, values: &[f64], beyond: impl Fn(f64) -> bool, level: f64, what: &str) {
    let n = values.len().max(1) as f64;
    let want = values.iter().filter(|&&v| beyond(v)).count() as f64 / n;
    let near = values.iter().filter(|&&v| (v - level).abs() < 1e-5).count() as f64 / n;
    assert!((f64::from(got) - want).abs() <= near + 1e-6, "{what}: {got} vs {want}");
}

fn check_mean(got: f32, values: &[f64], scale: f64, what: &str) {
    let want = mean(values);
    let tolerance = 1e-5 + 1e-6 * scale;
    assert!((f64::from(got) - want).abs() <= tolerance, "{what}: {got} vs {want}");
}

/// One frame case: `[c, h, w]` CHW logits, an optional ROI, and settings.
#[derive(Debug, Clone)]
struct Case {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
    roi: Option<Vec<u8>>,
    temperature: f32,
    boundary_width: u8,
    min_segment_pixels: u32,
}

fn check_case(case: &Case) {
    let Case { c, h, w, ref data, ref roi, temperature, boundary_width, min_segment_pixels } =
        *case;
    let config = StatsConfig {
        temperature: Temperature::try_new(temperature).unwrap(),
        boundary_width,
        min_segment_pixels,
        energy_range: EnergyRange::try_new(-40.0, 10.0).unwrap(),
        ..StatsConfig::default()
    };
    let map = OutputMap::try_new(data, c, h, w, Layout::Chw, OutputKind::Logits).unwrap();
    let mut buffers = Buffers::new(h * w);
    let stats: FrameStats<CLASSES, SEGMENTS> =
        analyze_with(&map, &config, buffers.maps(), roi.as_deref()).unwrap();

    // Per-pixel reference and the pixel accounting.
    let t = f64::from(temperature);
    let pixels: Vec<Option<(u8, [f64; 4])>> = (0..h * w)
        .map(|p| {
            let logits: Vec<f64> = (0..c).map(|k| f64::from(data[k * h * w + p])).collect();
            reference_pixel(&logits, t)
        })
        .collect();
    let keep: Vec<bool> = (0..h * w).map(|p| roi.as_ref().is_none_or(|r| r[p] != 0)).collect();
    let scored: Vec<bool> = (0..h * w).map(|p| keep[p] && pixels[p].is_some()).collect();
    let classes: Vec<u8> = pixels.iter().map(|s| s.map_or(0, |s| s.0)).collect();
    assert_eq!(buffers.classes, classes, "class map");
    assert_eq!(stats.pixels as usize, h * w);
    assert_eq!(stats.ignored_pixels as usize, keep.iter().filter(|k| !**k).count());
    let nonfinite = (0..h * w).filter(|&p| keep[p] && pixels[p].is_none()).count();
    assert_eq!(stats.nonfinite_pixels as usize, nonfinite);

    // Whole-frame means, quantiles and fractions.
    let score = |i: usize, set: &dyn Fn(usize) -> bool| -> Vec<f64> {
        (0..h * w).filter(|&p| scored[p] && set(p)).map(|p| pixels[p].unwrap().1[i]).collect()
    };
    let all = |_: usize| true;
    let [max_softmax, entropy, margin, energy] = [0, 1, 2, 3].map(|i| score(i, &all));
    let energy_scale = mean(&energy.iter().map(|e| e.abs()).collect::<Vec<_>>());
    check_mean(stats.mean_max_softmax, &max_softmax, 0.0, "mean_max_softmax");
    check_mean(stats.mean_entropy, &entropy, 0.0, "mean_entropy");
    check_mean(stats.mean_margin, &margin, 0.0, "mean_margin");
    check_mean(stats.mean_energy, &energy, 10.0 + energy_scale, "mean_energy");
    for (q, got) in [(0.5, stats.p50_entropy), (0.9, stats.p90_entropy), (0.99, stats.p99_entropy)]
    {
        check_quantile(got, &entropy, q, 0.0, 1.0, "entropy quantile");
    }
    for (q, got) in [(0.5, stats.p50_max_softmax), (0.9, stats.p90_max_softmax)] {
        check_quantile(got, &max_softmax, q, 0.0, 1.0, "max-softmax quantile");
    }
    for (q, got) in [(0.5, stats.p50_margin), (0.99, stats.p99_margin)] {
        check_quantile(got, &margin, q, 0.0, 1.0, "margin quantile");
    }
    for (q, got) in [(0.5, stats.p50_energy), (0.9, stats.p90_energy)] {
        check_quantile(got, &energy, q, -40.0, 10.0, "energy quantile");
    }
    check_fraction(stats.uncertain_fraction, &entropy, |v| v > 0.5, 0.5, "uncertain");
    check_fraction(stats.low_max_softmax_fraction, &max_softmax, |v| v < 0.5, 0.5, "low p1");
    check_fraction(stats.low_margin_fraction, &margin, |v| v < 0.2, 0.2, "low margin");
    check_fraction(stats.high_energy_fraction, &energy, |v| v > -5.0, -5.0, "high energy");

    // Boundary band and interior.
    let band = reference_band(&classes, w, h, usize::from(boundary_width));
    let band_u8: Vec<u8> = band.iter().map(|&b| u8::from(b)).collect();
    assert_eq!(buffers.boundary, band_u8, "band");
    let n = max_softmax.len().max(1) as f32;
    let band_scored = (0..h * w).filter(|&p| scored[p] && band[p]).count() as f32;
    assert!((stats.boundary_fraction - band_scored / n).abs() < 1e-6, "boundary_fraction");
    let inside = |p: usize| !band[p];
    let [i_max_softmax, i_entropy, i_margin, i_energy] = [0, 1, 2, 3].map(|i| score(i, &inside));
    assert_eq!(stats.interior_pixels as usize, i_entropy.len());
    check_mean(stats.interior_mean_max_softmax, &i_max_softmax, 0.0, "interior max-softmax");
    check_mean(stats.interior_mean_entropy, &i_entropy, 0.0, "interior entropy");
    check_mean(stats.interior_mean_margin, &i_margin, 0.0, "interior margin");
    check_mean(stats.interior_mean_energy, &i_energy, 10.0 + energy_scale, "interior energy");
    check_quantile(stats.interior_p90_entropy, &i_entropy, 0.9, 0.0, 1.0, "interior p90");
    check_fraction(stats.interior_uncertain_fraction, &i_entropy, |v| v > 0.5, 0.5, "i unc");

    // Per-class: the CLASSES most frequent (ties: lower id), by ascending id.
    let mut counts = [0u32; 256];
    for p in (0..h * w).filter(|&p| scored[p]) {
        counts[usize::from(classes[p])] += 1;
    }
    let mut order: Vec<usize> = (0..256).filter(|&k| counts[k] > 0).collect();
    order.sort_by_key(|&k| (std::cmp::Reverse(counts[k]), k));
    let mut listed: Vec<usize> = order.iter().copied().take(CLASSES).collect();
    listed.sort();
    let got: Vec<usize> = stats.classes.iter().map(|s| usize::from(s.class)).collect();
    assert_eq!(got, listed, "listed classes");
    assert_eq!(stats.classes_dropped as usize, order.len() - listed.len());
    let dropped_pixels: u32 = order.iter().skip(CLASSES).map(|&k| counts[k]).sum();
    assert_eq!(stats.classes_dropped_pixels, dropped_pixels);
    for entry in stats.classes.iter() {
        let of_class = |p: usize| classes[p] == entry.class;
        assert_eq!(entry.pixels, counts[usize::from(entry.class)]);
        check_mean(entry.mean_entropy, &score(1, &of_class), 0.0, "class entropy");
        check_mean(entry.mean_margin, &score(2, &of_class), 0.0, "class margin");
        check_mean(entry.mean_energy, &score(3, &of_class), 10.0 + energy_scale, "class energy");
    }

    // Segments: count, list (largest first, ties by id), largest and worst.
    let all_entropy: Vec<f64> = pixels.iter().map(|s| s.map_or(0.0, |s| s.1[1])).collect();
    let segments = reference_segments(&classes, &scored, &all_entropy, w, h);
    assert_eq!(stats.segments as usize, segments.len(), "segment count");
    let mut by_size: Vec<usize> = (0..segments.len()).collect();
    by_size.sort_by_key(|&i| (std::cmp::Reverse(segments[i].2), i));
    assert_eq!(stats.segment_list.len(), segments.len().min(SEGMENTS));
    assert_eq!(stats.segments_dropped as usize, segments.len() - stats.segment_list.len());
    for (got, &i) in stats.segment_list.iter().zip(&by_size) {
        let (first, class, size, entropy) = segments[i];
        assert_eq!((got.id as usize, got.class, got.pixels), (i, class, size));
        assert_eq!((got.x as usize, got.y as usize), (first % w, first / w));
        assert!((f64::from(got.mean_entropy) - entropy).abs() < 1e-5, "segment entropy");
    }
    assert_eq!(stats.largest_segment.map(|s| s.id as usize), by_size.first().copied());
    let worst = segments
        .iter()
        .filter(|s| s.2 >= min_segment_pixels)
        .map(|s| s.3)
        .fold(None, |w: Option<f64>, e| Some(w.map_or(e, |w| w.max(e))));
    match (stats.worst_segment, worst) {
        (Some(got), Some(want)) => {
            assert!(got.pixels >= min_segment_pixels);
            assert!((f64::from(got.mean_entropy) - want).abs() < 1e-5, "worst segment");
            assert_eq!(stats.worst_segment_entropy, got.mean_entropy);
        }
        (None, None) => assert_eq!(stats.worst_segment_entropy, 0.0),
        (got, want) => panic!("worst segment {got:?} vs {want:?}"),
    }

    // The segment ids in the label map agree with the list.
    for entry in stats.segment_list.iter() {
        let first = entry.y as usize * w + entry.x as usize;
        assert_eq!(buffers.labels[first], entry.id);
    }
}

/// A logit value: mostly ordinary, sometimes extreme or non-finite.
fn logit(extreme: bool) -> BoxedStrategy<f32> {
    if extreme {
        prop_oneof![
            4 => -20.0f32..20.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(65504.0f32),
            1 => Just(-65504.0f32),
            1 => Just(1e4f32),
            1 => Just(-1e4f32),
        ]
        .boxed()
    } else {
        (-20.0f32..20.0).boxed()
    }
}

fn case() -> impl Strategy<Value = Case> {
    let shape =
        (prop_oneof![Just(1usize), Just(2), 3usize..=24, Just(256)], 1usize..=12, 1usize..=12);
    let settings = (0.25f32..4.0, 0u8..=3, 1u32..=6, any::<bool>(), any::<bool>(), any::<bool>());
    (shape, settings).prop_flat_map(|((c, h, w), (temperature, k, min, extreme, blocky, roi))| {
        let n = h * w;
        let data = proptest::collection::vec(logit(extreme), c * n);
        // Coarse 3x3 class grid that, when `blocky`, lifts one class per block by 30: large
        // segments and straight boundaries instead of noise.
        let grid = proptest::collection::vec(0..c, 9);
        let mask = proptest::collection::vec(prop_oneof![3 => Just(1u8), 1 => Just(0u8)], n);
        (data, grid, mask).prop_map(move |(mut data, grid, mask)| {
            if blocky {
                for p in 0..n {
                    let (x, y) = (p % w, p / w);
                    let class = grid[(y * 3 / h) * 3 + x * 3 / w];
                    data[class * n + p] += 30.0;
                }
            }
            Case {
                c,
                h,
                w,
                data,
                roi: roi.then_some(mask),
                temperature,
                boundary_width: k,
                min_segment_pixels: min,
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_statistic_matches_f64_reference(case in case()) {
        check_case(&case);
    }
}

#[test]
fn one_pixel_frame() {
    let case = Case {
        c: 3,
        h: 1,
        w: 1,
        data: vec![1.0, 2.0, 3.0],
        roi: None,
        temperature: 1.0,
        boundary_width: 2,
        min_segment_pixels: 1,
    };
    check_case(&case);
}

#[test]
fn all_one_class_frame_has_no_boundary_and_one_segment() {
    let (h, w) = (7, 9);
    let mut data = vec![0.0f32; 2 * h * w];
    data[h * w..].fill(5.0);
    let map = OutputMap::try_new(&data, 2, h, w, Layout::Chw, OutputKind::Logits).unwrap();
    let mut buffers = Buffers::new(h * w);
    let stats: FrameStats =
        analyze_with(&map, &StatsConfig::default(), buffers.maps(), None).unwrap();
    assert_eq!((stats.segments, stats.boundary_fraction), (1, 0.0));
    assert_eq!(stats.interior_pixels as usize, h * w);
    assert_eq!(stats.largest_segment.unwrap().pixels as usize, h * w);
    assert_eq!(stats.largest_segment_fraction, 1.0);
    assert_eq!(stats.worst_segment.unwrap().pixels as usize, h * w);
    check_case(&Case {
        c: 2,
        h,
        w,
        data,
        roi: None,
        temperature: 1.0,
        boundary_width: 2,
        min_segment_pixels: 32,
    });
}

#[test]
fn fully_ignored_frame_is_all_zero() {
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let map = OutputMap::try_new(&data, 1, 2, 2, Layout::Chw, OutputKind::Logits).unwrap();
    let mut buffers = Buffers::new(4);
    let stats: FrameStats =
        analyze_with(&map, &StatsConfig::default(), buffers.maps(), Some(&[0; 4])).unwrap();
    assert_eq!((stats.pixels, stats.ignored_pixels, stats.segments), (4, 4, 0));
    assert_eq!((stats.mean_entropy, stats.mean_energy, stats.p50_energy), (0.0, 0.0, 0.0));
    assert!(stats.largest_segment.is_none() && stats.worst_segment.is_none());
}

#[test]
fn roi_of_wrong_size_is_refused() {
    let data = [1.0f32; 4];
    let map = OutputMap::try_new(&data, 1, 2, 2, Layout::Chw, OutputKind::Logits).unwrap();
    let mut buffers = Buffers::new(4);
    let error =
        analyze_with::<_, 32, 32>(&map, &StatsConfig::default(), buffers.maps(), Some(&[1; 3]))
            .unwrap_err();
    assert_eq!(error.to_string(), "expected 4 entries (height x width) in the roi buffer, found 3");
}

/// Runs `analyze_with` on any element type and layout.
fn stats_of<T: qualm_core::Element>(map: OutputMap<'_, T>) -> FrameStats {
    let mut buffers = Buffers::new(map.pixels());
    analyze_with(&map, &StatsConfig::default(), buffers.maps(), None).unwrap()
}

proptest! {
    /// Every element type and layout reads the same real logits: the statistics are
    /// bit-identical to those of the f32 CHW map holding those values.
    #[test]
    fn element_types_and_layouts_agree(
        c in 1usize..=20,
        h in 1usize..=6,
        w in 1usize..=6,
        raw in proptest::collection::vec(any::<i8>(), 20 * 36),
        scale in 0.01f32..1.0,
        zero_point in -20i32..20,
    ) {
        let n = h * w;
        let q: Vec<i8> = raw[..c * n].to_vec();
        let quantization = Quantization { scale, zero_point };
        let real: Vec<f32> =
            q.iter().map(|&v| scale * (i32::from(v) - zero_point) as f32).collect();
        let chw = |data: &[f32]| {
            stats_of(OutputMap::try_new(data, c, h, w, Layout::Chw, OutputKind::Logits).unwrap())
        };
        let want = chw(&real);

        let quantized = OutputMap::try_new(&q, c, h, w, Layout::Chw, OutputKind::Logits).unwrap();
        prop_assert_eq!(stats_of(quantized.with_quantization(quantization)), want);

        let unsigned: Vec<u8> = q.iter().map(|&v| (i32::from(v) + 128) as u8).collect();
        let shifted = Quantization { scale, zero_point: zero_point + 128 };
        let map = OutputMap::try_new(&unsigned, c, h, w, Layout::Chw, OutputKind::Logits).unwrap();
        prop_assert_eq!(stats_of(map.with_quantization(shifted)), want);

        let mut hwc = vec![0.0f32; c * n];
        for k in 0..c {
            for p in 0..n {
                hwc[p * c + k] = real[k * n + p];
            }
        }
        let map = OutputMap::try_new(&hwc, c, h, w, Layout::Hwc, OutputKind::Logits).unwrap();
        prop_assert_eq!(stats_of(map), want);

        let half: Vec<half::f16> = real.iter().map(|&v| half::f16::from_f32(v)).collect();
        let rounded: Vec<f32> = half.iter().map(|v| v.to_f32()).collect();
        let map = OutputMap::try_new(&half, c, h, w, Layout::Chw, OutputKind::Logits).unwrap();
        prop_assert_eq!(stats_of(map), chw(&rounded));
    }

    /// A sigmoid logit z is the two-class map [0, z].
    #[test]
    fn sigmoid_logit_is_two_class_logits(z in proptest::collection::vec(-30.0f32..30.0, 12)) {
        let map = OutputMap::try_new(&z, 1, 3, 4, Layout::Chw, OutputKind::SigmoidLogit).unwrap();
        let mut two = vec![0.0f32; 24];
        two[12..].copy_from_slice(&z);
        let want = OutputMap::try_new(&two, 2, 3, 4, Layout::Chw, OutputKind::Logits).unwrap();
        prop_assert_eq!(stats_of(map), stats_of(want));
    }
}
