//! The keep policy over a stream of frames: rules over the frame statistics, a random baseline
//! share, near-duplicate suppression, a cooldown, and a budget of at most K records per time
//! window that holds the window's most uncertain frames.
//!
//! Everything is fixed-size: a [`Policy`] allocates nothing, on construction or per frame.
//!
//! ```
//! use qualm_core::policy::{Budget, Policy, PolicyConfig, Verdict};
//!
//! // At most two records per 10 s window; no baseline, no duplicate check, no cooldown.
//! let config = PolicyConfig {
//!     budget: Some(Budget { records: 2, window_ms: 10_000 }),
//!     ..PolicyConfig::default()
//! };
//! let mut policy = Policy::<4, 8>::try_new(config)?;
//! let first = policy.decide(0, true, 0.2, None);
//! let second = policy.decide(1_000, true, 0.9, None);
//! let third = policy.decide(2_000, true, 0.5, None);
//! assert_eq!((first.verdict, second.verdict), (Verdict::Candidate, Verdict::Candidate));
//! // The third frame is more uncertain than the first: it takes the first one's place.
//! assert_eq!((third.verdict, third.evicted), (Verdict::Candidate, Some(first.ticket)));
//! // The next window starts at 10 s: the two held candidates become final.
//! assert!(policy.decide(10_000, false, 0.0, None).window_closed);
//! # Ok::<(), qualm_core::policy::PolicyError>(())
//! ```

use core::fmt;

use heapless::HistoryBuf;

use crate::gate::{Decision, Gate};
use crate::stats::FrameStats;

/// Most rules a [`Rules`] set holds.
pub const RULE_CAPACITY: usize = 8;

/// How the rules of a [`Rules`] set combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Combine {
    /// A frame passes when any rule keeps it.
    #[default]
    Any,
    /// A frame passes when every rule keeps it.
    All,
}

/// Threshold rules over the frame statistics. The first rule also ranks frames for the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    /// How the rules combine.
    pub combine: Combine,
    /// The rules; slots from `len` on repeat the first rule and are never read.
    rules: [Gate; RULE_CAPACITY],
    len: usize,
}

/// A rule set needs between one and [`RULE_CAPACITY`] rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleCount(pub usize);

impl fmt::Display for RuleCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected 1 to {RULE_CAPACITY} gate rules, found {}", self.0)
    }
}

impl core::error::Error for RuleCount {}

impl Rules {
    /// Rules from a list.
    ///
    /// # Errors
    /// [`RuleCount`] when `rules` is empty or longer than [`RULE_CAPACITY`].
    pub fn try_new(combine: Combine, rules: &[Gate]) -> Result<Self, RuleCount> {
        let (Some(&first), true) = (rules.first(), rules.len() <= RULE_CAPACITY) else {
            return Err(RuleCount(rules.len()));
        };
        let mut slots = [first; RULE_CAPACITY];
        slots[..rules.len()].copy_from_slice(rules);
        Ok(Self { combine, rules: slots, len: rules.len() })
    }

    /// The rules, the ranking one first.
    pub fn as_slice(&self) -> &[Gate] {
        &self.rules[..self.len]
    }

    /// Whether the frame passes: each rule as [`Gate::decide`] (a NaN statistic keeps).
    pub fn passes(&self, stats: &FrameStats) -> bool {
        let mut keeps = self.as_slice().iter().map(|rule| rule.decide(stats).is_keep());
        match self.combine {
            Combine::Any => keeps.any(|keep| keep),
            Combine::All => keeps.all(|keep| keep),
        }
    }

    /// The frame's rank for the budget: the first rule's statistic turned so that larger means
    /// more uncertain ([`crate::Statistic::uncertainty`]); NaN ranks above everything.
    pub fn priority(&self, stats: &FrameStats) -> f32 {
        let rule = self.rules[0];
        let value = match rule.decide(stats) {
            Decision::Keep { value } | Decision::Skip { value } => value,
        };
        let priority = rule.statistic.uncertainty(value);
        if priority.is_nan() { f32::INFINITY } else { priority }
    }
}

