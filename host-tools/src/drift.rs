//! `qualm drift`: whether the field's frames still look like the calibration frames, per frame
//! statistic, and whether the gate's threshold still keeps the share it was chosen for.
//!
//! Per statistic: the population stability index over 10 bins cut at the reference deciles, and
//! the two-sample Kolmogorov-Smirnov distance with its asymptotic p-value. On the gate's
//! statistic also the observed keep rate against the calibrated one. The reference is the
//! distribution `qualm thresholds` stores in the calibration file, or the scored frames of
//! another ledger (`--reference`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use qualm_core::{FrameStats, Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Reference};
use qualm_daemon::ledger::{LedgerEntry, read_ledger};
use serde_json::{Value, json};

use crate::evaluate::{StatisticValues, statistic_values};
use crate::replay::same_settings;

/// Points stored per statistic: up to this many frames are stored as they are, more as this
/// many quantiles (each standing for 1% of the frames).
pub const REFERENCE_POINTS: usize = 100;

/// Share given to an empty PSI bin, on either side, so that its log ratio stays finite.
pub const PSI_EPSILON: f64 = 1e-4;

/// Bins of the population stability index, cut at the reference's deciles.
pub const PSI_BINS: usize = 10;

/// PSI above which a statistic has shifted (the usual "major shift" level).
pub const PSI_SHIFT: f64 = 0.25;

/// PSI above which a statistic has moved somewhat (the usual "moderate shift" level).
pub const PSI_MODERATE: f64 = 0.1;

/// KS p-value below which a statistic has shifted.
pub const KS_P_SHIFT: f64 = 0.01;

/// The 0.999 quantile of the chi-square law with `PSI_BINS - 1 = 9` degrees of freedom.
///
/// Without any shift, `PSI / (1/n + 1/m)` (field size n, reference size m) tends to that law,
/// so below some field size the PSI crosses [`PSI_SHIFT`] by chance alone (a third or more of
/// 40-frame samples do). With few frames per bin (and empty bins counted as [`PSI_EPSILON`])
/// the law's tail is heavier than the limit's: its 0.99 quantile let 2.5% of unshifted
/// 98-frame fields cross in a simulation, the 0.999 quantile used here under 1%.
/// See [`psi_min_frames`].
pub const PSI_NULL_Q999: f64 = 27.877_164_871_256_568;

/// Fewest field frames for which the PSI counts in the verdict against a reference of
/// `reference_frames` frames: the smallest `n` with `PSI_NULL_Q999 * (1/n + 1/m) <=
/// PSI_SHIFT`, so that an unshifted field crosses [`PSI_SHIFT`] in under 1% of samples.
/// `None` when no field size is enough (a reference of 111 frames or fewer).
pub fn psi_min_frames(reference_frames: u64) -> Option<u64> {
    let room = PSI_SHIFT / PSI_NULL_Q999 - 1.0 / reference_frames.max(1) as f64;
    (room > 0.0).then(|| (1.0 / room).ceil() as u64)
}

/// z of the two-sided 95% Wilson interval on the observed keep rate.
const Z_95: f64 = 1.959_963_984_540_054;

/// Arguments of `qualm drift`.
#[derive(Debug, clap::Args)]
pub struct DriftArgs {
    /// Ledger of the field frames (JSON Lines, written by qualmd).
    #[arg(long, value_name = "FILE")]
    ledger: PathBuf,

    /// Calibration file: its gate, and (unless --reference is given) the reference
    /// distribution `qualm thresholds` stored in it.
    #[arg(long, value_name = "FILE")]
    calibration: PathBuf,

