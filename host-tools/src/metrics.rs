//! Metrics of labeled data, one definition each (see the field notes on metrics).
//!
//! Two families:
//!
//! - **Ranking**: how well an uncertainty value (larger = less certain) flags a positive item
//!   (an error pixel, a failed frame, an out-of-distribution frame). [`ranking_metrics`] sorts
//!   once and reads AUROC, average precision, FPR at 95% TPR and the area under the
//!   risk-coverage curve off the same order. Tied values are treated as one threshold, so no
//!   metric depends on the order of ties.
//! - **Calibration**: [`CalibrationSums`] adds up, pixel by pixel, what accuracy, ECE, MCE, NLL
//!   and the Brier score need; sums of frames merge, so frames can be scored in parallel.
//!
//! Everything is computed in `f64`. A metric that has no value on the data given (no positive
//! item, no item at all) is an [`Undefined`], never 0 or NaN.

use std::fmt;

/// Label value of a pixel that has no class (not scored by any metric).
pub const IGNORE_LABEL: u8 = 255;

/// Equal-width bins of the reliability diagram and of ECE / MCE.
pub const RELIABILITY_BINS: usize = 15;

/// Why a metric has no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undefined {
    /// There is no item at all.
    Empty,
    /// Every item is negative: nothing to flag.
    NoPositives,
    /// Every item is positive: nothing to tell the positives from.
    NoNegatives,
}

impl Undefined {
    /// The reason in words, with the positive and negative items named by the caller
    /// (for example `"error pixels"` and `"correct pixels"`).
    pub fn describe(self, positives: &str, negatives: &str) -> String {
        match self {
            Self::Empty => format!("no {positives} and no {negatives}: nothing to measure"),
            Self::NoPositives => format!("no {positives}: every item is one of the {negatives}"),
            Self::NoNegatives => format!("no {negatives}: every item is one of the {positives}"),
        }
    }
}

impl fmt::Display for Undefined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("positive items", "negative items"))
    }
}

/// A metric's value, or why it has none.
pub type Metric = Result<f64, Undefined>;

/// How well an uncertainty value ranks positive items above negative ones.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ranking {
    /// Items counted as positive.
    pub positives: u64,
    /// Items counted as negative.
    pub negatives: u64,
    /// Area under the ROC curve: the probability that a random positive has a larger value
    /// than a random negative, ties counting one half. Undefined without both classes.
    pub auroc: Metric,
    /// Average precision with the positives as the relevant class: `sum_k (R_k - R_{k-1}) P_k`
    /// over the distinct thresholds from the largest value down (a step sum, not the
    /// trapezoid). Undefined without positives.
    pub average_precision: Metric,
    /// False positive rate at the first threshold, from the largest value down, where the true
    /// positive rate reaches 0.95. Undefined without both classes.
    pub fpr_at_95_tpr: Metric,
    /// Area under the risk-coverage curve: items are accepted from the smallest value up, and
    /// each distinct threshold adds `(share of items it adds) x (positive rate among all
    /// accepted so far)`. Without ties this is the mean over `k = 1..n` of the positive rate
    /// among the `k` most certain items. Undefined only without items.
    pub aurc: Metric,
}

