//! Per-pixel uncertainty scores from one pixel's class logits.

use crate::math;

/// Largest number of classes a map may have; class ids fit in a `u8`.
pub const MAX_CLASSES: usize = 256;

/// Softmax temperature `T > 0`; logits are divided by it before the softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Temperature(f32);

impl Temperature {
    /// The identity temperature, `T = 1`.
    pub const ONE: Self = Self(1.0);

    /// Checks that `value` is finite and strictly positive.
    ///
    /// # Errors
    /// Hands back the rejected value when it is not a finite number above zero.
    pub fn try_new(value: f32) -> Result<Self, f32> {
        if value.is_finite() && value > 0.0 { Ok(Self(value)) } else { Err(value) }
    }

    /// The temperature as a number.
    pub fn get(self) -> f32 {
        self.0
    }
}

impl Default for Temperature {
    fn default() -> Self {
        Self::ONE
    }
}

/// The uncertainty scores of one pixel, after temperature scaling.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PixelScores {
    /// Index of the top-1 class.
    pub class: u8,
    /// Largest softmax probability `p1`, in `[1/C, 1]`.
    pub max_softmax: f32,
    /// Shannon entropy divided by `ln C`, in `[0, 1]`; 0 when `C = 1`.
    pub entropy: f32,
    /// `p1 - p2`, the gap between the two largest probabilities, in `[0, 1]`.
    pub margin: f32,
    /// Energy `-T * logsumexp(z / T)`; higher (less negative) means less familiar input.
    pub energy: f32,
}

/// Computes all scores of one pixel from its `C` logits in one pass after the max.
///
/// Works in log-space: with `d_i = (z_i - max) / T` and `s = sum(exp(d_i))`,
/// `ln p_i = d_i - ln s`, so `H = ln s - sum(exp(d_i) * d_i) / s`. Classes with `exp(d_i) = 0`
/// add nothing, which keeps logits such as `[0, -inf]` or `[65504, -65504]` at an exact 0
/// entropy rather than `0 * inf = NaN`.
///
/// Returns `None` for a pixel that has a NaN or `+inf` logit, or only `-inf` logits: such a
/// pixel is counted apart and never enters a mean.
///
/// # Panics
/// Panics when `logits` is empty or longer than [`MAX_CLASSES`].
#[inline]
pub fn score_logits(logits: &[f32], temperature: Temperature) -> Option<PixelScores> {
    let classes = logits.len();
    assert!((1..=MAX_CLASSES).contains(&classes), "expected 1 to 256 classes, got {classes}");

    let mut max = f32::NEG_INFINITY;
    let mut top = 0;
    let mut finite = true;
    for (class, &z) in logits.iter().enumerate() {
        finite &= !(z.is_nan() || z == f32::INFINITY);
        if z > max {
            max = z;
            top = class;
        }
    }
    if !finite || max == f32::NEG_INFINITY {
        return None;
    }

    let inverse_t = 1.0 / temperature.get();
    let mut sum = 0.0f32;
    let mut weighted = 0.0f32;
    let mut second = f32::NEG_INFINITY;
    for (class, &z) in logits.iter().enumerate() {
        let d = (z - max) * inverse_t;
        let e = math::exp(d);
        sum += e;
        if e > 0.0 {
            weighted += e * d;
        }
        if class != top && d > second {
            second = d;
        }
    }

    // p1 = 1 / s because the top class has d = 0; p2 = exp(d2) / s.
    let max_softmax = 1.0 / sum;
    let margin = (1.0 - math::exp(second)) / sum;
    let entropy = if classes > 1 {
        let nats = math::ln(sum) - weighted / sum;
        (nats / math::ln(classes as f32)).clamp(0.0, 1.0)
    } else {
        0.0
    };

    // -T * logsumexp(z / T) = -(max + T * ln s).
    let energy = -(max + temperature.get() * math::ln(sum));

    Some(PixelScores { class: top as u8, max_softmax, entropy, margin, energy })
}

