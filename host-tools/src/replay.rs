//! `qualm replay`: what qualmd would have kept from a ledger with a calibration's rules (or an
//! overridden first rule) and a keep policy (budget, baseline, near-duplicates, cooldown), by
//! running qualm-core's own [`Policy`] over the ledger's frames in order, so that the answer
//! is the daemon's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use qualm_core::policy::{Policy, PolicyConfig, Verdict};
use qualm_core::{Gate, Rules, Statistic};
use qualm_daemon::calibration::Calibration;
use qualm_daemon::config::{BUDGET_CAPACITY, Config, PolicySettings};
use qualm_daemon::ledger::{LedgerEntry, read_ledger};
use qualm_daemon::pipeline::DUPLICATE_HISTORY;
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

    /// Calibration file whose rules ([gate] and any [[rules]], combined as the file says) are
    /// replayed; it must belong to the ledger's model.
    #[arg(long, value_name = "FILE")]
    calibration: PathBuf,

    /// Threshold of the first rule ([gate]) instead of the calibration's, in the statistic's
    /// own units [default: the calibration's].
    #[arg(long, value_name = "X")]
    threshold: Option<f32>,

    /// Statistic of the first rule instead of the calibration's [default: the calibration's];
    /// give --threshold with it, since a threshold means nothing for another statistic.
    #[arg(long, value_name = "S", requires = "threshold")]
    statistic: Option<Statistic>,

    /// qualmd configuration file whose [policy] table is replayed [default: no budget,
    /// baseline, duplicate check or cooldown: every frame the rules pass is kept].
    #[arg(long, value_name = "QUALMD_TOML")]
    config: Option<PathBuf>,

    /// Most records per budget window, 1 to 64 (with --budget-window) [default: the config's].
    #[arg(long, value_name = "K")]
    budget_records: Option<usize>,

    /// Length of a budget window, e.g. "10m" [default: the config's].
    #[arg(long, value_name = "DURATION")]
    budget_window: Option<String>,

    /// Least frame time between two kept frames, e.g. "2s" [default: the config's, else 0].
    #[arg(long, value_name = "DURATION")]
    cooldown: Option<String>,

    /// Share of all frames kept at random whatever their score [default: the config's, else 0].
    #[arg(long, value_name = "R")]
    baseline_rate: Option<f32>,

    /// Seed of the baseline draws [default: the config's, else 0].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Hamming distance (of 64 hash bits) within which a frame is a near-duplicate of a
    /// recently kept one [default: the config's, else no check].
    #[arg(long, value_name = "BITS")]
    duplicate_distance: Option<u32>,

    /// Frame time step of recorded footage, e.g. "40ms": frame i is at i steps [default: the
    /// config's, else the ledger's times].
    #[arg(long, value_name = "DURATION")]
    frame_interval: Option<String>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl ReplayArgs {
    /// The `[policy]` table of `--config` (or the empty one) with the flags laid over it.
    fn policy_settings(&self) -> Result<PolicySettings> {
        let mut settings = match &self.config {
            Some(path) => Config::load(path)?.policy,
            None => PolicySettings::default(),
        };
        if self.budget_records.is_some() {
            settings.budget_records = self.budget_records;
        }
        if self.budget_window.is_some() {
            settings.budget_window.clone_from(&self.budget_window);
        }
        if self.cooldown.is_some() {
            settings.cooldown.clone_from(&self.cooldown);
        }
        if self.frame_interval.is_some() {
            settings.frame_interval.clone_from(&self.frame_interval);
        }
        if self.duplicate_distance.is_some() {
            settings.duplicate_distance = self.duplicate_distance;
        }
        settings.baseline_rate = self.baseline_rate.unwrap_or(settings.baseline_rate);
        settings.seed = self.seed.unwrap_or(settings.seed);
        Ok(settings)
    }

    /// The calibration's rules with the first one overridden by --statistic / --threshold.
    fn rules(&self) -> Result<Rules> {
        let rules = Calibration::load_rules(&self.calibration)?;
        let Some(threshold) = self.threshold else { return Ok(rules) };
        if !threshold.is_finite() {
            bail!("expected a finite --threshold, found {threshold}");
        }
        let mut list = rules.as_slice().to_vec();
        list[0] = Gate { statistic: self.statistic.unwrap_or(list[0].statistic), threshold };
        // Cannot fail: the list is as long as the calibration's, which loaded.
        Rules::try_new(rules.combine, &list).map_err(|count| anyhow::anyhow!("{count}"))
    }
}