/// At most `records` records per window of `window_ms` milliseconds of frame time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Budget {
    /// Most records kept per window, at least 1.
    pub records: usize,
    /// Window length in milliseconds, at least 1. Windows start at the first frame's time.
    pub window_ms: u64,
}

/// The policy's settings, apart from the rules.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PolicyConfig {
    /// The budget; `None` keeps every frame that passes the other checks.
    pub budget: Option<Budget>,
    /// Share of all frames kept at random, whatever their score, in `[0, 1]`.
    pub baseline_rate: f32,
    /// Seed of the baseline's random draws: the same seed and stream give the same baseline.
    pub seed: u64,
    /// A frame whose hash is within this Hamming distance of a recently kept frame's hash is
    /// a near-duplicate and skipped; `None` turns the check off.
    pub duplicate_distance: Option<u32>,
    /// Least frame time between two kept frames, in milliseconds (0: no cooldown).
    pub cooldown_ms: u64,
}

impl PolicyConfig {
    /// Checks the settings against a policy holding at most `capacity` budget candidates.
    ///
    /// # Errors
    /// [`PolicyError`] for a budget of 0 records or more than `capacity`, an empty window, or
    /// a baseline rate outside `[0, 1]`.
    pub fn check(&self, capacity: usize) -> Result<(), PolicyError> {
        if let Some(budget) = self.budget {
            if budget.records == 0 || budget.records > capacity {
                return Err(PolicyError::BudgetRecords { found: budget.records, capacity });
            }
            if budget.window_ms == 0 {
                return Err(PolicyError::EmptyWindow);
            }
        }
        if !(0.0..=1.0).contains(&self.baseline_rate) {
            return Err(PolicyError::BaselineRate(self.baseline_rate));
        }
        Ok(())
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { budget: None, baseline_rate: 0.0, seed: 0, duplicate_distance: None, cooldown_ms: 0 }
    }
}

/// A setting a [`Policy`] cannot work with.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PolicyError {
    /// The budget's record count is 0 or above the policy's candidate capacity.
    BudgetRecords {
        /// Records asked for.
        found: usize,
        /// The capacity.
        capacity: usize,
    },
    /// The budget's window is 0 ms long.
    EmptyWindow,
    /// The baseline rate is not in `[0, 1]`.
    BaselineRate(f32),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BudgetRecords { found, capacity } => {
                write!(f, "expected budget_records from 1 to {capacity}, found {found}")
            }
            Self::EmptyWindow => f.write_str("expected a budget_window of at least 1ms"),
            Self::BaselineRate(rate) => {
                write!(f, "expected baseline_rate in [0, 1], found {rate}")
            }
        }
    }
}

impl core::error::Error for PolicyError {}

/// What the policy decided for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// Drawn for the random baseline: keep, final at once.
    Baseline,
    /// Passed every check and no budget is set: keep, final at once.
    Keep,
    /// Passed every check and entered the budget window: keep for now; the record is final
    /// when the window closes, unless a more uncertain frame pushes it out before.
    Candidate,
    /// The rules did not keep it.
    BelowThreshold,
    /// Within the duplicate distance of a recently kept frame.
    Duplicate,
    /// Too soon after the last kept frame.
    Cooldown,
    /// The window is full of more uncertain frames.
    Budget,
}

impl Verdict {
    /// The reason written to ledgers: `baseline`, `kept`, `below_threshold`, `duplicate`,
    /// `cooldown` or `budget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Keep | Self::Candidate => "kept",
            Self::BelowThreshold => "below_threshold",
            Self::Duplicate => "duplicate",
            Self::Cooldown => "cooldown",
            Self::Budget => "budget",
        }
    }

    /// Whether a record is stored for the frame.
    pub fn is_kept(self) -> bool {
        matches!(self, Self::Baseline | Self::Keep | Self::Candidate)
    }
}