/// Number of per-pixel scores, in the order of [`Score`].
pub const SCORES: usize = 4;

/// One of the per-pixel scores; its [`index`](Score::index) places it in a `[f32; SCORES]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Score {
    /// [`PixelScores::max_softmax`]; lower means more uncertain.
    MaxSoftmax,
    /// [`PixelScores::entropy`]; higher means more uncertain.
    Entropy,
    /// [`PixelScores::margin`]; lower means more uncertain.
    Margin,
    /// [`PixelScores::energy`]; higher means more uncertain.
    Energy,
}

impl Score {
    /// Every score, in index order.
    pub const ALL: [Self; SCORES] = [Self::MaxSoftmax, Self::Entropy, Self::Margin, Self::Energy];

    /// Position of the score in a `[f32; SCORES]` record.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Most pixels scored together in one tile.
pub(crate) const TILE_PIXELS: usize = 256;

/// Values in one `[classes, pixels]` tile: 16 KiB of `f32`, small enough for L1 and the stack.
pub(crate) const TILE_VALUES: usize = 4096;

/// Pixels per tile for `classes` classes: at least 16, since `classes <= 256`.
pub(crate) fn tile_pixels(classes: usize) -> usize {
    (TILE_VALUES / classes).min(TILE_PIXELS)
}

/// 1 for a logit that makes its pixel non-finite (NaN or `+inf`), else 0; `-inf` is a valid
/// logit (a class the model rules out).
#[inline(always)]
fn not_finite_logit(z: f32) -> u32 {
    u32::from(z.is_nan() | (z == f32::INFINITY))
}

/// Per-pixel outputs of [`TileScores::write`], each one entry per pixel of the tile.
pub(crate) struct TileOutput<'a> {
    /// Top-1 class (0 for a non-finite pixel).
    pub classes: &'a mut [u8],
    /// Normalized entropy scaled to `0..=255` (255 for a non-finite pixel).
    pub uncertainty: &'a mut [u8],
    /// The scores in [`Score`] order; all NaN for a non-finite pixel.
    pub scores: &'a mut [[f32; SCORES]],
}

/// The scores of a tile's pixels as the kernels leave them: one array per score, so that the
/// frame statistics can be taken over them with vector instructions before they are
/// interleaved into per-pixel records. Entries past the tile's pixel count are stale.
pub(crate) struct TileScores {
    /// The scores in [`Score`] order, one array each; NaN for a non-finite pixel.
    pub values: [[f32; TILE_PIXELS]; SCORES],
    /// Top-1 class (0 for a non-finite pixel).
    pub class: [u32; TILE_PIXELS],
    /// 1 for a finite pixel, 0 for one with a NaN or `+inf` logit or only `-inf` logits.
    pub finite: [u32; TILE_PIXELS],
}

impl TileScores {
    /// Zeroed scores.
    pub fn new() -> Self {
        Self {
            values: [[0.0; TILE_PIXELS]; SCORES],
            class: [0; TILE_PIXELS],
            finite: [0; TILE_PIXELS],
        }
    }

    /// Writes the first `out.classes.len()` pixels into per-pixel records; non-finite pixels get
    /// uncertainty 255.
    pub fn write(&self, out: TileOutput) {
        let n = out.classes.len();
        for (slot, &c) in out.classes.iter_mut().zip(&self.class[..n]) {
            *slot = c as u8;
        }
        let [max_softmax, entropy, margin, energy] = &self.values;
        let uncertainty = out.uncertainty.iter_mut().zip(&entropy[..n]).zip(&self.finite[..n]);
        for ((slot, &h), &finite) in uncertainty {
            // Rounded to nearest; 255.5 rounds down to the 255 of a non-finite pixel. The same
            // as an `as u8` of the value, which would not vectorize.
            *slot = math::floor_small(if finite != 0 { h * 255.0 + 0.5 } else { 255.5 }) as u8;
        }
        for (i, record) in out.scores.iter_mut().enumerate() {
            *record = [max_softmax[i], entropy[i], margin[i], energy[i]];
        }
    }
}