    /// Ledger of the calibration frames, as the reference instead of the one stored in the
    /// calibration file (needed for files written before qualm stored one).
    #[arg(long, value_name = "LEDGER")]
    reference: Option<PathBuf>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The scored frames' statistics of a ledger, each frame's value per statistic.
fn ledger_stats(entries: &[LedgerEntry]) -> Vec<&FrameStats> {
    entries.iter().filter_map(|e| e.stats.as_ref()).collect()
}

/// A compact reference from the statistic values of scored frames (in [`Statistic::ALL`]
/// order): per statistic the sorted values when there are at most `max_points`, else
/// [`REFERENCE_POINTS`] quantiles at levels `(i + 0.5) / REFERENCE_POINTS`, each the smallest
/// value whose empirical CDF reaches its level. NaN values are left out.
pub fn reference_from(frames: &[StatisticValues], max_points: usize) -> Reference {
    let exact = frames.len() <= max_points;
    let mut statistics = BTreeMap::new();
    for (index, statistic) in Statistic::ALL.iter().enumerate() {
        let mut values: Vec<f32> =
            frames.iter().map(|values| values[index]).filter(|v| !v.is_nan()).collect();
        values.sort_by(f32::total_cmp);
        let points = if exact || values.is_empty() {
            values
        } else {
            let n = values.len();
            (0..REFERENCE_POINTS)
                .map(|i| {
                    let level = (i as f64 + 0.5) / REFERENCE_POINTS as f64;
                    values[((level * n as f64).ceil() as usize).clamp(1, n) - 1]
                })
                .collect()
        };
        statistics.insert(statistic.as_str().to_string(), points);
    }
    let kind = if exact { "values" } else { "quantiles" };
    Reference { frames: frames.len() as u64, kind: kind.into(), statistics }
}

/// The values of every statistic of the scored frames of a ledger.
pub fn ledger_values(entries: &[LedgerEntry]) -> Vec<StatisticValues> {
    entries.iter().filter_map(|e| e.stats.as_ref()).map(statistic_values).collect()
}

/// The two-sample Kolmogorov-Smirnov distance `sup |F_a(x) - F_b(x)|` of two sorted samples,
/// every point weighing the same within its sample.
///
/// # Panics
/// When either sample is empty.
pub fn ks_distance(a: &[f64], b: &[f64]) -> f64 {
    assert!(!a.is_empty() && !b.is_empty(), "the KS distance needs two non-empty samples");
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0, 0);
    let mut distance = 0.0f64;

    // Step through the distinct values in order; both CDFs jump at a value only after all its
    // ties are passed, so ties never open a false gap.
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        distance = distance.max((i as f64 / n - j as f64 / m).abs());
    }
    distance
}