/// Frames and records in one time bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Scored frames.
    pub frames: u64,
    /// Of them, frames whose record the policy keeps to the end (baseline ones included).
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

/// What finally happened to one scored frame in the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The policy's verdict, final: a kept frame's record stays.
    Decided(Verdict),
    /// Kept as a budget candidate, then pushed out of its window by a more uncertain frame.
    Evicted,
}

impl Fate {
    /// Whether the frame's record is in the spool at the end.
    pub fn is_kept(self) -> bool {
        matches!(self, Self::Decided(verdict) if verdict.is_kept())
    }
}

/// Frames per final fate; they add up to the scored frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FateCounts {
    /// Kept by the rules and the policy (budget candidates that stayed included).
    pub kept: u64,
    /// Kept for the random baseline.
    pub baseline: u64,
    /// Not kept by the rules.
    pub below_threshold: u64,
    /// Near-duplicates of a recently kept frame.
    pub duplicate: u64,
    /// Too soon after a kept frame.
    pub cooldown: u64,
    /// Refused by a window full of more uncertain frames.
    pub budget: u64,
    /// Admitted to a window, then pushed out by a more uncertain frame.
    pub evicted: u64,
}

impl FateCounts {
    fn add(&mut self, fate: Fate) {
        let count = match fate {
            Fate::Decided(Verdict::Keep | Verdict::Candidate) => &mut self.kept,
            Fate::Decided(Verdict::Baseline) => &mut self.baseline,
            Fate::Decided(Verdict::BelowThreshold) => &mut self.below_threshold,
            Fate::Decided(Verdict::Duplicate) => &mut self.duplicate,
            Fate::Decided(Verdict::Cooldown) => &mut self.cooldown,
            Fate::Decided(Verdict::Budget) => &mut self.budget,
            Fate::Evicted => &mut self.evicted,
        };
        *count += 1;
    }
}

/// The policy replayed: its settings as the core takes them and where frame times come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayPolicy {
    /// The settings; `duplicate_distance` as asked, before a ledger without hashes turns it off.
    pub config: PolicyConfig,
    /// Frame `i` (failed frames counted, as qualmd's clock counts them) is at `i` times this;
    /// `None`: at the ledger's time.
    pub frame_interval_ms: Option<u64>,
}

/// The outcome of replaying the rules and policy over a ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct Replay {
    /// The rules replayed; the first one ranks frames for the budget.
    pub rules: Rules,
    /// The policy replayed.
    pub policy: ReplayPolicy,
    /// Scored frames without a perceptual hash in the ledger; when there are any and a
    /// duplicate distance is set, duplicate suppression is off for the whole replay.
    pub frames_without_hash: u64,
    /// Every scored frame.
    pub total: Tally,
    /// Scored frames per final fate.
    pub fates: FateCounts,
    /// Frames the ledger records as failed (no statistics), counted apart.
    pub errors: u64,
    /// Scored frames per UTC hour, keyed by the hour's start in seconds since 1970.
    pub hours: BTreeMap<u64, Tally>,
    /// Scored frames per UTC day, keyed by the day's start in seconds since 1970.
    pub days: BTreeMap<u64, Tally>,
    /// Seconds from the first to the last scored frame.
    pub span_seconds: u64,
    /// Names of the frames whose record is kept to the end, baseline ones included, in ledger
    /// order.
    pub kept_frames: Vec<String>,
    /// Of them, the baseline frames.
    pub baseline_frames: Vec<String>,
    /// Scored frames whose temperature or uncertain level differs from the calibration's:
    /// their statistics are not what the daemon would compute with it.
    pub mismatched_settings: u64,
}

/// Shortest ledger span, in seconds, that records per day are extrapolated from: a few
/// seconds of frames say nothing about a day.
pub const MIN_EXTRAPOLATION_SECONDS: u64 = 600;