/// The ranking metrics of `(uncertainty, positive)` pairs; sorts `pairs` in place, by
/// decreasing uncertainty.
///
/// Values are ordered with [`f32::total_cmp`]; callers leave out NaN values, which would sort
/// above `+inf`.
pub fn ranking_metrics(pairs: &mut [(f32, bool)]) -> Ranking {
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let n = pairs.len() as u64;
    let positives = pairs.iter().filter(|p| p.1).count() as u64;
    let negatives = n - positives;
    let both = if n == 0 {
        Err(Undefined::Empty)
    } else if positives == 0 {
        Err(Undefined::NoPositives)
    } else if negatives == 0 {
        Err(Undefined::NoNegatives)
    } else {
        Ok(())
    };

    // One pass from the largest value down, one tie group (= one threshold) at a time.
    // AUROC: each negative of a group sees the positives above it plus half of its own group.
    let (p, q) = (positives as f64, negatives as f64);
    let (mut true_positives, mut false_positives) = (0u64, 0u64);
    let (mut pairs_ordered, mut precision_sum) = (0.0f64, 0.0f64);
    let mut fpr_at_95 = None;
    for group in tie_groups(pairs) {
        let group_positives = group.iter().filter(|x| x.1).count() as u64;
        let group_negatives = group.len() as u64 - group_positives;
        pairs_ordered +=
            group_negatives as f64 * (true_positives as f64 + 0.5 * group_positives as f64);
        true_positives += group_positives;
        false_positives += group_negatives;

        // AP step: recall grows by group_positives / P at precision TP / (TP + FP).
        let precision = true_positives as f64 / (true_positives + false_positives) as f64;
        precision_sum += group_positives as f64 * precision;
        if fpr_at_95.is_none() && positives > 0 && true_positives as f64 / p >= 0.95 {
            fpr_at_95 = Some(false_positives as f64 / q);
        }
    }

    // Risk-coverage: accept from the smallest value up, so walk the groups backwards.
    let mut accepted = 0u64;
    let mut accepted_positives = 0u64;
    let mut area = 0.0f64;
    for group in tie_groups(pairs).collect::<Vec<_>>().into_iter().rev() {
        accepted += group.len() as u64;
        accepted_positives += group.iter().filter(|x| x.1).count() as u64;
        area += group.len() as f64 / n as f64 * (accepted_positives as f64 / accepted as f64);
    }

    Ranking {
        positives,
        negatives,
        auroc: both.map(|()| pairs_ordered / (p * q)),
        average_precision: if positives == 0 {
            Err(if n == 0 { Undefined::Empty } else { Undefined::NoPositives })
        } else {
            Ok(precision_sum / p)
        },
        fpr_at_95_tpr: both.map(|()| fpr_at_95.unwrap_or(1.0)),
        aurc: if n == 0 { Err(Undefined::Empty) } else { Ok(area) },
    }
}

/// Points of the ROC and risk-coverage curves, for plots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    /// `(false positive rate, true positive rate)` from `(0, 0)` to `(1, 1)`, one point per
    /// threshold (thinned to at most [`CURVE_POINTS`]).
    pub roc: Vec<(f64, f64)>,
    /// `(coverage, risk)`: accepting the most certain share `coverage` of the items, the share of
    /// positives among them; from the most certain threshold to coverage 1.
    pub risk_coverage: Vec<(f64, f64)>,
}

/// Most points kept per curve.
pub const CURVE_POINTS: usize = 256;

/// The curves of `pairs` as sorted by [`ranking_metrics`] (decreasing uncertainty); empty when
/// the ROC curve is undefined (one class only) or there are no items.
pub fn curves(pairs: &[(f32, bool)]) -> Curves {
    let n = pairs.len();
    let positives = pairs.iter().filter(|p| p.1).count();
    let negatives = n - positives;
    if n == 0 {
        return Curves::default();
    }

    // One point per tie group, walking from the most uncertain down (ROC) and back (risk).
    let mut roc = vec![(0.0, 0.0)];
    let mut risk_coverage = Vec::new();
    let (mut true_positives, mut false_positives) = (0usize, 0usize);
    let groups: Vec<&[(f32, bool)]> = tie_groups(pairs).collect();
    for group in &groups {
        let group_positives = group.iter().filter(|x| x.1).count();
        true_positives += group_positives;
        false_positives += group.len() - group_positives;
        if positives > 0 && negatives > 0 {
            let fpr = false_positives as f64 / negatives as f64;
            roc.push((fpr, true_positives as f64 / positives as f64));
        }
    }
    let (mut accepted, mut accepted_positives) = (0usize, 0usize);
    for group in groups.iter().rev() {
        accepted += group.len();
        accepted_positives += group.iter().filter(|x| x.1).count();
        let risk = accepted_positives as f64 / accepted as f64;
        risk_coverage.push((accepted as f64 / n as f64, risk));
    }
    if positives == 0 || negatives == 0 {
        roc.clear();
    }
    Curves { roc: thin(roc), risk_coverage: thin(risk_coverage) }
}

/// At most [`CURVE_POINTS`] of `points`, evenly spaced by index, first and last kept.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= CURVE_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..CURVE_POINTS).map(|i| points[i * last / (CURVE_POINTS - 1)]).collect()
}