/// The asymptotic two-sided p-value of a KS distance `d` between samples of `n` and `m`:
/// `Q(λ) = 2 Σ_k (-1)^(k-1) exp(-2 k² λ²)` with `λ = (√e + 0.12 + 0.11 / √e) d` and
/// `e = n m / (n + m)` (Stephens' small-sample correction).
pub fn ks_p_value(d: f64, n: u64, m: u64) -> f64 {
    let effective = (n as f64 * m as f64 / (n + m) as f64).sqrt();
    let lambda = (effective + 0.12 + 0.11 / effective) * d;
    // Below 0.1 the series has not converged in 100 terms, and Q is 1 to 15 digits there.
    if lambda < 0.1 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += if k as u32 % 2 == 1 { term } else { -term };
        if term < 1e-17 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// The population stability index of `field` against `reference` (both sorted), and the
/// shares of each in its [`PSI_BINS`] bins.
#[derive(Clone, Debug, PartialEq)]
pub struct Psi {
    /// `Σ (f_i - r_i) ln(f_i / r_i)` over the bins, empty shares counted as [`PSI_EPSILON`].
    pub value: f64,
    /// Upper edges of the first nine bins: the reference deciles.
    pub edges: Vec<f64>,
    /// Share of the reference in each bin.
    pub reference: Vec<f64>,
    /// Share of the field in each bin.
    pub field: Vec<f64>,
}

/// The PSI of `field` against `reference`, both sorted and non-empty. Bin `k` is
/// `(e_k, e_{k+1}]` with `e_0 = -inf`, `e_10 = +inf` and `e_k` the smallest reference value
/// whose empirical CDF reaches `k / 10` (the inverted-CDF decile).
///
/// # Panics
/// When either sample is empty.
pub fn psi(reference: &[f64], field: &[f64]) -> Psi {
    assert!(!reference.is_empty() && !field.is_empty(), "the PSI needs two non-empty samples");
    let m = reference.len();
    let edges: Vec<f64> =
        (1..PSI_BINS).map(|k| reference[(k * m).div_ceil(PSI_BINS).clamp(1, m) - 1]).collect();
    let shares = |sample: &[f64]| {
        let mut counts = vec![0usize; PSI_BINS];
        for &x in sample {
            // Bin = how many upper edges lie strictly below x, so x on an edge falls left.
            counts[edges.partition_point(|&e| e < x)] += 1;
        }
        counts.into_iter().map(|c| c as f64 / sample.len() as f64).collect::<Vec<f64>>()
    };
    let (reference, field) = (shares(reference), shares(field));

    // PSI = Σ (f - r) ln(f / r); an empty bin gets PSI_EPSILON on that side.
    let value = reference
        .iter()
        .zip(&field)
        .map(|(&r, &f)| {
            let (r, f) = (r.max(PSI_EPSILON), f.max(PSI_EPSILON));
            (f - r) * (f / r).ln()
        })
        .sum();
    Psi { value, edges, reference, field }
}

/// The two-sided Wilson score interval of a binomial proportion `successes / trials` at
/// confidence level given by `z`.
pub fn wilson_interval(successes: u64, trials: u64, z: f64) -> (f64, f64) {
    if trials == 0 {
        return (0.0, 1.0);
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    // Centre (p + z²/2n) / (1 + z²/n), half-width z √(p(1-p)/n + z²/4n²) / (1 + z²/n).
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One statistic's comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct StatisticDrift {
    /// The statistic.
    pub statistic: Statistic,
    /// Field frames with a value (not NaN).
    pub field_frames: u64,
    /// Field mean and reference mean (of the stored points).
    pub means: (f64, f64),
    /// Population stability index.
    pub psi: Psi,
    /// Two-sample KS distance.
    pub ks: f64,
    /// Its asymptotic p-value.
    pub ks_p: f64,
    /// Whether the field has enough frames for the PSI to count ([`psi_min_frames`]).
    pub psi_counts: bool,
}

impl StatisticDrift {
    /// Whether it crosses the shift rule: PSI above [`PSI_SHIFT`] (when it counts) or KS p
    /// below [`KS_P_SHIFT`].
    pub fn shifted(&self) -> bool {
        (self.psi_counts && self.psi.value > PSI_SHIFT) || self.ks_p < KS_P_SHIFT
    }

    /// The PSI level in words.
    pub fn psi_level(&self) -> &'static str {
        match self.psi.value {
            _ if !self.psi_counts => "too few frames",
            v if v > PSI_SHIFT => "major shift",
            v if v > PSI_MODERATE => "moderate shift",
            _ => "stable",
        }
    }
}

/// Compares the field's values of `statistic` with the reference's `points` standing for
/// `reference_frames` frames; `None` when either side has no value.
pub fn compare(
    statistic: Statistic,
    field: &[&FrameStats],
    points: &[f32],
    reference_frames: u64,
) -> Option<StatisticDrift> {
    let mut values: Vec<f64> =
        field.iter().map(|s| f64::from(statistic.value(s))).filter(|v| !v.is_nan()).collect();
    values.sort_by(f64::total_cmp);
    let mut reference: Vec<f64> = points.iter().map(|&v| f64::from(v)).collect();
    reference.sort_by(f64::total_cmp);
    if values.is_empty() || reference.is_empty() {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ks = ks_distance(&values, &reference);
    let field_frames = values.len() as u64;
    Some(StatisticDrift {
        statistic,
        field_frames,
        means: (mean(&values), mean(&reference)),
        psi: psi(&reference, &values),
        ks,
        ks_p: ks_p_value(ks, field_frames, reference_frames.max(1)),
        psi_counts: psi_min_frames(reference_frames).is_some_and(|min| field_frames >= min),
    })
}

/// Observed against calibrated keep rate of the gate.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepRate {
    /// Field frames the gate keeps (decided by [`Gate::decide`]).
    pub kept: u64,
    /// Field frames scored.
    pub frames: u64,
    /// Share of the reference points beyond the threshold.
    pub calibrated: f64,
    /// 95% Wilson interval of the observed rate.
    pub interval: (f64, f64),
}

impl KeepRate {
    /// Whether the calibrated rate lies outside the observed rate's 95% interval.
    pub fn changed(&self) -> bool {
        self.calibrated < self.interval.0 || self.calibrated > self.interval.1
    }
}

/// The gate's keep rate on the field frames against the share of reference points it keeps.
pub fn keep_rate(gate: Gate, field: &[&FrameStats], points: &[f32]) -> KeepRate {
    let kept = field.iter().filter(|s| gate.decide(s).is_keep()).count() as u64;
    let frames = field.len() as u64;
    // The gate's rule on a bare value: strictly beyond the threshold in the uncertain direction.
    let statistic = gate.statistic;
    let beyond = points
        .iter()
        .filter(|&&v| statistic.uncertainty(v) > statistic.uncertainty(gate.threshold))
        .count();
    KeepRate {
        kept,
        frames,
        calibrated: beyond as f64 / points.len().max(1) as f64,
        interval: wilson_interval(kept, frames, Z_95),
    }
}

/// The whole comparison.
struct Drift {
    gate: Gate,
    reference: Reference,
    reference_source: String,
    field_frames: usize,
    error_frames: usize,
    mismatched_settings: usize,
    statistics: Vec<StatisticDrift>,
    keep_rate: KeepRate,
}

impl Drift {
    fn gate_drift(&self) -> Option<&StatisticDrift> {
        self.statistics.iter().find(|d| d.statistic == self.gate.statistic)
    }

    /// The verdict in words, and whether the threshold still means what it meant.
    fn verdict(&self) -> (bool, String) {
        let mut reasons = Vec::new();
        if let Some(d) = self.gate_drift().filter(|d| d.shifted()) {
            reasons.push(format!(
                "the gate statistic {} has shifted (PSI {:.3}, KS {:.3}, p {:.2e})",
                d.statistic, d.psi.value, d.ks, d.ks_p
            ));
        }
        let rate = &self.keep_rate;
        if rate.changed() {
            reasons.push(format!(
                "the gate keeps {:.3} of the field frames (95% interval {:.3} to {:.3}), not the \
                 calibrated {:.3}",
                rate.kept as f64 / rate.frames.max(1) as f64,
                rate.interval.0,
                rate.interval.1,
                rate.calibrated
            ));
        }
        if reasons.is_empty() {
            (true, "the threshold still means what it meant on the calibration frames".into())
        } else {
            let text = format!(
                "the threshold no longer means what it meant: {}; calibrate again on recent \
                 frames",
                reasons.join("; ")
            );
            (false, text)
        }
    }
}

/// The rule applied, in words.
fn rule() -> String {
    format!(
        "a statistic has shifted when PSI > {PSI_SHIFT} (10 bins on the reference deciles, empty \
         bins counted as {PSI_EPSILON}; counted only with enough field frames that an unshifted \
         field crosses it in under 1% of samples) or KS p < {KS_P_SHIFT} (asymptotic); the \
         threshold no longer holds when the gate statistic has shifted or the calibrated keep \
         rate lies outside the 95% Wilson interval of the observed one"
    )
}

/// Runs `qualm drift`.
///
/// # Errors
/// When a file cannot be read, the ledgers hold no scored frame or frames of another model,
/// or there is no reference distribution.
pub fn run(args: &DriftArgs) -> Result<()> {
    let calibration = Calibration::load(&args.calibration)?;
    let entries = read_ledger(&args.ledger)?;
    check_model(&entries, &args.ledger, &calibration)?;
    let field = ledger_stats(&entries);
    if field.is_empty() {
        bail!("{}: expected scored frames, found none", args.ledger.display());
    }
    let scored = entries.iter().filter(|e| e.stats.is_some());
    let mismatched = scored.filter(|e| !same_settings(e, &calibration)).count();
    if mismatched > 0 {
        tracing::warn!(
            frames = mismatched,
            "field frames scored with another temperature or uncertain level than the \
             calibration's: their statistics are not comparable"
        );
    }

    let (reference, reference_source) = match &args.reference {
        Some(path) => {
            let reference_entries = read_ledger(path)?;
            check_model(&reference_entries, path, &calibration)?;
            let values = ledger_values(&reference_entries);
            if values.is_empty() {
                bail!("{}: expected scored reference frames, found none", path.display());
            }
            // Every value, however many: the whole ledger is at hand.
            (reference_from(&values, usize::MAX), path.display().to_string())
        }
        None => match &calibration.provenance.reference {
            Some(reference) => (reference.clone(), args.calibration.display().to_string()),
            None => bail!(
                "{}: expected a reference distribution in the calibration file (written by \
                 `qualm thresholds` since it stores one), found none; pass --reference LEDGER \
                 with the calibration frames' ledger, or make the file again",
                args.calibration.display()
            ),
        },
    };

    let statistics: Vec<StatisticDrift> = Statistic::ALL
        .iter()
        .filter_map(|&s| {
            let points = reference.statistics.get(s.as_str())?;
            compare(s, &field, points, reference.frames)
        })
        .collect();
    let gate = calibration.gate;
    let Some(points) = reference.statistics.get(gate.statistic.as_str()) else {
        bail!(
            "{}: expected reference points of the gate statistic {}, found none",
            reference_source,
            gate.statistic
        );
    };
    let drift = Drift {
        gate,
        keep_rate: keep_rate(gate, &field, points),
        reference,
        reference_source,
        field_frames: field.len(),
        error_frames: entries.len() - field.len(),
        mismatched_settings: mismatched,
        statistics,
    };

    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&drift, args))?);
    } else {
        print(&drift, args);
    }
    Ok(())
}

