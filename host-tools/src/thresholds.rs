//! `qualm thresholds`: a gate threshold with a finite-sample keep-rate guarantee.

use std::path::PathBuf;

use anyhow::{Context, bail};
use qualm_core::{Gate, Statistic};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::ledger::read_ledger;

/// Arguments of `qualm thresholds`.
#[derive(Debug, clap::Args)]
pub struct ThresholdsArgs {
    /// Ledger written by qualmd (JSON Lines), for example from a run with --observe.
    #[arg(long)]
    ledger: PathBuf,

    /// Fraction of frames to keep, in (0, 1).
    #[arg(long)]
    keep_rate: f64,

    /// Frame statistic to gate on.
    #[arg(long, default_value = "mean_entropy")]
    statistic: Statistic,

    /// Calibration file to write.
    #[arg(long, short)]
    out: PathBuf,

    /// Words on where the ledger's frames came from, kept in the file's provenance
    /// [default: the ledger's path].
    #[arg(long)]
    data: Option<String>,
}

/// The threshold for keep-rate `r` on `n` frames: the `ceil((n + 1)(1 - r))`-th smallest
/// uncertainty. A new frame exchangeable with the `n` then has uncertainty strictly above it
/// with probability at most `r` (and at least `r - 1 / (n + 1)` when there are no ties).
///
/// Returns `None` when `n` is too small for that rank to exist (`n < 1 / r - 1`): no finite
/// threshold carries the guarantee, and clipping to the largest value would silently claim it.
pub fn conformal_threshold(uncertainties: &mut [f64], keep_rate: f64) -> Option<f64> {
    let n = uncertainties.len();
    let rank = ((n as f64 + 1.0) * (1.0 - keep_rate)).ceil() as usize;
    if rank == 0 || rank > n {
        return None;
    }
    uncertainties.sort_by(f64::total_cmp);
    Some(uncertainties[rank - 1])
}

/// Runs the command.
///
/// # Errors
/// When the ledger cannot be read, mixes models or settings, or has too few frames.
pub fn run(args: &ThresholdsArgs) -> anyhow::Result<()> {
    if !(args.keep_rate > 0.0 && args.keep_rate < 1.0) {
        bail!("expected --keep-rate strictly between 0 and 1, found {}", args.keep_rate);
    }

    let entries = read_ledger(&args.ledger)?;
    let scored: Vec<_> = entries.iter().filter(|e| e.stats.is_some()).collect();
    let Some(first) = scored.first() else {
        bail!("{}: expected scored frames, found none", args.ledger.display());
    };
    for entry in &scored {
        let same = entry.model_sha256 == first.model_sha256
            && entry.temperature == first.temperature
            && entry.uncertain_level == first.uncertain_level;
        if !same {
            bail!(
                "{}: expected one model and one temperature, found frame {} with model {} and \
                 temperature {:?} after model {} and temperature {:?}",
                args.ledger.display(),
                entry.frame,
                entry.model_sha256,
                entry.temperature,
                first.model_sha256,
                first.temperature
            );
        }
    }

    let statistic = args.statistic;
    let mut uncertainties: Vec<f64> = scored
        .iter()
        .filter_map(|e| e.stats.as_ref())
        .map(|s| f64::from(statistic.uncertainty(statistic.value(s))))
        .collect();
    let n = uncertainties.len();
    let Some(threshold) = conformal_threshold(&mut uncertainties, args.keep_rate) else {
        let needed = (1.0 / args.keep_rate - 1.0).ceil() as usize;
        bail!(
            "{}: a keep rate of {} needs at least {needed} scored frames for a finite threshold, \
             found {n}",
            args.ledger.display(),
            args.keep_rate
        );
    };

    let kept = uncertainties.iter().filter(|&&u| u > threshold).count();
    let threshold = statistic.uncertainty(threshold as f32);
    let statement = format!(
        "for a frame exchangeable with these {n}, P(kept) <= {}; {kept} of {n} ({:.3}) are \
         above the threshold here",
        args.keep_rate,
        kept as f64 / n as f64
    );
    let calibration = Calibration {
        model_sha256: first.model_sha256.clone(),
        temperature: first.temperature.context("ledger entries carry no temperature")?,
        uncertain_level: first.uncertain_level.context("ledger entries carry no level")?,
        gate: Gate { statistic, threshold },
        provenance: Provenance {
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            method: format!("keep-rate {}", args.keep_rate),
            data: args.data.clone().unwrap_or_else(|| args.ledger.display().to_string()),
            frames: n as u64,
            statement: statement.clone(),
        },
    };
    calibration.save(&args.out)?;

    let skipped = entries.len() - n;
    println!("{statistic} threshold {threshold} from {n} frames ({skipped} unscored skipped)");
    println!("{statement}");
    println!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_follows_the_finite_sample_formula() {
        // n = 9, r = 0.2: rank ceil(10 * 0.8) = 8, so the 8th smallest of 1..=9 is 8.
        let mut values: Vec<f64> = (1..=9).rev().map(f64::from).collect();
        assert_eq!(conformal_threshold(&mut values, 0.2), Some(8.0));
    }

    #[test]
    fn too_few_frames_is_refused_not_clipped() {
        // r = 0.05 needs n >= 19: ceil(19 * 0.95) = 19 > 18.
        let mut values = vec![0.5; 18];
        assert_eq!(conformal_threshold(&mut values, 0.05), None);
        let mut values = vec![0.5; 19];
        assert_eq!(conformal_threshold(&mut values, 0.05), Some(0.5));
    }

    #[test]
    fn keep_rate_holds_on_exchangeable_draws() {
        // 199 uniform draws, r = 0.1: rank 180, so the threshold is the 180th order statistic
        // (Beta(180, 20): mean 0.9, sd 0.021). 4000 fresh draws then pass it at 1 - threshold,
        // with binomial sd below 0.005.
        let mut state = 12345u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut calibration: Vec<f64> = (0..199).map(|_| next()).collect();
        let threshold = conformal_threshold(&mut calibration, 0.1).unwrap();
        let kept = (0..4000).filter(|_| next() > threshold).count() as f64 / 4000.0;
        assert!((threshold - 0.9).abs() < 0.07, "threshold {threshold}");
        assert!((kept - (1.0 - threshold)).abs() < 0.02, "kept {kept}, threshold {threshold}");
    }
}