/// Runs of equal values in a sorted slice.
fn tie_groups(pairs: &[(f32, bool)]) -> impl Iterator<Item = &[(f32, bool)]> {
    pairs.chunk_by(|a, b| a.0.total_cmp(&b.0).is_eq())
}

/// The reliability bin of a top-label confidence: bin `i` holds `(i / 15, (i + 1) / 15]`,
/// computed as `ceil(15 c) - 1`; a confidence of exactly 0 goes to the first bin.
pub fn reliability_bin(confidence: f64) -> usize {
    let bin = (confidence * RELIABILITY_BINS as f64).ceil();
    // `as usize` maps NaN and negatives to 0.
    (bin as usize).saturating_sub(1).min(RELIABILITY_BINS - 1)
}

/// Running sums of one reliability bin.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReliabilityBin {
    /// Pixels whose confidence falls in the bin.
    pub count: u64,
    /// Sum of their top-label confidences.
    pub confidence_sum: f64,
    /// How many of them are predicted right.
    pub correct: u64,
}

/// Sums over labeled pixels from which accuracy, ECE, MCE, NLL and the Brier score follow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CalibrationSums {
    /// Labeled pixels added.
    pub pixels: u64,
    /// Of them, predicted right (top-1 class = label).
    pub correct: u64,
    /// Sum of `-ln p_label`.
    pub nll: f64,
    /// Sum of `sum_c (p_c - [c = label])^2`.
    pub brier: f64,
    /// The reliability bins, see [`reliability_bin`].
    pub bins: [ReliabilityBin; RELIABILITY_BINS],
}

impl CalibrationSums {
    /// Adds one pixel from its top-label confidence, whether it is right, its `-ln p_label`
    /// and its Brier term.
    pub fn add(&mut self, confidence: f64, correct: bool, nll: f64, brier: f64) {
        self.pixels += 1;
        self.correct += u64::from(correct);
        self.nll += nll;
        self.brier += brier;
        let bin = &mut self.bins[reliability_bin(confidence)];
        bin.count += 1;
        bin.confidence_sum += confidence;
        bin.correct += u64::from(correct);
    }

    /// Adds one pixel from its class logits divided by `temperature`.
    ///
    /// The top-1 class is the first largest logit, as in `qualm_core`.
    ///
    /// # Panics
    /// When `logits` is empty or `label` is not an index into it.
    pub fn add_logits(&mut self, logits: &[f32], label: usize, temperature: f64) {
        let (top, _) = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (c, &z)| if z > best.1 { (c, z) } else { best });
        let max = f64::from(logits[top]) / temperature;

        // p_c = exp(z_c / T - max) / s, with s = sum_c exp(z_c / T - max).
        let sum: f64 = logits.iter().map(|&z| (f64::from(z) / temperature - max).exp()).sum();
        let log_sum = sum.ln();
        let probability = |c: usize| (f64::from(logits[c]) / temperature - max).exp() / sum;