/// Refuses scored frames of another model than the calibration's.
fn check_model(entries: &[LedgerEntry], path: &Path, calibration: &Calibration) -> Result<()> {
    let other =
        entries.iter().find(|e| e.stats.is_some() && e.model_sha256 != calibration.model_sha256);
    if let Some(entry) = other {
        bail!(
            "{}: expected frames of model {} (the calibration's), found frame {} of model {}",
            path.display(),
            calibration.model_sha256,
            entry.frame,
            entry.model_sha256
        );
    }
    Ok(())
}

fn to_json(drift: &Drift, args: &DriftArgs) -> Value {
    let statistics: Vec<Value> = drift
        .statistics
        .iter()
        .map(|d| {
            json!({
                "statistic": d.statistic.as_str(),
                "field_frames": d.field_frames,
                "field_mean": d.means.0,
                "reference_mean": d.means.1,
                "psi": d.psi.value,
                "psi_level": d.psi_level(),
                "psi_edges": d.psi.edges,
                "psi_reference_shares": d.psi.reference,
                "psi_field_shares": d.psi.field,
                "psi_counts": d.psi_counts,
                "ks": d.ks,
                "ks_p": d.ks_p,
                "shifted": d.shifted(),
            })
        })
        .collect();
    let rate = &drift.keep_rate;
    let (holds, verdict) = drift.verdict();
    json!({
        "ledger": args.ledger.display().to_string(),
        "calibration": args.calibration.display().to_string(),
        "reference": {
            "source": drift.reference_source,
            "frames": drift.reference.frames,
            "kind": drift.reference.kind,
        },
        "psi_min_frames": psi_min_frames(drift.reference.frames),
        "field_frames": drift.field_frames,
        "error_frames": drift.error_frames,
        "mismatched_settings": drift.mismatched_settings,
        "gate": { "statistic": drift.gate.statistic.as_str(), "threshold": drift.gate.threshold },
        "keep_rate": {
            "observed": rate.kept as f64 / rate.frames.max(1) as f64,
            "kept": rate.kept,
            "frames": rate.frames,
            "interval_95": [rate.interval.0, rate.interval.1],
            "calibrated": rate.calibrated,
            "changed": rate.changed(),
        },
        "statistics": statistics,
        "rule": rule(),
        "threshold_holds": holds,
        "verdict": verdict,
    })
}