impl Replay {
    /// Kept records per day over the ledger's time span; `None` when the span is shorter than
    /// [`MIN_EXTRAPOLATION_SECONDS`].
    pub fn records_per_day(&self) -> Option<f64> {
        (self.span_seconds >= MIN_EXTRAPOLATION_SECONDS)
            .then(|| self.total.kept as f64 * DAY as f64 / self.span_seconds as f64)
    }

    /// Whether near-duplicates were suppressed: a distance was set and every frame has a hash.
    pub fn duplicates_checked(&self) -> bool {
        self.policy.config.duplicate_distance.is_some() && self.frames_without_hash == 0
    }
}

/// Milliseconds since 1970 of a ledger time (RFC 3339, UTC).
///
/// # Errors
/// When the time is not RFC 3339 or lies before 1970.
pub fn ledger_millis(time: &str) -> Result<u64> {
    let parsed = humantime::parse_rfc3339_weak(time)
        .with_context(|| format!("expected an RFC 3339 UTC time, found {time:?}"))?;
    let since = parsed.duration_since(UNIX_EPOCH).context("expected a time after 1970")?;
    u64::try_from(since.as_millis()).context("expected a time before the year 584 million")
}

/// Seconds since 1970 of a ledger time (RFC 3339, UTC).
///
/// # Errors
/// When the time is not RFC 3339 or lies before 1970.
pub fn ledger_seconds(time: &str) -> Result<u64> {
    Ok(ledger_millis(time)? / 1000)
}

/// Whether a frame was scored with the calibration's temperature and uncertain level, so that
/// its statistics are the ones the daemon computes with that calibration.
pub fn same_settings(entry: &LedgerEntry, calibration: &Calibration) -> bool {
    entry.temperature == Some(calibration.temperature)
        && entry.uncertain_level == Some(calibration.uncertain_level)
}

/// A ledger line's perceptual hash; `Ok(None)` when the line has none.
fn perceptual_hash(entry: &LedgerEntry) -> Result<Option<u64>> {
    let Some(hex) = &entry.perceptual_hash else { return Ok(None) };
    // `from_str_radix` alone would take a sign and fewer digits.
    let digits = hex.len() == 16 && hex.bytes().all(|byte| byte.is_ascii_hexdigit());
    match u64::from_str_radix(hex, 16) {
        Ok(hash) if digits => Ok(Some(hash)),
        _ => bail!("expected perceptual_hash as 16 hex digits, found {hex:?}"),
    }
}