        // Brier = sum_c p_c^2 - 2 p_label + 1.
        let squares: f64 = (0..logits.len()).map(|c| probability(c).powi(2)).sum();
        let brier = squares - 2.0 * probability(label) + 1.0;
        let nll = log_sum - (f64::from(logits[label]) / temperature - max);
        self.add(1.0 / sum, top == label, nll, brier);
    }

    /// Adds every labeled pixel of a frame: `logits` is `[classes, pixels]` row-major (CHW),
    /// `labels` one class id per pixel; pixels labeled [`IGNORE_LABEL`] are skipped.
    ///
    /// # Panics
    /// When the lengths do not match or a label other than [`IGNORE_LABEL`] is not below
    /// `classes`.
    pub fn add_frame(&mut self, logits: &[f32], classes: usize, labels: &[u8], temperature: f64) {
        let pixels = labels.len();
        assert_eq!(logits.len(), classes * pixels, "expected [classes, pixels] logits");
        let mut pixel = vec![0.0f32; classes];
        for (index, &label) in labels.iter().enumerate() {
            if label == IGNORE_LABEL {
                continue;
            }
            for (c, slot) in pixel.iter_mut().enumerate() {
                *slot = logits[c * pixels + index];
            }
            self.add_logits(&pixel, usize::from(label), temperature);
        }
    }

    /// Adds the sums of another set of pixels.
    pub fn merge(&mut self, other: &Self) {
        self.pixels += other.pixels;
        self.correct += other.correct;
        self.nll += other.nll;
        self.brier += other.brier;
        for (bin, other) in self.bins.iter_mut().zip(&other.bins) {
            bin.count += other.count;
            bin.confidence_sum += other.confidence_sum;
            bin.correct += other.correct;
        }
    }

    /// The metrics of the pixels added.
    ///
    /// # Errors
    /// [`Undefined::Empty`] when no pixel was added.
    pub fn summary(&self) -> Result<CalibrationSummary, Undefined> {
        if self.pixels == 0 {
            return Err(Undefined::Empty);
        }

        // ECE = sum_b (n_b / n) |acc_b - conf_b|; MCE = max_b |acc_b - conf_b|; empty bins
        // are skipped.
        let n = self.pixels as f64;
        let mut ece = 0.0;
        let mut mce = 0.0f64;
        let mut bins = Vec::with_capacity(RELIABILITY_BINS);
        for (i, bin) in self.bins.iter().enumerate() {
            if bin.count == 0 {
                continue;
            }
            let count = bin.count as f64;
            let accuracy = bin.correct as f64 / count;
            let confidence = bin.confidence_sum / count;
            let gap = (accuracy - confidence).abs();
            ece += count / n * gap;
            mce = mce.max(gap);
            let width = 1.0 / RELIABILITY_BINS as f64;
            bins.push(BinSummary {
                lower: i as f64 * width,
                upper: (i + 1) as f64 * width,
                pixels: bin.count,
                confidence,
                accuracy,
            });
        }

        Ok(CalibrationSummary {
            pixels: self.pixels,
            accuracy: self.correct as f64 / n,
            ece,
            mce,
            nll: self.nll / n,
            brier: self.brier / n,
            bins,
        })
    }
}

/// One non-empty bin of the reliability diagram.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct BinSummary {
    /// Lower edge `a` of `(a, b]`.
    pub lower: f64,
    /// Upper edge `b`.
    pub upper: f64,
    /// Pixels in the bin.
    pub pixels: u64,
    /// Their mean top-label confidence.
    pub confidence: f64,
    /// Their accuracy.
    pub accuracy: f64,
}

/// Calibration metrics of a set of labeled pixels.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CalibrationSummary {
    /// Pixels measured.
    pub pixels: u64,
    /// Share of pixels whose top-1 class is the label.
    pub accuracy: f64,
    /// Expected calibration error (Guo et al. 2017): 15 equal-width bins `(a, b]` of top-label
    /// confidence, weighted by their share of pixels, empty bins skipped.
    pub ece: f64,
    /// Maximum calibration error: the largest gap of a non-empty bin.
    pub mce: f64,
    /// Mean negative log-likelihood of the label, in nats.
    pub nll: f64,
    /// Mean multi-class Brier score, `sum_c (p_c - onehot_c)^2`, in `[0, 2]`.
    pub brier: f64,
    /// The non-empty reliability bins, lowest first.
    pub bins: Vec<BinSummary>,
}

impl CalibrationSummary {
    /// Names of [`CalibrationSummary::values`], as used in reports and JSON.
    pub const NAMES: [&'static str; 5] = ["accuracy", "ece", "mce", "nll", "brier"];

    /// Accuracy, ECE, MCE, NLL and Brier, in the order of [`CalibrationSummary::NAMES`].
    pub fn values(&self) -> [f64; 5] {
        [self.accuracy, self.ece, self.mce, self.nll, self.brier]
    }
}

/// Labeled pixels kept for fitting a temperature: logits `[pixels, classes]` row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FitSample {
    classes: usize,
    logits: Vec<f32>,
    labels: Vec<u8>,
}

