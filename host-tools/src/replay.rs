//! `qualm replay`: what the gate would have kept from a ledger with a calibration's (or an
//! overridden) statistic and threshold, decided by qualm-core's [`Gate::decide`] so that the
//! answer is the daemon's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use qualm_core::{Gate, Statistic};
use qualm_daemon::calibration::Calibration;
use qualm_daemon::ledger::{LedgerEntry, read_ledger};
use serde_json::{Value, json};

/// Seconds in an hour and in a day, the buckets of the per-hour and per-day counts.
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Arguments of `qualm replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Ledger written by qualmd (JSON Lines); frames scored with or without a gate.
    #[arg(long, value_name = "FILE")]
    ledger: PathBuf,

    /// Calibration file whose gate (statistic and threshold) is replayed; it must belong to the
    /// ledger's model.
    #[arg(long, value_name = "FILE")]
    calibration: PathBuf,

    /// Threshold to use instead of the calibration's, in the statistic's own units [default:
    /// the calibration's].
    #[arg(long, value_name = "X")]
    threshold: Option<f32>,

    /// Statistic to gate on instead of the calibration's [default: the calibration's]; give
    /// --threshold with it, since a threshold means nothing for another statistic.
    #[arg(long, value_name = "S", requires = "threshold")]
    statistic: Option<Statistic>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Frames and kept frames in one time bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Scored frames.
    pub frames: u64,
    /// Of them, frames the gate keeps.
    pub kept: u64,
}

impl Tally {
    fn add(&mut self, kept: bool) {
        self.frames += 1;
        self.kept += u64::from(kept);
    }

    /// Kept share, `None` without frames.
    pub fn keep_rate(&self) -> Option<f64> {
        (self.frames > 0).then(|| self.kept as f64 / self.frames as f64)
    }
}

/// The outcome of replaying a gate over a ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    /// The gate replayed.
    pub gate: Gate,
    /// Every scored frame.
    pub total: Tally,
    /// Frames the ledger records as failed (no statistics), counted apart.
    pub errors: u64,
    /// Scored frames per UTC hour, keyed by the hour's start in seconds since 1970.
    pub hours: BTreeMap<u64, Tally>,
    /// Scored frames per UTC day, keyed by the day's start in seconds since 1970.
    pub days: BTreeMap<u64, Tally>,
    /// Seconds from the first to the last scored frame.
    pub span_seconds: u64,
    /// Names of the kept frames, in ledger order.
    pub kept_frames: Vec<String>,
    /// Scored frames whose temperature or uncertain level differs from the calibration's:
    /// their statistics are not what the daemon would compute with it.
    pub mismatched_settings: u64,
}

impl Replay {
    /// Kept records per day over the ledger's time span; `None` when all frames share one
    /// instant.
    pub fn records_per_day(&self) -> Option<f64> {
        (self.span_seconds > 0)
            .then(|| self.total.kept as f64 * DAY as f64 / self.span_seconds as f64)
    }
}

/// Seconds since 1970 of a ledger time (RFC 3339, UTC).
///
/// # Errors
/// When the time is not RFC 3339 or lies before 1970.
pub fn ledger_seconds(time: &str) -> Result<u64> {
    let parsed = humantime::parse_rfc3339_weak(time)
        .with_context(|| format!("expected an RFC 3339 UTC time, found {time:?}"))?;
    Ok(parsed.duration_since(UNIX_EPOCH).context("expected a time after 1970")?.as_secs())
}

/// Whether a frame was scored with the calibration's temperature and uncertain level, so that
/// its statistics are the ones the daemon computes with that calibration.
pub fn same_settings(entry: &LedgerEntry, calibration: &Calibration) -> bool {
    entry.temperature == Some(calibration.temperature)
        && entry.uncertain_level == Some(calibration.uncertain_level)
}

/// Replays `gate` over `entries` (read from `ledger`, named in errors) with `calibration`'s
/// settings.
///
/// # Errors
/// When a frame was scored by another model than the calibration's, or a scored frame's time
/// cannot be read.
pub fn replay(
    entries: &[LedgerEntry],
    ledger: &Path,
    calibration: &Calibration,
    gate: Gate,
) -> Result<Replay> {
    let mut result = Replay {
        gate,
        total: Tally::default(),
        errors: 0,
        hours: BTreeMap::new(),
        days: BTreeMap::new(),
        span_seconds: 0,
        kept_frames: Vec::new(),
        mismatched_settings: 0,
    };
    let (mut first, mut last) = (u64::MAX, 0u64);
    for (line, entry) in entries.iter().enumerate() {
        let Some(stats) = &entry.stats else {
            result.errors += 1;
            continue;
        };
        if entry.model_sha256 != calibration.model_sha256 {
            bail!(
                "{} line {}: expected frames of model {} (the calibration's), found frame {} of \
                 model {}",
                ledger.display(),
                line + 1,
                calibration.model_sha256,
                entry.frame,
                entry.model_sha256
            );
        }
        result.mismatched_settings += u64::from(!same_settings(entry, calibration));

        let seconds = ledger_seconds(&entry.time)
            .with_context(|| format!("{} line {}", ledger.display(), line + 1))?;
        (first, last) = (first.min(seconds), last.max(seconds));

        // The daemon's own decision, so that NaN statistics and ties go the same way.
        let kept = gate.decide(stats).is_keep();
        result.total.add(kept);
        result.hours.entry(seconds - seconds % HOUR).or_default().add(kept);
        result.days.entry(seconds - seconds % DAY).or_default().add(kept);
        if kept {
            result.kept_frames.push(entry.frame.clone());
        }
    }
    result.span_seconds = last.saturating_sub(first);
    Ok(result)
}

/// Runs `qualm replay`.
///
/// # Errors
/// When the ledger or calibration cannot be read, the threshold is not finite, the ledger
/// belongs to another model, or a time cannot be read.
pub fn run(args: &ReplayArgs) -> Result<()> {
    let calibration = Calibration::load(&args.calibration)?;
    let gate = Gate {
        statistic: args.statistic.unwrap_or(calibration.gate.statistic),
        threshold: args.threshold.unwrap_or(calibration.gate.threshold),
    };
    if !gate.threshold.is_finite() {
        bail!("expected a finite --threshold, found {}", gate.threshold);
    }
    let entries = read_ledger(&args.ledger)?;
    let result = replay(&entries, &args.ledger, &calibration, gate)?;
    if result.mismatched_settings > 0 {
        tracing::warn!(
            frames = result.mismatched_settings,
            "frames scored with another temperature or uncertain level than the calibration's"
        );
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&result, args))?);
    } else {
        print(&result, args);
    }
    Ok(())
}

/// A bucket start as an RFC 3339 time.
fn bucket_time(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

fn buckets_json(buckets: &BTreeMap<u64, Tally>, width: &str) -> Value {
    let rows: Vec<Value> = buckets
        .iter()
        .map(|(&start, tally)| {
            json!({
                width: bucket_time(start),
                "frames": tally.frames,
                "kept": tally.kept,
                "keep_rate": tally.keep_rate(),
            })
        })
        .collect();
    Value::Array(rows)
}

fn to_json(result: &Replay, args: &ReplayArgs) -> Value {
    json!({
        "ledger": args.ledger.display().to_string(),
        "calibration": args.calibration.display().to_string(),
        "statistic": result.gate.statistic.as_str(),
        "threshold": result.gate.threshold,
        "rule": rule(result.gate),
        "frames": result.total.frames,
        "kept": result.total.kept,
        "keep_rate": result.total.keep_rate(),
        "error_frames": result.errors,
        "mismatched_settings": result.mismatched_settings,
        "span_seconds": result.span_seconds,
        "records_per_day": result.records_per_day(),
        "per_hour": buckets_json(&result.hours, "hour"),
        "per_day": buckets_json(&result.days, "day"),
        "kept_frames": result.kept_frames,
    })
}

/// The keep rule in words.
fn rule(gate: Gate) -> String {
    let direction = if gate.statistic.higher_is_uncertain() { "above" } else { "below" };
    format!("keep a frame when {} is {direction} {} (or NaN)", gate.statistic, gate.threshold)
}

fn print(result: &Replay, args: &ReplayArgs) {
    let rate = |t: &Tally| t.keep_rate().map_or("-".to_string(), |r| format!("{r:.3}"));
    println!("{} on {}", rule(result.gate), args.ledger.display());
    println!(
        "{} of {} scored frames kept (keep rate {}); {} error frames counted apart",
        result.total.kept,
        result.total.frames,
        rate(&result.total),
        result.errors
    );
    match result.records_per_day() {
        Some(per_day) => println!(
            "{per_day:.1} records per day over {:.2} hours of ledger",
            result.span_seconds as f64 / HOUR as f64
        ),
        None => println!("records per day: - (all frames share one time)"),
    }
    if result.mismatched_settings > 0 {
        println!(
            "warning: {} frames were scored with another temperature or uncertain level than \
             the calibration's; their statistics differ from what the daemon would compute",
            result.mismatched_settings
        );
    }

    println!("{:<22} {:>8} {:>8} {:>9}", "hour (UTC)", "frames", "kept", "keep rate");
    for (&start, tally) in &result.hours {
        println!(
            "{:<22} {:>8} {:>8} {:>9}",
            bucket_time(start),
            tally.frames,
            tally.kept,
            rate(tally)
        );
    }
    println!("{:<22} {:>8} {:>8} {:>9}", "day (UTC)", "frames", "kept", "keep rate");
    for (&start, tally) in &result.days {
        println!(
            "{:<22} {:>8} {:>8} {:>9}",
            &bucket_time(start)[..10],
            tally.frames,
            tally.kept,
            rate(tally)
        );
    }
    println!("kept frames: {}", result.kept_frames.join(" "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_times_are_utc_seconds() {
        assert_eq!(ledger_seconds("1970-01-02T00:00:01Z").unwrap(), DAY + 1);
        assert_eq!(ledger_seconds("2026-12-03T10:00:00Z").unwrap() % DAY, 10 * HOUR);
        assert!(ledger_seconds("yesterday").is_err());
    }

    #[test]
    fn records_per_day_scale_with_the_span() {
        let gate = Gate { statistic: Statistic::MeanEntropy, threshold: 0.5 };
        let result = Replay {
            gate,
            total: Tally { frames: 10, kept: 3 },
            errors: 0,
            hours: BTreeMap::new(),
            days: BTreeMap::new(),
            span_seconds: 6 * HOUR,
            kept_frames: Vec::new(),
            mismatched_settings: 0,
        };
        // 3 records in a quarter day: 12 per day.
        assert_eq!(result.records_per_day(), Some(12.0));
        assert_eq!(Replay { span_seconds: 0, ..result }.records_per_day(), None);
    }
}