/// Scores every pixel of a `[classes, n]` channel-major tile (see `OutputMap::load_tile`).
///
/// The same maths as [`score_logits`], reorganised so that each step is a loop over `n`
/// contiguous pixels for one class at a time (which vectorizes) instead of a loop over the
/// classes of one pixel: a max pass (top-1, top-2, non-finite flags), an exp-sum pass, and a
/// finishing pass, with the polynomial `exp` and `ln` of [`crate::math`].
///
/// Class `c` of the tile's pixel `i` is at `values[offset + c * stride + i]`: a copied tile has
/// `offset = 0, stride = n`; an f32 CHW map read in place has the pixel index as offset and
/// `height * width` as stride.
///
/// The results go to the first `n` entries of `out`.
///
/// Two classes (every sigmoid map, and two-class logits) take [`score_pair`], which gives the
/// same bits in one pass.
pub(crate) fn score_tile(
    values: &[f32],
    offset: usize,
    stride: usize,
    classes: usize,
    temperature: Temperature,
    n: usize,
    out: &mut TileScores,
) {
    if classes == 2 {
        let negative = &values[offset..offset + n];
        let positive = &values[offset + stride..offset + stride + n];
        score_pair(Some(negative), positive, temperature, out);
    } else {
        score_tile_general(values, offset, stride, classes, temperature, n, out);
    }
}

/// [`score_tile`] for any number of classes.
fn score_tile_general(
    values: &[f32],
    offset: usize,
    stride: usize,
    classes: usize,
    temperature: Temperature,
    n: usize,
    out: &mut TileScores,
) {
    debug_assert!(n <= TILE_PIXELS);
    let row = |class: usize| &values[offset + class * stride..offset + class * stride + n];

    // The passes work in place in `out`'s arrays, in the roles below, and the finishing pass
    // turns them into the scores: written as zipped iterators over distinct arrays, so that
    // every loop vectorizes without runtime overlap checks.
    let TileScores { values: [max, second, sum, weighted], class: top, finite: bad } = out;
    let (max, second, top, bad) = (&mut max[..n], &mut second[..n], &mut top[..n], &mut bad[..n]);
    let (sum, weighted) = (&mut sum[..n], &mut weighted[..n]);

    // Max pass. `bad` flags NaN and +inf; a NaN in class 0 stays the max (nothing compares
    // above it), which is harmless because the pixel is flagged anyway.
    max.copy_from_slice(row(0));
    second.fill(f32::NEG_INFINITY);
    top.fill(0);
    for (b, &z) in bad.iter_mut().zip(row(0)) {
        *b = not_finite_logit(z);
    }
    for class in 1..classes {
        let lanes = max.iter_mut().zip(second.iter_mut()).zip(top.iter_mut()).zip(bad.iter_mut());
        for ((((m, s), t), b), &z) in lanes.zip(row(class)) {
            // Two plain selects rather than an else-if chain, which compiles to a branch per
            // lane instead of vector blends.
            let above = z > *m;
            let runner_up = if z > *s { z } else { *s };
            *s = if above { *m } else { runner_up };
            *m = if above { z } else { *m };
            *t = if above { class as u32 } else { *t };
            *b |= not_finite_logit(z);
        }
    }

    // Exp-sum pass, d = (z - max) / T <= 0: s = sum(e^d), w = sum(e^d * d). Terms with
    // e^d = 0 are skipped so that d = -inf adds 0, not 0 * -inf = NaN.
    let inverse_t = 1.0 / temperature.get();
    sum.fill(0.0);
    weighted.fill(0.0);
    for class in 0..classes {
        let lanes = sum.iter_mut().zip(weighted.iter_mut()).zip(&*max);
        for (((s, w), &m), &z) in lanes.zip(row(class)) {
            let d = (z - m) * inverse_t;
            let e = math::fast_exp(d);
            *s += e;
            *w += if e > 0.0 { e * d } else { 0.0 };
        }
    }

    // Finishing pass, branch-free so that it vectorizes, written over the pass's own arrays:
    // p1 = 1 / s, margin = (1 - e^d2) / s, H = (ln s - w / s) / ln C, energy = -(max + T ln s);
    // non-finite pixels get class 0.
    let t = temperature.get();
    let inverse_ln_c = if classes > 1 { 1.0 / math::ln(classes as f32) } else { 0.0 };
    let lanes = max.iter_mut().zip(second.iter_mut()).zip(sum.iter_mut()).zip(weighted.iter_mut());
    for ((((m, s2), s), w), (b, c)) in lanes.zip(bad.iter_mut().zip(top.iter_mut())) {
        let ln_s = math::fast_ln(*s);
        let max_softmax = 1.0 / *s;
        let margin = (1.0 - math::fast_exp((*s2 - *m) * inverse_t)) * max_softmax;
        let entropy = ((ln_s - *w * max_softmax) * inverse_ln_c).clamp(0.0, 1.0);
        let energy = -(*m + t * ln_s);
        let finite = *b == 0 && *m != f32::NEG_INFINITY;
        *b = u32::from(finite);
        *c = if finite { *c } else { 0 };
        *m = if finite { max_softmax } else { f32::NAN };
        *s2 = if finite { entropy } else { f32::NAN };
        *s = if finite { margin } else { f32::NAN };
        *w = if finite { energy } else { f32::NAN };
    }
}