/// Replays `rules` and `policy` over `entries` (read from `ledger`, named in errors) with
/// `calibration`'s model and settings, as qualmd decides: the frames in ledger order, `evicted`
/// lines skipped (they name records, not frames), failed frames counted apart but advancing a
/// fixed frame clock as they do in qualmd.
///
/// # Errors
/// When a frame was scored by another model than the calibration's, a scored frame's time or
/// perceptual hash cannot be read, or the policy settings are out of range.
pub fn replay(
    entries: &[LedgerEntry],
    ledger: &Path,
    calibration: &Calibration,
    rules: Rules,
    policy: ReplayPolicy,
) -> Result<Replay> {
    let frames: Vec<(usize, &LedgerEntry)> =
        entries.iter().enumerate().filter(|(_, entry)| entry.reason != "evicted").collect();
    let at = |line: usize| format!("{} line {}", ledger.display(), line + 1);

    // Duplicates are replayed only when every frame has a hash: a partial history would
    // suppress other frames than qualmd did.
    let frames_without_hash = frames
        .iter()
        .filter(|(_, entry)| entry.stats.is_some() && entry.perceptual_hash.is_none())
        .count() as u64;
    let mut config = policy.config;
    if frames_without_hash > 0 {
        config.duplicate_distance = None;
    }
    let mut core = Policy::<BUDGET_CAPACITY, DUPLICATE_HISTORY>::try_new(config)
        .map_err(|error| anyhow::anyhow!("policy: {error}"))?;

    // One pass through the policy; a later frame can still evict an earlier candidate, so
    // fates are final only after the last frame.
    let mut scored: Vec<(u64, &str, Fate)> = Vec::new();
    let (mut errors, mut mismatched_settings) = (0, 0);
    for (tick, &(line, entry)) in frames.iter().enumerate() {
        let Some(stats) = &entry.stats else {
            errors += 1;
            continue;
        };
        if entry.model_sha256 != calibration.model_sha256 {
            bail!(
                "{}: expected frames of model {} (the calibration's), found frame {} of model {}",
                at(line),
                calibration.model_sha256,
                entry.frame,
                entry.model_sha256
            );
        }
        mismatched_settings += u64::from(!same_settings(entry, calibration));

        let millis = ledger_millis(&entry.time).with_context(|| at(line))?;
        let time_ms = match policy.frame_interval_ms {
            Some(interval) => (tick as u64).saturating_mul(interval),
            None => millis,
        };
        let hash = perceptual_hash(entry).with_context(|| at(line))?;
        // A frame of mostly non-finite logits passes as most uncertain, as in qualmd.
        let (passes, priority) = qualm_daemon::nonfinite::policy_input(&rules, stats);
        let outcome = core.decide(time_ms, passes, priority, hash);
        if let Some(ticket) = outcome.evicted {
            // Tickets count the frames decided, from 0: the index into `scored`.
            scored[ticket as usize].2 = Fate::Evicted;
        }
        scored.push((millis / 1000, &entry.frame, Fate::Decided(outcome.verdict)));
    }
    core.finish();

    let mut result = Replay {
        rules,
        policy,
        frames_without_hash,
        total: Tally::default(),
        fates: FateCounts::default(),
        errors,
        hours: BTreeMap::new(),
        days: BTreeMap::new(),
        span_seconds: 0,
        kept_frames: Vec::new(),
        baseline_frames: Vec::new(),
        mismatched_settings,
    };
    let (mut first, mut last) = (u64::MAX, 0u64);
    for &(seconds, frame, fate) in &scored {
        (first, last) = (first.min(seconds), last.max(seconds));
        let kept = fate.is_kept();
        result.fates.add(fate);
        result.total.add(kept);
        result.hours.entry(seconds - seconds % HOUR).or_default().add(kept);
        result.days.entry(seconds - seconds % DAY).or_default().add(kept);
        if kept {
            result.kept_frames.push(frame.to_owned());
        }
        if fate == Fate::Decided(Verdict::Baseline) {
            result.baseline_frames.push(frame.to_owned());
        }
    }
    result.span_seconds = last.saturating_sub(first);
    Ok(result)
}

/// Runs `qualm replay`.
///
/// # Errors
/// When the ledger, calibration or configuration cannot be read, a threshold or policy
/// setting is invalid, the ledger belongs to another model, or a time or hash cannot be read.
pub fn run(args: &ReplayArgs) -> Result<()> {
    let calibration = Calibration::load(&args.calibration)?;
    let rules = args.rules()?;
    let settings = args.policy_settings()?;
    let source = match &args.config {
        Some(path) => format!("the [policy] of {} with the flags over it", path.display()),
        None => "the policy flags".to_owned(),
    };
    let policy = ReplayPolicy {
        config: settings.policy_config().with_context(|| source.clone())?,
        frame_interval_ms: settings.frame_interval_ms().with_context(|| source.clone())?,
    };

    let entries = read_ledger(&args.ledger)?;
    let result = replay(&entries, &args.ledger, &calibration, rules, policy)?;
    if result.mismatched_settings > 0 {
        tracing::warn!(
            frames = result.mismatched_settings,
            "frames scored with another temperature or uncertain level than the calibration's"
        );
    }
    if result.policy.config.duplicate_distance.is_some() && !result.duplicates_checked() {
        tracing::warn!("{}", duplicate_note(&result));
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&result, args))?);
    } else {
        print(&result, args);
    }
    Ok(())
}

