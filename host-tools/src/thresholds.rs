//! `qualm thresholds`: a gate threshold with a finite-sample guarantee, either on the share of
//! frames kept (from a qualmd ledger of unlabeled frames) or on the share of failed frames
//! caught (from labeled frames).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use qualm_core::{Gate, Statistic, StatsConfig, Temperature};
use qualm_daemon::calibration::{Calibration, Provenance};
use qualm_daemon::card::ModelCard;
use qualm_daemon::ledger::{LedgerEntry, read_ledger};
use serde_json::json;

use crate::drift::{REFERENCE_POINTS, ledger_values, reference_from};
use crate::evaluate::frame_outcome;
use crate::labeled::DataArgs;

/// Arguments of `qualm thresholds`.
#[derive(Debug, clap::Args)]
pub struct ThresholdsArgs {
    /// Ledger written by qualmd (JSON Lines), for example from a run with --observe; with
    /// --keep-rate.
    #[arg(long, requires = "keep_rate", conflicts_with = "recall")]
    ledger: Option<PathBuf>,

    /// Fraction of the ledger's frames to keep, in (0, 1): the threshold keeps a new frame
    /// with probability at most this.
    #[arg(long, requires = "ledger")]
    keep_rate: Option<f64>,

    /// Share of failed frames to catch, in (0, 1), on labeled frames (--model and --data, or
    /// --logits and --labels): a new failed frame is kept with probability at least this.
    #[arg(long, conflicts_with = "ledger")]
    recall: Option<f64>,

    #[command(flatten)]
    data_args: DataArgs,

    /// With --recall: a frame has failed when its mIoU (classes present in its label or its
    /// prediction, label 255 ignored) is below this.
    #[arg(long, default_value_t = 0.5, value_name = "IOU")]
    failed_iou: f64,

    /// With --recall: the softmax temperature the camera will use (from `qualm calibrate`, fitted
    /// on other frames than these), written into the calibration file.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,

    /// With --recall and --logits: sha256 of the model that produced the logits, for the
    /// calibration file [default with --model: the card's].
    #[arg(long, value_name = "HEX")]
    model_sha256: Option<String>,

    /// Frame statistic to gate on.
    #[arg(long, default_value = "mean_entropy")]
    statistic: Statistic,

    /// Calibration file to write; an existing file is refused without --force.
    #[arg(long, short)]
    out: PathBuf,

    /// Overwrite the --out file if it exists.
    #[arg(long)]
    force: bool,