/// The policy's answer for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Outcome {
    /// The frame's number in the stream, from 0: names it in later `evicted` fields.
    pub ticket: u64,
    /// The decision.
    pub verdict: Verdict,
    /// A candidate this frame pushed out of the window; its record must be removed.
    pub evicted: Option<u64>,
    /// A window ended before this frame: every candidate held so far is now final.
    pub window_closed: bool,
}

/// Running totals of a [`Policy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PolicyCounts {
    /// Frames decided.
    pub frames: u64,
    /// Frames kept for the baseline.
    pub baseline: u64,
    /// Frames kept, candidates included (some of them evicted later).
    pub kept: u64,
    /// Frames the rules did not keep.
    pub below_threshold: u64,
    /// Near-duplicates skipped.
    pub duplicates: u64,
    /// Frames skipped by the cooldown.
    pub cooldown: u64,
    /// Frames the full window refused.
    pub budget: u64,
    /// Candidates pushed out of their window.
    pub evicted: u64,
}

/// The keep policy with room for `CANDIDATES` frames per budget window and a duplicate history
/// of the last `HISTORY` kept frames.
///
/// Order of the checks: baseline draw (one draw per frame, so the baseline does not depend on
/// the scores), rules, near-duplicate, cooldown, budget. Every frame admitted by the budget
/// enters the duplicate history and restarts the cooldown, even if a more uncertain frame
/// evicts it later; baseline frames do neither, so the baseline stays an unbiased sample and
/// never hides an uncertain frame.
#[derive(Clone, Debug)]
pub struct Policy<const CANDIDATES: usize, const HISTORY: usize> {
    config: PolicyConfig,
    rng: SplitMix64,
    next_ticket: u64,
    window_start: Option<u64>,
    // (priority, ticket); a plain array scanned for its minimum: K is small, and a scan of K
    // floats is cheaper than keeping a heap ordered.
    candidates: heapless::Vec<(f32, u64), CANDIDATES>,
    history: HistoryBuf<u64, HISTORY>,
    last_kept_ms: Option<u64>,
    counts: PolicyCounts,
}