/// Whether near-duplicates were suppressed, and why not, in words.
fn duplicate_note(result: &Replay) -> String {
    match result.policy.config.duplicate_distance {
        None => "duplicate suppression off (no duplicate distance set)".to_owned(),
        Some(_) if result.frames_without_hash > 0 => format!(
            "duplicate suppression off: {} scored frames have no perceptual_hash in the ledger",
            result.frames_without_hash
        ),
        Some(distance) => format!(
            "duplicate suppression on: within {distance} of 64 hash bits of the last \
             {DUPLICATE_HISTORY} kept frames"
        ),
    }
}

/// The policy's settings in words.
fn policy_text(policy: &ReplayPolicy) -> String {
    let config = &policy.config;
    let budget = config.budget.map_or("no budget".to_owned(), |budget| {
        format!("budget {} records per {} ms", budget.records, budget.window_ms)
    });
    let clock = policy
        .frame_interval_ms
        .map_or("frame times from the ledger".to_owned(), |ms| format!("frame interval {ms} ms"));
    format!(
        "{budget}; baseline rate {} (seed {}); cooldown {} ms; {clock}",
        config.baseline_rate, config.seed, config.cooldown_ms
    )
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
    let first = result.rules.as_slice()[0];
    let config = &result.policy.config;
    let fates = &result.fates;
    json!({
        "ledger": args.ledger.display().to_string(),
        "calibration": args.calibration.display().to_string(),
        "config": args.config.as_ref().map(|path| path.display().to_string()),
        "statistic": first.statistic.as_str(),
        "threshold": first.threshold,
        "rule": rule(&result.rules),
        "policy": {
            "budget_records": config.budget.map(|budget| budget.records),
            "budget_window_ms": config.budget.map(|budget| budget.window_ms),
            "baseline_rate": config.baseline_rate,
            "seed": config.seed,
            "duplicate_distance": config.duplicate_distance,
            "cooldown_ms": config.cooldown_ms,
            "frame_interval_ms": result.policy.frame_interval_ms,
        },
        "duplicates_checked": result.duplicates_checked(),
        "duplicates": duplicate_note(result),
        "frames": result.total.frames,
        "kept": result.total.kept,
        "keep_rate": result.total.keep_rate(),
        "verdicts": {
            "kept": fates.kept,
            "baseline": fates.baseline,
            "below_threshold": fates.below_threshold,
            "duplicate": fates.duplicate,
            "cooldown": fates.cooldown,
            "budget": fates.budget,
            "evicted": fates.evicted,
        },
        "error_frames": result.errors,
        "mismatched_settings": result.mismatched_settings,
        "span_seconds": result.span_seconds,
        "records_per_day": result.records_per_day(),
        "per_hour": buckets_json(&result.hours, "hour"),
        "per_day": buckets_json(&result.days, "day"),
        "kept_frames": result.kept_frames,
        "baseline_frames": result.baseline_frames,
    })
}

/// The keep rules in words.
fn rule(rules: &Rules) -> String {
    let words: Vec<String> = rules
        .as_slice()
        .iter()
        .map(|gate| {
            let direction = if gate.statistic.higher_is_uncertain() { "above" } else { "below" };
            format!("{} is {direction} {} (or NaN)", gate.statistic, gate.threshold)
        })
        .collect();
    let joint = match rules.combine {
        qualm_core::policy::Combine::Any => " or ",
        qualm_core::policy::Combine::All => " and ",
    };
    format!("keep a frame when {}", words.join(joint))
}