impl FitSample {
    /// An empty sample of `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { classes, logits: Vec::new(), labels: Vec::new() }
    }

    /// Number of pixels held.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no pixel is held.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps every `stride`-th pixel of a frame (pixel indices `0, stride, 2 stride, ...`
    /// in row-major order) that is labeled; `logits` is `[classes, pixels]` (CHW).
    ///
    /// # Panics
    /// When the lengths do not match the sample's class count or `stride` is 0.
    pub fn add_frame(&mut self, logits: &[f32], labels: &[u8], stride: usize) {
        let pixels = labels.len();
        assert_eq!(logits.len(), self.classes * pixels, "expected [classes, pixels] logits");
        for index in (0..pixels).step_by(stride) {
            if labels[index] == IGNORE_LABEL {
                continue;
            }
            self.labels.push(labels[index]);
            self.logits.extend((0..self.classes).map(|c| logits[c * pixels + index]));
        }
    }

    /// Appends another sample of the same class count.
    ///
    /// # Panics
    /// When the class counts differ.
    pub fn append(&mut self, other: &mut Self) {
        assert_eq!(self.classes, other.classes, "expected samples of one class count");
        self.logits.append(&mut other.logits);
        self.labels.append(&mut other.labels);
    }

    /// Mean NLL of the labels at `temperature`, the pixels split over `threads` threads.
    pub fn nll(&self, temperature: f64, threads: usize) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let chunk = self.len().div_ceil(threads.max(1));
        let total: f64 = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .labels
                .chunks(chunk)
                .zip(self.logits.chunks(chunk * self.classes))
                .map(|(labels, logits)| {
                    scope.spawn(move || {
                        let rows = logits.chunks_exact(self.classes);
                        labels.iter().zip(rows).map(|(&y, z)| nll(z, y, temperature)).sum::<f64>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("nll worker panicked")).sum()
        });
        total / self.len() as f64
    }
}

/// `-ln softmax(z / T)_label = logsumexp(z / T) - z_label / T`.
fn nll(logits: &[f32], label: u8, temperature: f64) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(f64::from(z) / temperature));
    let sum: f64 = logits.iter().map(|&z| (f64::from(z) / temperature - max).exp()).sum();
    max + sum.ln() - f64::from(logits[usize::from(label)]) / temperature
}

/// The result of [`fit_temperature`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TemperatureFit {
    /// The temperature of least NLL found.
    pub temperature: f64,
    /// Mean NLL of the sample at that temperature.
    pub nll: f64,
    /// Mean NLL of the sample at `T = 1`.
    pub nll_at_one: f64,
    /// NLL evaluations made.
    pub evaluations: u32,
    /// False when the minimum lies on a bound (the best `T` may lie outside the bounds).
    pub converged: bool,
    /// Why the fit did not converge, when it did not.
    pub reason: Option<String>,
}