/// [`score_tile`] for two classes, the logits of class 0 in `negative` (all 0 when `None`: a
/// sigmoid logit `z` is the pair `[0, z]`) and of class 1 in `positive`.
///
/// With two classes the exp-sum has one term besides the top class's 1: with `d <= 0` the
/// other class's scaled logit minus the max, `s = 1 + e^d`, and the same `e^d` gives the margin,
/// so a pixel costs one `exp` and one `ln` instead of three and one, in a single pass. Every
/// operation is the one [`score_tile_general`] does for two classes, in the same order, so the
/// bits are the same (the tests check it): a map gives the same statistics in every layout and
/// element type, whichever path reads it.
pub(crate) fn score_pair(
    negative: Option<&[f32]>,
    positive: &[f32],
    temperature: Temperature,
    out: &mut TileScores,
) {
    let n = positive.len();
    debug_assert!(n <= TILE_PIXELS);
    let inverse_t = 1.0 / temperature.get();
    let t = temperature.get();
    let inverse_ln_c = 1.0 / math::ln(2.0);

    // A sigmoid map reads its class-0 logits from zeros rather than branching per pixel.
    static ZEROS: [f32; TILE_PIXELS] = [0.0; TILE_PIXELS];
    let negative = &negative.unwrap_or(&ZEROS)[..n];
    let [p1s, hs, margins, energies] = &mut out.values;
    let (p1s, hs, margins, energies) =
        (&mut p1s[..n], &mut hs[..n], &mut margins[..n], &mut energies[..n]);
    let (tops, finites) = (&mut out.class[..n], &mut out.finite[..n]);

    // One branch-free loop over plain f32 / u32 arrays of the same length, so that it
    // vectorizes.
    for i in 0..n {
        let (z0, z1) = (negative[i], positive[i]);
        let above = z1 > z0;
        let max = if above { z1 } else { z0 };
        let other = if above { z0 } else { z1 };
        let d = (other - max) * inverse_t;
        let e = math::fast_exp(d);
        let sum = 1.0 + e;
        let weighted = if e > 0.0 { e * d } else { 0.0 };
        let ln_s = math::fast_ln(sum);
        let p = 1.0 / sum;
        let bad = not_finite_logit(z0) | not_finite_logit(z1);
        let finite = bad == 0 && max != f32::NEG_INFINITY;
        let h = ((ln_s - weighted * p) * inverse_ln_c).clamp(0.0, 1.0);
        finites[i] = u32::from(finite);
        tops[i] = u32::from(above & finite);
        p1s[i] = if finite { p } else { f32::NAN };
        hs[i] = if finite { h } else { f32::NAN };
        margins[i] = if finite { (1.0 - e) * p } else { f32::NAN };
        energies[i] = if finite { -(max + t * ln_s) } else { f32::NAN };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 reference: probabilities first, then each score by its definition.
    fn reference(logits: &[f64], t: f64) -> (usize, f64, f64, f64, f64) {
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let top = logits.iter().position(|&z| z == max).unwrap();
        let lse = max / t + logits.iter().map(|z| (z / t - max / t).exp()).sum::<f64>().ln();
        let log_p: Vec<f64> = logits.iter().map(|z| z / t - lse).collect();
        let mut p: Vec<f64> = log_p.iter().map(|l| l.exp()).collect();
        let entropy: f64 =
            log_p.iter().zip(&p).filter(|(_, p)| **p > 0.0).map(|(l, p)| -p * l).sum();
        let normalized = if logits.len() > 1 { entropy / (logits.len() as f64).ln() } else { 0.0 };
        let p1 = p[top];
        p[top] = f64::NEG_INFINITY;
        let p2 = p.iter().cloned().fold(0.0, f64::max);
        (top, p1, normalized, p1 - p2, -t * lse)
    }

    fn check(logits: &[f32], t: f32) {
        let wide: Vec<f64> = logits.iter().map(|&z| z as f64).collect();
        let (top, p1, h, margin, energy) = reference(&wide, t as f64);
        let got = score_logits(logits, Temperature::try_new(t).unwrap()).unwrap();
        // f32 arithmetic over up to 256 terms: 1e-5 absolute on scores in [0, 1], and
        // 1e-6 relative (plus 1e-4 absolute) on the unbounded energy.
        assert_eq!(got.class as usize, top, "class for {logits:?}");
        assert!((got.max_softmax as f64 - p1).abs() < 1e-5, "p1 {} vs {p1}", got.max_softmax);
        assert!((got.entropy as f64 - h).abs() < 1e-5, "entropy {} vs {h}", got.entropy);
        assert!((got.margin as f64 - margin).abs() < 1e-5, "margin {} vs {margin}", got.margin);
        let tolerance = 1e-4 + 1e-6 * energy.abs();
        assert!(
            (got.energy as f64 - energy).abs() < tolerance,
            "energy {} vs {energy}",
            got.energy
        );
    }

    #[test]
    fn hand_computed_two_classes() {
        // Logits [0, ln 3]: p = [1/4, 3/4]; H = -(1/4 ln 1/4 + 3/4 ln 3/4) / ln 2 = 0.811278.
        let s = score_logits(&[0.0, 3.0f32.ln()], Temperature::ONE).unwrap();
        assert_eq!(s.class, 1);
        assert!((s.max_softmax - 0.75).abs() < 1e-6);
        assert!((s.margin - 0.5).abs() < 1e-6);
        assert!((s.entropy - 0.811_278).abs() < 1e-5);
        assert!((s.energy + 4.0f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn saturated_logits_give_exact_zero_entropy() {
        for logits in [[0.0, f32::NEG_INFINITY], [65504.0, -65504.0], [f32::NEG_INFINITY, 0.0]] {
            let s = score_logits(&logits, Temperature::ONE).unwrap();
            assert_eq!(s.entropy, 0.0, "{logits:?}");
            assert_eq!(s.max_softmax, 1.0, "{logits:?}");
            assert_eq!(s.margin, 1.0, "{logits:?}");
        }
    }

    #[test]
    fn non_finite_pixels_are_refused() {
        assert!(score_logits(&[f32::NAN, 0.0], Temperature::ONE).is_none());
        assert!(score_logits(&[f32::INFINITY, 0.0], Temperature::ONE).is_none());
        assert!(score_logits(&[f32::NEG_INFINITY; 3], Temperature::ONE).is_none());
    }

    #[test]
    fn one_class_is_certain() {
        let s = score_logits(&[-3.5], Temperature::ONE).unwrap();
        assert_eq!((s.class, s.max_softmax, s.entropy, s.margin), (0, 1.0, 0.0, 1.0));
        assert_eq!(s.energy, 3.5);
    }

    #[test]
    fn temperature_rejects_non_positive() {
        assert_eq!(Temperature::try_new(0.0), Err(0.0));
        assert!(Temperature::try_new(-1.0).is_err());
        assert!(Temperature::try_new(f32::NAN).is_err());
    }

    /// Per-pixel outputs of one kernel call on `n` pixels.
    type Outputs = (Vec<u8>, Vec<u8>, Vec<[u32; SCORES]>);

    fn run_kernel(n: usize, kernel: impl FnOnce(&mut TileScores)) -> Outputs {
        let mut tile = TileScores::new();
        kernel(&mut tile);
        let (mut classes, mut uncertainty) = (vec![7; n], vec![7; n]);
        let mut scores = vec![[7.0; SCORES]; n];
        tile.write(TileOutput {
            classes: &mut classes,
            uncertainty: &mut uncertainty,
            scores: &mut scores,
        });
        // Bits, so that NaN compares equal to NaN and -0 apart from 0.
        (classes, uncertainty, scores.iter().map(|s| s.map(f32::to_bits)).collect())
    }

    /// A logit for the two-class tests: ordinary, tied, extreme or non-finite.
    fn pair_logit() -> impl proptest::strategy::Strategy<Value = f32> {
        use proptest::strategy::Just;
        proptest::prop_oneof![
            6 => -30.0f32..30.0,
            1 => Just(0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(65504.0f32),
            1 => Just(-1e4f32),
        ]
    }

    proptest::proptest! {
        /// The two-class kernel gives the general kernel's bits, with class 0 read or taken as 0.
        #[test]
        fn pair_kernel_matches_general_kernel(
            pair in proptest::collection::vec((pair_logit(), pair_logit()), 1..=TILE_PIXELS),
            t in 0.25f32..4.0,
        ) {
            let n = pair.len();
            let temperature = Temperature::try_new(t).unwrap();
            let mut tile: Vec<f32> = pair.iter().map(|p| p.0).collect();
            tile.extend(pair.iter().map(|p| p.1));
            let general = |tile: &[f32], out: &mut TileScores| {
                score_tile_general(tile, 0, n, 2, temperature, n, out);
            };
            let want = run_kernel(n, |out| general(&tile, out));
            let got = run_kernel(n, |out| score_tile(&tile, 0, n, 2, temperature, n, out));
            proptest::prop_assert_eq!(&got, &want);

            tile[..n].fill(0.0);
            let want = run_kernel(n, |out| general(&tile, out));
            let got = run_kernel(n, |out| score_pair(None, &tile[n..], temperature, out));
            proptest::prop_assert_eq!(&got, &want);
        }

        #[test]
        fn scores_match_f64_reference(
            logits in proptest::collection::vec(-30.0f32..30.0, 1..=256),
            t in 0.25f32..4.0,
        ) {
            check(&logits, t);
        }

        #[test]
        fn extreme_logits_match_f64_reference(
            logits in proptest::collection::vec(
                proptest::prop_oneof![-1e4f32..1e4, proptest::strategy::Just(-1e4f32),
                    proptest::strategy::Just(1e4f32), proptest::strategy::Just(-65504.0f32)],
                2..=8,
            ),
        ) {
            check(&logits, 1.0);
        }
    }
}