fn print(result: &Replay, args: &ReplayArgs) {
    let rate = |t: &Tally| t.keep_rate().map_or("-".to_string(), |r| format!("{r:.3}"));
    println!("{} on {}", rule(&result.rules), args.ledger.display());
    println!("policy: {}; {}", policy_text(&result.policy), duplicate_note(result));
    println!(
        "{} of {} scored frames kept (keep rate {}); {} error frames counted apart",
        result.total.kept,
        result.total.frames,
        rate(&result.total),
        result.errors
    );
    let fates = &result.fates;
    println!(
        "verdicts: kept {}, baseline {}, below_threshold {}, duplicate {}, cooldown {}, \
         budget {}, evicted {}",
        fates.kept,
        fates.baseline,
        fates.below_threshold,
        fates.duplicate,
        fates.cooldown,
        fates.budget,
        fates.evicted
    );
    match result.records_per_day() {
        Some(per_day) => println!(
            "{per_day:.1} records per day over {:.2} hours of ledger",
            result.span_seconds as f64 / HOUR as f64
        ),
        None => println!(
            "records per day: - (span too short to extrapolate: {} s, under {} minutes)",
            result.span_seconds,
            MIN_EXTRAPOLATION_SECONDS / 60
        ),
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
    let names = |frames: &[String]| if frames.is_empty() { "-".into() } else { frames.join(" ") };
    println!("kept frames: {}", names(&result.kept_frames));
    println!("of them baseline: {}", names(&result.baseline_frames));
}

#[cfg(test)]
mod tests {
    use super::*;
    use qualm_core::FrameStats;
    use qualm_core::policy::{Budget, Combine};

    fn entry(frame: &str, time: &str, mean_entropy: f32) -> LedgerEntry {
        LedgerEntry {
            time: time.into(),
            frame: frame.into(),
            origin: String::new(),
            model_sha256: "ab".repeat(32),
            kept: false,
            reason: "observe_only".into(),
            temperature: Some(1.0),
            uncertain_level: Some(0.5),
            statistic: None,
            threshold: None,
            stats: Some(FrameStats { mean_entropy, ..FrameStats::default() }),
            perceptual_hash: None,
            record: None,
            error: None,
        }
    }

    fn calibration() -> Calibration {
        Calibration {
            model_sha256: "ab".repeat(32),
            temperature: 1.0,
            uncertain_level: 0.5,
            gate: Gate { statistic: Statistic::MeanEntropy, threshold: 0.1 },
            provenance: Default::default(),
        }
    }

    #[test]
    fn ledger_times_are_utc_seconds_and_millis() {
        assert_eq!(ledger_seconds("1970-01-02T00:00:01Z").unwrap(), DAY + 1);
        assert_eq!(ledger_seconds("2026-12-03T10:00:00Z").unwrap() % DAY, 10 * HOUR);
        assert_eq!(ledger_millis("1970-01-01T00:00:02.250Z").unwrap(), 2_250);
        assert!(ledger_seconds("yesterday").is_err());
    }

    #[test]
    fn perceptual_hashes_are_sixteen_hex_digits() {
        let mut line = entry("f", "1970-01-01T00:00:00Z", 0.5);
        assert_eq!(perceptual_hash(&line).unwrap(), None);
        line.perceptual_hash = Some("00000000000000ff".into());
        assert_eq!(perceptual_hash(&line).unwrap(), Some(255));
        for bad in ["ff", "zz00000000000000", "+0000000000000ff"] {
            line.perceptual_hash = Some(bad.into());
            assert!(perceptual_hash(&line).is_err(), "{bad}");
        }
    }

    /// Cooldown of 2 s with times from the ledger: frames at 0, 1.5 and 2 s above the
    /// threshold keep the first and the third; an evicted line is not a frame, and a failed
    /// frame still advances a fixed frame clock.
    #[test]
    fn cooldown_and_frame_clock_follow_the_daemon() {
        let rules = Rules::try_new(Combine::Any, &[calibration().gate]).unwrap();
        let mut evicted = entry("gone", "1970-01-01T00:00:01Z", 0.0);
        (evicted.stats, evicted.reason) = (None, "evicted".into());
        let mut failed = entry("bad", "1970-01-01T00:00:01Z", 0.0);
        (failed.stats, failed.reason) = (None, "error".into());
        let entries = [
            entry("a", "1970-01-01T00:00:00Z", 0.5),
            evicted,
            entry("b", "1970-01-01T00:00:01.500Z", 0.5),
            entry("c", "1970-01-01T00:00:02Z", 0.5),
            failed,
            entry("d", "1970-01-01T00:00:02.100Z", 0.5),
        ];
        let config = PolicyConfig { cooldown_ms: 2_000, ..PolicyConfig::default() };
        let policy = ReplayPolicy { config, frame_interval_ms: None };
        let path = Path::new("ledger.jsonl");
        let result = replay(&entries, path, &calibration(), rules, policy).unwrap();
        assert_eq!(result.kept_frames, ["a", "c"]);
        assert_eq!((result.fates.kept, result.fates.cooldown, result.errors), (2, 2, 1));

        // Frame i at i seconds: a 0, b 1, c 2, (bad 3), d 4.
        let policy = ReplayPolicy { config, frame_interval_ms: Some(1_000) };
        let result = replay(&entries, path, &calibration(), rules, policy).unwrap();
        assert_eq!(result.kept_frames, ["a", "c", "d"]);
    }

    /// Means of 0 look certain, but a frame of non-finite logits is kept as qualmd keeps it.
    #[test]
    fn nonfinite_frames_replay_as_kept() {
        let rules = Rules::try_new(Combine::Any, &[calibration().gate]).unwrap();
        let mut broken = entry("nan", "1970-01-01T00:00:01Z", 0.0);
        broken.stats =
            Some(FrameStats { pixels: 100, nonfinite_pixels: 100, ..FrameStats::default() });
        let entries = [entry("calm", "1970-01-01T00:00:00Z", 0.0), broken];
        let policy = ReplayPolicy { config: PolicyConfig::default(), frame_interval_ms: None };
        let path = Path::new("ledger.jsonl");
        let result = replay(&entries, path, &calibration(), rules, policy).unwrap();
        assert_eq!(result.kept_frames, ["nan"]);
    }

    #[test]
    fn ledgers_without_hashes_replay_without_duplicate_suppression() {
        let rules = Rules::try_new(Combine::Any, &[calibration().gate]).unwrap();
        let mut entries =
            [entry("a", "1970-01-01T00:00:00Z", 0.5), entry("b", "1970-01-01T00:00:01Z", 0.5)];
        let config = PolicyConfig { duplicate_distance: Some(3), ..PolicyConfig::default() };
        let policy = ReplayPolicy { config, frame_interval_ms: None };
        let path = Path::new("ledger.jsonl");

        // Hashes 7 bits apart, then 2 bits apart: only the near one is a duplicate.
        entries[0].perceptual_hash = Some(format!("{:016x}", 0u64));
        entries[1].perceptual_hash = Some(format!("{:016x}", 0x7fu64));
        let far = replay(&entries, path, &calibration(), rules, policy).unwrap();
        entries[1].perceptual_hash = Some(format!("{:016x}", 0x3u64));
        let near = replay(&entries, path, &calibration(), rules, policy).unwrap();
        assert_eq!((far.fates.duplicate, near.fates.duplicate), (0, 1));
        assert!(near.duplicates_checked());

        entries[0].perceptual_hash = None;
        let off = replay(&entries, path, &calibration(), rules, policy).unwrap();
        assert_eq!((off.fates.kept, off.frames_without_hash), (2, 1));
        assert!(!off.duplicates_checked());
        assert!(duplicate_note(&off).contains("1 scored frames have no perceptual_hash"));
    }

    #[test]
    fn records_per_day_scale_with_the_span() {
        let rules = Rules::try_new(Combine::Any, &[calibration().gate]).unwrap();
        let budget = Some(Budget { records: 1, window_ms: 1 });
        let policy = ReplayPolicy {
            config: PolicyConfig { budget, ..PolicyConfig::default() },
            frame_interval_ms: None,
        };
        let result = Replay {
            rules,
            policy,
            frames_without_hash: 0,
            total: Tally { frames: 10, kept: 3 },
            fates: FateCounts::default(),
            errors: 0,
            hours: BTreeMap::new(),
            days: BTreeMap::new(),
            span_seconds: 6 * HOUR,
            kept_frames: Vec::new(),
            baseline_frames: Vec::new(),
            mismatched_settings: 0,
        };
        // 3 records in a quarter day: 12 per day.
        assert_eq!(result.records_per_day(), Some(12.0));
        assert_eq!(Replay { span_seconds: 0, ..result.clone() }.records_per_day(), None);
        assert_eq!(Replay { span_seconds: 599, ..result.clone() }.records_per_day(), None);
        assert_eq!(Replay { span_seconds: 600, ..result }.records_per_day(), Some(3.0 * 144.0));
    }
}