impl<const CANDIDATES: usize, const HISTORY: usize> Policy<CANDIDATES, HISTORY> {
    /// A policy at the start of a stream.
    ///
    /// # Errors
    /// [`PolicyError`] for a budget of 0 records or more than `CANDIDATES`, an empty window, or
    /// a baseline rate outside `[0, 1]`.
    pub fn try_new(config: PolicyConfig) -> Result<Self, PolicyError> {
        config.check(CANDIDATES)?;
        Ok(Self {
            config,
            rng: SplitMix64(config.seed),
            next_ticket: 0,
            window_start: None,
            candidates: heapless::Vec::new(),
            history: HistoryBuf::new(),
            last_kept_ms: None,
            counts: PolicyCounts::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Totals so far.
    pub fn counts(&self) -> &PolicyCounts {
        &self.counts
    }

    /// Decides for the next frame of the stream.
    ///
    /// `time_ms` is the frame's time (non-decreasing; an earlier time counts as the last one),
    /// `passes` whether the rules keep it ([`Rules::passes`]), `priority` its rank (larger is
    /// more uncertain; [`Rules::priority`]) and `hash` its 64-bit perceptual hash, if any.
    pub fn decide(
        &mut self,
        time_ms: u64,
        passes: bool,
        priority: f32,
        hash: Option<u64>,
    ) -> Outcome {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.counts.frames += 1;
        let window_closed = self.roll_window(time_ms);
        let mut outcome = Outcome { ticket, verdict: Verdict::Keep, evicted: None, window_closed };

        // Drawn for every frame, kept or not: the baseline is a share of all frames.
        let baseline = self.rng.next_unit() < f64::from(self.config.baseline_rate);
        outcome.verdict = if baseline {
            Verdict::Baseline
        } else if !passes {
            Verdict::BelowThreshold
        } else if self.is_duplicate(hash) {
            Verdict::Duplicate
        } else if self.in_cooldown(time_ms) {
            Verdict::Cooldown
        } else {
            let priority = if priority.is_nan() { f32::INFINITY } else { priority };
            match self.admit(priority, ticket) {
                Ok(evicted) => {
                    outcome.evicted = evicted;
                    if self.config.budget.is_some() { Verdict::Candidate } else { Verdict::Keep }
                }
                Err(()) => Verdict::Budget,
            }
        };

        if matches!(outcome.verdict, Verdict::Keep | Verdict::Candidate) {
            if let Some(hash) = hash {
                self.history.write(hash);
            }
            self.last_kept_ms = Some(time_ms.max(self.last_kept_ms.unwrap_or(0)));
        }
        self.count(outcome);
        crate::log::debug!("policy: frame {} {}", ticket, outcome.verdict.as_str());
        outcome
    }

    /// Ends the stream: the open window closes and its candidates are final. Returns whether
    /// any candidate was held.
    pub fn finish(&mut self) -> bool {
        let held = !self.candidates.is_empty();
        self.candidates.clear();
        self.window_start = None;
        held
    }

    /// Moves the window forward to hold `time_ms`; true when a window ended.
    fn roll_window(&mut self, time_ms: u64) -> bool {
        let Some(budget) = self.config.budget else { return false };
        let Some(start) = self.window_start else {
            self.window_start = Some(time_ms);
            return false;
        };
        if time_ms < start.saturating_add(budget.window_ms) {
            return false;
        }
        // Windows are aligned to the first one: skip the empty ones between.
        let elapsed = (time_ms - start) / budget.window_ms * budget.window_ms;
        self.window_start = Some(start + elapsed);
        self.candidates.clear();
        true
    }

    fn is_duplicate(&self, hash: Option<u64>) -> bool {
        match (self.config.duplicate_distance, hash) {
            (Some(distance), Some(hash)) => {
                self.history.iter().any(|kept| (kept ^ hash).count_ones() <= distance)
            }
            _ => false,
        }
    }

    fn in_cooldown(&self, time_ms: u64) -> bool {
        match self.last_kept_ms {
            Some(last) => time_ms.saturating_sub(last) < self.config.cooldown_ms,
            None => false,
        }
    }

    /// Puts a frame into the window. `Ok(Some(ticket))` names the candidate it pushed out;
    /// `Err(())` when the window is full of frames ranked at least as high (an earlier frame
    /// wins a tie).
    fn admit(&mut self, priority: f32, ticket: u64) -> Result<Option<u64>, ()> {
        let Some(budget) = self.config.budget else { return Ok(None) };
        if self.candidates.len() < budget.records {
            // Cannot fail: `records <= CANDIDATES` was checked in `try_new`.
            let _ = self.candidates.push((priority, ticket));
            return Ok(None);
        }

        // The least of the window; among equal priorities the latest frame ranks lowest.
        let (slot, &(least, least_ticket)) = self
            .candidates
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
            .ok_or(())?;
        if priority <= least {
            return Err(());
        }
        self.candidates[slot] = (priority, ticket);
        Ok(Some(least_ticket))
    }

    fn count(&mut self, outcome: Outcome) {
        let counts = &mut self.counts;
        match outcome.verdict {
            Verdict::Baseline => counts.baseline += 1,
            Verdict::Keep | Verdict::Candidate => counts.kept += 1,
            Verdict::BelowThreshold => counts.below_threshold += 1,
            Verdict::Duplicate => counts.duplicates += 1,
            Verdict::Cooldown => counts.cooldown += 1,
            Verdict::Budget => counts.budget += 1,
        }
        counts.evicted += u64::from(outcome.evicted.is_some());
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): a 64-bit state, one add and three mixing steps per
/// draw; plenty for drawing a baseline share, not for cryptography.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `[0, 1)`: the top 53 bits over `2^53`.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Statistic;

    fn budget(records: usize, window_ms: u64) -> PolicyConfig {
        PolicyConfig { budget: Some(Budget { records, window_ms }), ..PolicyConfig::default() }
    }

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // First outputs for seed 1234567, as printed by a Python transcription of Vigna's C code.
        let mut rng = SplitMix64(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn rules_combine_any_and_all() {
        let entropy = Gate { statistic: Statistic::MeanEntropy, threshold: 0.3 };
        let softmax = Gate { statistic: Statistic::MeanMaxSoftmax, threshold: 0.9 };
        let stats =
            FrameStats { mean_entropy: 0.5, mean_max_softmax: 0.95, ..FrameStats::default() };
        let any = Rules::try_new(Combine::Any, &[entropy, softmax]).unwrap();
        let all = Rules::try_new(Combine::All, &[entropy, softmax]).unwrap();
        assert!(any.passes(&stats));
        assert!(!all.passes(&stats));
        assert_eq!(any.priority(&stats), 0.5);
        let ranked_by_softmax = Rules::try_new(Combine::Any, &[softmax]).unwrap();
        assert_eq!(ranked_by_softmax.priority(&stats), -0.95);
        assert_eq!(Rules::try_new(Combine::Any, &[]), Err(RuleCount(0)));
        assert_eq!(Rules::try_new(Combine::Any, &[entropy; 9]), Err(RuleCount(9)));
    }

    #[test]
    fn budget_keeps_the_most_uncertain_of_the_window() {
        let mut policy = Policy::<4, 4>::try_new(budget(2, 100)).unwrap();
        let priorities = [0.5, 0.1, 0.7, 0.3, 0.9];
        let outcomes: [Outcome; 5] =
            core::array::from_fn(|i| policy.decide(i as u64, true, priorities[i], None));
        let verdicts = outcomes.map(|o| o.verdict);
        use Verdict::{Budget as Full, Candidate};
        assert_eq!(verdicts, [Candidate, Candidate, Candidate, Full, Candidate]);
        assert_eq!(outcomes[2].evicted, Some(1), "0.7 pushes out 0.1");
        assert_eq!(outcomes[4].evicted, Some(0), "0.9 pushes out 0.5");
        assert_eq!(policy.counts().evicted, 2);
        assert!(policy.decide(250, true, 0.0, None).window_closed);
        assert!(policy.finish());
    }

    #[test]
    fn duplicates_and_cooldown_are_skipped() {
        let config = PolicyConfig {
            duplicate_distance: Some(2),
            cooldown_ms: 10,
            ..PolicyConfig::default()
        };
        let mut policy = Policy::<1, 2>::try_new(config).unwrap();
        assert_eq!(policy.decide(0, true, 1.0, Some(0b1111)).verdict, Verdict::Keep);
        assert_eq!(policy.decide(20, true, 1.0, Some(0b1100)).verdict, Verdict::Duplicate);
        assert_eq!(policy.decide(25, true, 1.0, Some(0xFF00)).verdict, Verdict::Keep);
        assert_eq!(policy.decide(30, true, 1.0, Some(0)).verdict, Verdict::Cooldown);
        assert_eq!(policy.decide(35, false, 1.0, Some(0)).verdict, Verdict::BelowThreshold);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            Policy::<2, 1>::try_new(budget(3, 10)).err(),
            Some(PolicyError::BudgetRecords { found: 3, capacity: 2 })
        );
        assert_eq!(Policy::<2, 1>::try_new(budget(1, 0)).err(), Some(PolicyError::EmptyWindow));
        let config = PolicyConfig { baseline_rate: 1.5, ..PolicyConfig::default() };
        assert_eq!(Policy::<2, 1>::try_new(config).err(), Some(PolicyError::BaselineRate(1.5)));
    }
}