/// Fits `T` in `[lower, upper]` by golden-section search on `ln T` for the least mean NLL of
/// `sample`.
///
/// NLL is convex in `1 / T`, so it has one minimum along `ln T` and golden-section search
/// finds it; the search stops when the bracket on `ln T` is narrower than `tolerance`.
///
/// # Panics
/// When the bounds are not `0 < lower < upper` or the sample is empty.
pub fn fit_temperature(
    sample: &FitSample,
    lower: f64,
    upper: f64,
    tolerance: f64,
    threads: usize,
) -> TemperatureFit {
    assert!(0.0 < lower && lower < upper, "expected 0 < lower < upper");
    assert!(!sample.is_empty(), "expected pixels to fit a temperature on");
    let mut evaluations = 0;
    let mut objective = |log_t: f64| {
        evaluations += 1;
        sample.nll(log_t.exp(), threads)
    };

    // Golden section: keep two inner points at the golden ratio and drop the worse end.
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lower.ln(), upper.ln());
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (objective(c), objective(d));
    while b - a > tolerance {
        if fc <= fd {
            b = d;
            (d, fd) = (c, fc);
            c = b - ratio * (b - a);
            fc = objective(c);
        } else {
            a = c;
            (c, fc) = (d, fd);
            d = a + ratio * (b - a);
            fd = objective(d);
        }
    }
    let log_t = if fc <= fd { c } else { d };
    let nll = fc.min(fd);
    let nll_at_one = objective(0.0);

    let at_bound = (log_t - lower.ln()).abs() < 2.0 * tolerance
        || (upper.ln() - log_t).abs() < 2.0 * tolerance;
    let reason = at_bound.then(|| {
        format!(
            "the least NLL lies on the bound T = {:.4} of [{lower}, {upper}]: the best \
             temperature may lie outside it",
            log_t.exp()
        )
    });
    TemperatureFit {
        temperature: log_t.exp(),
        nll,
        nll_at_one,
        evaluations,
        converged: !at_bound,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(values: &[(f32, bool)]) -> Vec<(f32, bool)> {
        values.to_vec()
    }

    #[test]
    fn perfect_ranking() {
        let r = ranking_metrics(&mut pairs(&[(0.9, true), (0.8, true), (0.2, false)]));
        assert_eq!(r.auroc, Ok(1.0));
        assert_eq!(r.average_precision, Ok(1.0));
        assert_eq!(r.fpr_at_95_tpr, Ok(0.0));
        // Accepting 0.2 first: risks 0, 1/2, 2/3 over thirds.
        let expected = (0.0 + 0.5 + 2.0 / 3.0) / 3.0;
        assert!((r.aurc.unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn ties_count_one_half() {
        let r = ranking_metrics(&mut pairs(&[(0.5, true), (0.5, false)]));
        assert_eq!(r.auroc, Ok(0.5));
        assert_eq!(r.average_precision, Ok(0.5));
        assert_eq!(r.fpr_at_95_tpr, Ok(1.0));
        assert_eq!(r.aurc, Ok(0.5));
    }

    #[test]
    fn one_class_is_undefined_not_zero() {
        let r = ranking_metrics(&mut pairs(&[(0.1, false), (0.3, false)]));
        assert_eq!(r.auroc, Err(Undefined::NoPositives));
        assert_eq!(r.average_precision, Err(Undefined::NoPositives));
        assert_eq!(r.aurc, Ok(0.0));
        let r = ranking_metrics(&mut []);
        assert_eq!(r.aurc, Err(Undefined::Empty));
    }

    #[test]
    fn curves_step_through_the_tie_groups() {
        // Sorted: 0.9 (positive), 0.5 (positive, negative), 0.1 (negative).
        let mut p = pairs(&[(0.1, false), (0.5, true), (0.9, true), (0.5, false)]);
        ranking_metrics(&mut p);
        let c = curves(&p);
        assert_eq!(c.roc, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        // Accept 0.1 (risk 0), then the 0.5 pair (1 of 3), then 0.9 (2 of 4).
        assert_eq!(c.risk_coverage, vec![(0.25, 0.0), (0.75, 1.0 / 3.0), (1.0, 0.5)]);
        assert!(curves(&pairs(&[(0.2, false)])).roc.is_empty());
    }

    #[test]
    fn bins_are_closed_on_the_right() {
        assert_eq!(reliability_bin(0.0), 0);
        assert_eq!(reliability_bin(1.0 / 15.0), 0);
        assert_eq!(reliability_bin(0.07), 1);
        assert_eq!(reliability_bin(1.0), 14);
    }

    #[test]
    fn temperature_fit_recovers_the_generating_temperature() {
        // Labels drawn from softmax(z / 2): the NLL-optimal temperature is near 2.
        let mut state = 7u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut sample = FitSample::new(3);
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let z: Vec<f32> = (0..3).map(|_| (next() * 8.0 - 4.0) as f32).collect();
            let weights: Vec<f64> = z.iter().map(|&v| (f64::from(v) / 2.0).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut u = next() * total;
            let label = weights.iter().position(|&w| {
                u -= w;
                u <= 0.0
            });
            labels.push(label.unwrap_or(2) as u8);
            logits.push(z);
        }
        let chw: Vec<f32> = (0..3).flat_map(|c| logits.iter().map(move |z| z[c])).collect();
        sample.add_frame(&chw, &labels, 1);
        let fit = fit_temperature(&sample, 0.05, 20.0, 1e-5, 2);
        assert!(fit.converged);
        assert!((fit.temperature - 2.0).abs() < 0.15, "T = {}", fit.temperature);
        assert!(fit.nll <= fit.nll_at_one);
    }
}