fn print(drift: &Drift, args: &DriftArgs) {
    println!(
        "{} scored field frames of {} ({} error frames left out) against {} reference frames \
         ({}, from {})",
        drift.field_frames,
        args.ledger.display(),
        drift.error_frames,
        drift.reference.frames,
        drift.reference.kind,
        drift.reference_source
    );
    println!(
        "{:<28} {:>10} {:>10} {:>8} {:>7} {:>9}  psi level",
        "statistic", "field mean", "ref mean", "psi", "ks", "ks p"
    );
    for d in &drift.statistics {
        let mark = if d.statistic == drift.gate.statistic { "*" } else { " " };
        println!(
            "{:<28} {:>10.4} {:>10.4} {:>8.3} {:>7.3} {:>9.2e}  {}",
            format!("{}{mark}", d.statistic),
            d.means.0,
            d.means.1,
            d.psi.value,
            d.ks,
            d.ks_p,
            d.psi_level()
        );
    }
    if drift.statistics.iter().any(|d| !d.psi_counts) {
        let min = psi_min_frames(drift.reference.frames);
        println!(
            "note: the PSI does not count with {} field frames (it needs {} against {} reference \
             frames: with fewer, an unshifted field often crosses {PSI_SHIFT} by chance); the \
             verdict rests on KS and the keep rate",
            drift.field_frames,
            min.map_or_else(|| "a larger reference".to_owned(), |m| format!("at least {m}")),
            drift.reference.frames
        );
    }
    if drift.mismatched_settings > 0 {
        println!(
            "warning: {} field frames were scored with another temperature or uncertain level \
             than the calibration's; their statistics are not comparable",
            drift.mismatched_settings
        );
    }
    let rate = &drift.keep_rate;
    println!(
        "gate (*) {} threshold {}: keeps {} of {} field frames ({:.3}, 95% interval {:.3} to \
         {:.3}); calibrated {:.3}",
        drift.gate.statistic,
        drift.gate.threshold,
        rate.kept,
        rate.frames,
        rate.kept as f64 / rate.frames.max(1) as f64,
        rate.interval.0,
        rate.interval.1,
        rate.calibrated
    );
    println!("rule: {}", rule());
    println!("{}", drift.verdict().1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_distance_by_hand() {
        // F_a steps at 1, 2, 3 (thirds); F_b at 2.5, 3.5. At x in [2, 2.5): 2/3 vs 0.
        assert!((ks_distance(&[1.0, 2.0, 3.0], &[2.5, 3.5]) - 2.0 / 3.0).abs() < 1e-12);
        // Identical samples, ties included: distance 0.
        assert_eq!(ks_distance(&[1.0, 1.0, 2.0], &[1.0, 1.0, 2.0]), 0.0);
        // Disjoint: 1.
        assert_eq!(ks_distance(&[0.0, 0.1], &[5.0]), 1.0);
        // Ties across samples: at 1, F_a = 1/2, F_b = 1/4; at 2 both 1... and 3/4 at 2 for b.
        assert!((ks_distance(&[1.0, 2.0], &[1.0, 2.0, 2.0, 3.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn ks_p_value_matches_the_kolmogorov_distribution() {
        // With the correction removed (huge samples), Q(1.36) is 0.0494 and Q(1.63) 0.0098,
        // the familiar 5% and 1% critical values.
        let n = 1u64 << 40;
        let at = |lambda: f64| ks_p_value(lambda / ((n as f64 / 2.0).sqrt()), n, n);
        assert!((at(1.36) - 0.0494).abs() < 5e-4, "{}", at(1.36));
        assert!((at(1.63) - 0.0098).abs() < 2e-4, "{}", at(1.63));
        assert_eq!(ks_p_value(0.0, 10, 10), 1.0);
    }

    #[test]
    fn psi_by_hand() {
        // Reference 1..=10: deciles at 1..=9, one value per bin. Field: five 1s and five 10s,
        // so bins 0 and 9 hold 0.5 each and the other eight are empty.
        let reference: Vec<f64> = (1..=10).map(f64::from).collect();
        let field = [1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0, 10.0];
        let result = psi(&reference, &field);
        assert_eq!(result.edges, (1..=9).map(f64::from).collect::<Vec<_>>());
        assert_eq!(result.reference, vec![0.1; 10]);
        // 2 (0.5 - 0.1) ln 5 + 8 (1e-4 - 0.1) ln(1e-4 / 0.1).
        let expected = 2.0 * 0.4 * 5f64.ln() + 8.0 * (1e-4 - 0.1) * (1e-3f64).ln();
        assert!((result.value - expected).abs() < 1e-12, "{} vs {expected}", result.value);
        assert_eq!(psi(&reference, &reference).value, 0.0);
    }

    #[test]
    fn psi_null_quantile_is_the_chi_square_one() {
        // The chi-square density with 9 degrees of freedom, x^3.5 e^(-x/2) / (2^4.5 Γ(4.5)),
        // Γ(4.5) = 3.5 · 2.5 · 1.5 · 0.5 · √π, integrated by Simpson's rule up to the constant
        // (scipy's chi2.ppf(0.999, 9) gives the same digits).
        let gamma = 3.5 * 2.5 * 1.5 * 0.5 * std::f64::consts::PI.sqrt();
        let density = |x: f64| x.powf(3.5) * (-x / 2.0).exp() / (2f64.powf(4.5) * gamma);
        let steps = 20_000;
        let h = PSI_NULL_Q999 / steps as f64;
        let inner: f64 =
            (1..steps).map(|i| if i % 2 == 1 { 4.0 } else { 2.0 } * density(i as f64 * h)).sum();
        let cdf = h / 3.0 * (density(0.0) + inner + density(PSI_NULL_Q999));
        assert!((cdf - 0.999).abs() < 1e-9, "{cdf}");
    }

    #[test]
    fn psi_min_frames_by_hand() {
        // 27.877 (1/n + 1/795) <= 0.25: 1/n <= 0.0089679 - 0.0012579, n >= 129.7.
        assert_eq!(psi_min_frames(795), Some(130));
        // An endless reference: n >= 27.877 / 0.25 = 111.5.
        assert_eq!(psi_min_frames(u64::MAX), Some(112));
        // 1/111 = 0.009009 leaves no room.
        assert_eq!(psi_min_frames(111), None);
        assert_eq!(psi_min_frames(0), None);
    }

    #[test]
    fn psi_crosses_by_chance_below_psi_min_frames_only() {
        // Field and reference from the same uniform law: the share of fields whose PSI crosses
        // PSI_SHIFT, for 40 frames and for psi_min_frames(795) frames.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut reference: Vec<f64> = (0..795).map(|_| uniform()).collect();
        reference.sort_by(f64::total_cmp);
        let min = psi_min_frames(795).unwrap() as usize;
        let mut crossed = |n: usize| {
            let trials = 2000;
            let hits = (0..trials)
                .filter(|_| {
                    let mut field: Vec<f64> = (0..n).map(|_| uniform()).collect();
                    field.sort_by(f64::total_cmp);
                    psi(&reference, &field).value > PSI_SHIFT
                })
                .count();
            hits as f64 / trials as f64
        };
        let (few, enough) = (crossed(40), crossed(min));
        assert!(few > 0.3, "40 frames cross in {few} of samples");
        assert!(enough < 0.01, "{min} frames cross in {enough} of samples");
    }

    #[test]
    fn wilson_interval_by_hand() {
        // 10 of 100 at 95%: the textbook interval (0.0552, 0.1744).
        let (low, high) = wilson_interval(10, 100, Z_95);
        assert!((low - 0.05523).abs() < 1e-4 && (high - 0.17437).abs() < 1e-4, "{low} {high}");
        assert_eq!(wilson_interval(0, 0, Z_95), (0.0, 1.0));
    }

    #[test]
    fn reference_keeps_values_when_few_and_quantiles_when_many() {
        let frames: Vec<StatisticValues> = (0..1000)
            .map(|i| {
                let stats = FrameStats { mean_entropy: i as f32 / 1000.0, ..FrameStats::default() };
                statistic_values(&stats)
            })
            .collect();
        let reference = reference_from(&frames, REFERENCE_POINTS);
        assert_eq!((reference.frames, reference.kind.as_str()), (1000, "quantiles"));
        let points = &reference.statistics["mean_entropy"];
        // Level 0.005 of 1000 values: the 5th smallest, 0.004; level 0.995: the 995th.
        assert_eq!((points.len(), points[0], points[99]), (100, 0.004, 0.994));
        let few = reference_from(&frames[..7], REFERENCE_POINTS);
        assert_eq!((few.kind.as_str(), few.statistics["mean_entropy"].len()), ("values", 7));
    }
}