    /// Words on where the frames came from, kept in the file's provenance [default: the
    /// ledger's path, or the data folders].
    #[arg(long, value_name = "TEXT")]
    provenance: Option<String>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Rounding slack on an order-statistic rank: `1 - 0.9` is `0.09999999999999998` in `f64`, so
/// `floor(20 * (1 - 0.9))` would give 1 instead of 2 without it. Ranks are integers, and a true
/// product within this of one is that integer.
const RANK_SLACK: f64 = 1e-9;

/// The threshold for keep-rate `r` on `n` frames: the `ceil((n + 1)(1 - r))`-th smallest
/// uncertainty. A new frame exchangeable with the `n` then has uncertainty strictly above it
/// with probability at most `r` (and at least `r - 1 / (n + 1)` when there are no ties).
///
/// Returns `None` when `n` is too small for that rank to exist (`n < 1 / r - 1`): no finite
/// threshold carries the guarantee, and clipping to the largest value would silently claim it.
pub fn conformal_threshold(uncertainties: &mut [f64], keep_rate: f64) -> Option<f64> {
    let n = uncertainties.len();
    let rank = (((n as f64 + 1.0) * (1.0 - keep_rate)) - RANK_SLACK).ceil() as usize;
    if rank == 0 || rank > n {
        return None;
    }
    uncertainties.sort_by(f64::total_cmp);
    Some(uncertainties[rank - 1])
}

/// The threshold that catches a share `recall` of failed frames: the `k`-th smallest
/// uncertainty of the `n` failed frames, `k = floor((n + 1)(1 - recall))`, with frames kept
/// when their uncertainty is at least it. A new failed frame exchangeable with the `n` is then
/// kept with probability at least `recall`: it falls below the `k`-th smallest of the others
/// with probability at most `k / (n + 1) <= 1 - recall`, ties included.
///
/// Returns `None` when `k` would be 0 (`n < 1 / (1 - recall) - 1`): only keeping every frame
/// carries the guarantee then.
pub fn recall_threshold(uncertainties: &mut [f64], recall: f64) -> Option<f64> {
    let n = uncertainties.len();
    let rank = (((n as f64 + 1.0) * (1.0 - recall)) + RANK_SLACK).floor() as usize;
    if rank == 0 || rank > n {
        return None;
    }
    uncertainties.sort_by(f64::total_cmp);
    Some(uncertainties[rank - 1])
}

/// What a run chose, before it is written.
struct Chosen {
    calibration: Calibration,
    summary: serde_json::Value,
}

/// A ledger frame's scoring settings in words, for the error naming a mixed ledger.
fn settings(entry: &LedgerEntry) -> String {
    let number = |value: Option<f32>| value.map_or("none".to_owned(), |v| v.to_string());
    format!(
        "model {}, temperature {}, uncertain level {}",
        entry.model_sha256,
        number(entry.temperature),
        number(entry.uncertain_level)
    )
}

/// Runs the command.
///
/// # Errors
/// When the arguments do not name one mode, the ledger or frames cannot be read, the ledger
/// mixes models or settings, there are too few frames for the guarantee asked for, or `--out`
/// exists and `--force` is not given.
pub fn run(args: &ThresholdsArgs) -> Result<()> {
    // Checked first: a calibration in use is not replaced by accident, nor after a long run.
    if args.out.exists() && !args.force {
        bail!(
            "{}: the calibration file exists already; pass --force to replace it",
            args.out.display()
        );
    }
    let chosen = match (&args.ledger, args.keep_rate, args.recall) {
        (Some(ledger), Some(keep_rate), None) => from_ledger(args, ledger, keep_rate)?,
        (None, None, Some(recall)) => from_labeled(args, recall)?,
        _ => bail!("expected either --ledger with --keep-rate, or --recall with labeled data"),
    };
    chosen.calibration.save(&args.out)?;

    if args.json {
        let mut summary = chosen.summary;
        summary["out"] = json!(args.out.display().to_string());
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let gate = &chosen.calibration.gate;
        println!("{} threshold {}", gate.statistic, gate.threshold);
        println!("{}", chosen.calibration.provenance.statement);
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

/// Mode (a): a keep rate on the scored frames of a ledger.
fn from_ledger(args: &ThresholdsArgs, ledger: &std::path::Path, keep_rate: f64) -> Result<Chosen> {
    if !(keep_rate > 0.0 && keep_rate < 1.0) {
        bail!("expected --keep-rate strictly between 0 and 1, found {keep_rate}");
    }

    let entries = read_ledger(ledger)?;
    let scored: Vec<_> = entries.iter().filter(|e| e.stats.is_some()).collect();
    let Some(first) = scored.first() else {
        bail!("{}: expected scored frames, found none", ledger.display());
    };
    for entry in &scored {
        let same = entry.model_sha256 == first.model_sha256
            && entry.temperature == first.temperature
            && entry.uncertain_level == first.uncertain_level;
        if !same {
            bail!(
                "{}: expected one model, temperature and uncertain level, found frame {} with {} \
                 after frames with {}",
                ledger.display(),
                entry.frame,
                settings(entry),
                settings(first)
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
    let Some(threshold) = conformal_threshold(&mut uncertainties, keep_rate) else {
        let needed = (1.0 / keep_rate - 1.0).ceil() as usize;
        bail!(
            "{}: a keep rate of {keep_rate} needs at least {needed} scored frames for a finite \
             threshold, found {n}",
            ledger.display()
        );
    };

    let kept = uncertainties.iter().filter(|&&u| u > threshold).count();
    let threshold = statistic.uncertainty(threshold as f32);
    let statement = format!(
        "for a frame exchangeable with these {n}, P(kept) <= {keep_rate}; {kept} of {n} ({:.3}) \
         are above the threshold here",
        kept as f64 / n as f64
    );
    let skipped = entries.len() - n;
    let summary = json!({
        "method": "keep_rate",
        "keep_rate": keep_rate,
        "statistic": statistic.as_str(),
        "threshold": threshold,
        "frames": n,
        "unscored_frames": skipped,
        "kept": kept,
        "statement": statement,
    });
    let calibration = Calibration {
        model_sha256: first.model_sha256.clone(),
        temperature: first.temperature.context("ledger entries carry no temperature")?,
        uncertain_level: first.uncertain_level.context("ledger entries carry no level")?,
        gate: Gate { statistic, threshold },
        provenance: Provenance {
            reference: Some(reference_from(&ledger_values(&entries), REFERENCE_POINTS)),
            ..provenance(args, format!("keep-rate {keep_rate}"), n, statement, || {
                ledger.display().to_string()
            })
        },
    };
    Ok(Chosen { calibration, summary })
}

/// Mode (b): a recall of failed frames on labeled frames.
fn from_labeled(args: &ThresholdsArgs, recall: f64) -> Result<Chosen> {
    if !(recall > 0.0 && recall < 1.0) {
        bail!("expected --recall strictly between 0 and 1, found {recall}");
    }
    if !(0.0..=1.0).contains(&args.failed_iou) {
        bail!("expected --failed-iou in [0, 1], found {}", args.failed_iou);
    }
    let temperature = Temperature::try_new(args.temperature).map_err(|found| {
        anyhow::anyhow!("expected --temperature to be a finite number above 0, found {found}")
    })?;
    let dataset = args.data_args.to_dataset()?;
    let model_sha256 = match (&dataset.model, &args.model_sha256) {
        (Some(card), None) => ModelCard::load(card)?.sha256,
        (_, Some(hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            hex.to_ascii_lowercase()
        }
        (_, Some(hex)) => bail!("expected --model-sha256 of 64 hex digits, found {hex:?}"),
        (None, None) => bail!(
            "expected --model-sha256 with --logits: the calibration file names the model it \
             belongs to"
        ),
    };

    // One uncertainty and one verdict per frame; frames without a labeled pixel are left out.
    let config = StatsConfig { temperature, ..StatsConfig::default() };
    let statistic = args.statistic;
    let outcomes = dataset.map_frames(&dataset.frames, "thresholds", |logits, frame| {
        let outcome = frame_outcome(&logits, frame, &config)?;
        let index = Statistic::ALL.iter().position(|s| *s == statistic).unwrap_or(0);
        let uncertainty = f64::from(statistic.uncertainty(outcome.statistics[index]));
        Ok(outcome.miou.map(|miou| (uncertainty, miou < args.failed_iou, outcome.statistics)))
    })?;
    let judged: Vec<(f64, bool, _)> = outcomes.into_iter().flatten().collect();
    let mut failed: Vec<f64> = judged.iter().filter(|j| j.1).map(|j| j.0).collect();
    let n = failed.len();
    let Some(lowest_kept) = recall_threshold(&mut failed, recall) else {
        let needed = (1.0 / (1.0 - recall) - 1.0).ceil() as usize;
        bail!(
            "{}: a recall of {recall} needs at least {needed} failed frames (mIoU below {}) for a \
             threshold that is not 'keep everything', found {n} of {} frames",
            dataset.description,
            args.failed_iou,
            judged.len()
        );
    };

    // The gate keeps strictly beyond its threshold, so step one f32 below the lowest value
    // that must be kept.
    let lowest_kept = lowest_kept as f32;
    let threshold = statistic.uncertainty(lowest_kept.next_down());
    let kept = |want_failed: bool| {
        judged.iter().filter(|j| j.1 == want_failed && j.0 as f32 >= lowest_kept).count()
    };
    let (kept_failed, kept_passed) = (kept(true), kept(false));
    let reference: Vec<_> = judged.iter().map(|j| j.2).collect();
    let passed = judged.len() - n;
    let statement = format!(
        "for a failed frame (mIoU < {}) exchangeable with these {n}, P(kept) >= {recall}; here \
         {kept_failed} of {n} failed and {kept_passed} of {passed} passed frames are kept \
         (keep rate {:.3})",
        args.failed_iou,
        (kept_failed + kept_passed) as f64 / judged.len().max(1) as f64
    );
    let summary = json!({
        "method": "recall",
        "recall": recall,
        "failed_iou": args.failed_iou,
        "statistic": statistic.as_str(),
        "threshold": threshold,
        "temperature": temperature.get(),
        "frames": judged.len(),
        "frames_without_labels": dataset.frames.len() - judged.len(),
        "failed_frames": n,
        "kept_failed": kept_failed,
        "kept_passed": kept_passed,
        "statement": statement,
    });
    let calibration = Calibration {
        model_sha256,
        temperature: temperature.get(),
        uncertain_level: config.uncertain_level,
        gate: Gate { statistic, threshold },
        provenance: Provenance {
            reference: Some(reference_from(&reference, REFERENCE_POINTS)),
            ..provenance(args, format!("recall {recall}"), judged.len(), statement, || {
                dataset.description.clone()
            })
        },
    };
    Ok(Chosen { calibration, summary })
}

fn provenance(
    args: &ThresholdsArgs,
    method: String,
    frames: usize,
    statement: String,
    data: impl FnOnce() -> String,
) -> Provenance {
    Provenance {
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        method,
        data: args.provenance.clone().unwrap_or_else(data),
        frames: frames as u64,
        statement,
        reference: None,
    }
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
    fn recall_rank_follows_the_finite_sample_formula() {
        // n = 19 failed frames, recall 0.9: k = floor(20 * 0.1) = 2, the 2nd smallest.
        let mut values: Vec<f64> = (1..=19).rev().map(f64::from).collect();
        assert_eq!(recall_threshold(&mut values, 0.9), Some(2.0));
        // n = 8: k = floor(0.9) = 0, refused.
        let mut values = vec![0.5; 8];
        assert_eq!(recall_threshold(&mut values, 0.9), None);
    }

    #[test]
    fn recall_holds_on_exchangeable_draws() {
        // 99 failed frames' uncertainties uniform in [0, 1), recall 0.9: k = 10, the 10th
        // order statistic (Beta(10, 90): mean 0.1, sd 0.03). Fresh failed frames at or above it
        // are kept with probability 1 - threshold, about 0.9.
        let mut state = 99u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut failed: Vec<f64> = (0..99).map(|_| next()).collect();
        let threshold = recall_threshold(&mut failed, 0.9).unwrap();
        let kept = (0..4000).filter(|_| next() >= threshold).count() as f64 / 4000.0;
        assert!((threshold - 0.1).abs() < 0.1, "threshold {threshold}");
        assert!((kept - (1.0 - threshold)).abs() < 0.02, "kept {kept}, threshold {threshold}");

        // Averaged over calibration sets the recall is exactly 1 - k / (n + 1): with n = 19 it is
        // 1 - 2/20 = 0.9 (a rank one off would give 0.85 or 0.95). 2000 sets of 19: the mean of
        // 1 - U_(2) has sd about 0.0015.
        let trials = 2000;
        let mut recall_sum = 0.0;
        for _ in 0..trials {
            let mut failed: Vec<f64> = (0..19).map(|_| next()).collect();
            recall_sum += 1.0 - recall_threshold(&mut failed, 0.9).unwrap();
        }
        let mean = recall_sum / f64::from(trials);
        assert!((mean - 0.9).abs() < 0.01, "mean recall {mean}");
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
