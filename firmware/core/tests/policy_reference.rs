//! The keep policy against plain `Vec` references on random frame streams: a sorted top-K per
//! window for the budget alone, and a step-by-step model of every check together.

use proptest::prelude::*;
use qualm_core::policy::{Budget, Outcome, Policy, PolicyConfig, SplitMix64, Verdict};

const CANDIDATES: usize = 6;
const HISTORY: usize = 4;

/// One frame of a random stream: time step, rules passed, priority, hash.
type Frame = (u64, bool, f32, u64);

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    // Few distinct priorities and hashes, so that ties and duplicates happen often.
    let priority = prop_oneof![
        8 => (0u8..6).prop_map(|p| f32::from(p) / 5.0),
        1 => Just(f32::NAN),
        1 => -10.0f32..10.0,
    ];
    let hash = prop_oneof![Just(0u64), Just(0b111), Just(u64::MAX), any::<u64>()];
    prop::collection::vec((0u64..40, any::<bool>(), priority, hash), 0..120)
}

/// Runs `policy` over the stream; returns the outcomes and the frame times.
fn run(config: PolicyConfig, stream: &[Frame]) -> (Vec<Outcome>, Vec<u64>) {
    let mut policy = Policy::<CANDIDATES, HISTORY>::try_new(config).unwrap();
    let mut time = 0;
    let mut times = Vec::new();
    let outcomes = stream
        .iter()
        .map(|&(step, passes, priority, hash)| {
            time += step;
            times.push(time);
            policy.decide(time, passes, priority, Some(hash))
        })
        .collect();
    (outcomes, times)
}

/// The order of the budget: higher priority first (NaN as +inf), the earlier frame on a tie.
fn ranks_above(a: (f32, u64), b: (f32, u64)) -> bool {
    let key = |p: f32| if p.is_nan() { f32::INFINITY } else { p };
    key(a.0).total_cmp(&key(b.0)).then(b.1.cmp(&a.1)).is_gt()
}

/// Every check of the policy, written as plainly as possible over `Vec`s.
struct Reference {
    config: PolicyConfig,
    rng: SplitMix64,
    window_start: Option<u64>,
    window: Vec<(f32, u64)>,
    history: Vec<u64>,
    last_kept: Option<u64>,
}

impl Reference {
    fn decide(
        &mut self,
        ticket: u64,
        time: u64,
        passes: bool,
        priority: f32,
        hash: u64,
    ) -> Outcome {
        let mut window_closed = false;
        if let Some(budget) = self.config.budget {
            match self.window_start {
                None => self.window_start = Some(time),
                Some(start) => {
                    let mut start = start;
                    while time >= start + budget.window_ms {
                        start += budget.window_ms;
                        window_closed = true;
                    }
                    if window_closed {
                        self.window.clear();
                    }
                    self.window_start = Some(start);
                }
            }
        }

        let draw = self.rng.next_unit() < f64::from(self.config.baseline_rate);
        let mut evicted = None;
        let verdict = if draw {
            Verdict::Baseline
        } else if !passes {
            Verdict::BelowThreshold
        } else if self.config.duplicate_distance.is_some_and(|d| {
            self.history.iter().rev().take(HISTORY).any(|h| (h ^ hash).count_ones() <= d)
        }) {
            Verdict::Duplicate
        } else if self.last_kept.is_some_and(|last| time - last < self.config.cooldown_ms) {
            Verdict::Cooldown
        } else if let Some(budget) = self.config.budget {
            let entry = (priority, ticket);
            self.window.sort_by(|a, b| {
                if ranks_above(*a, *b) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            });
            if self.window.len() < budget.records {
                self.window.push(entry);
                Verdict::Candidate
            } else if ranks_above(entry, *self.window.last().unwrap()) {
                evicted = Some(self.window.pop().unwrap().1);
                self.window.push(entry);
                Verdict::Candidate
            } else {
                Verdict::Budget
            }
        } else {
            Verdict::Keep
        };

        if matches!(verdict, Verdict::Keep | Verdict::Candidate) {
            self.history.push(hash);
            self.last_kept = Some(time);
        }
        Outcome { ticket, verdict, evicted, window_closed }
    }
}

proptest! {
    /// The survivors of each window are exactly its top `records` passing frames.
    #[test]
    fn budget_keeps_the_top_k_of_each_window(
        stream in frames(),
        records in 1..=CANDIDATES,
        window_ms in 1u64..200,
    ) {
        let config = PolicyConfig {
            budget: Some(Budget { records, window_ms }),
            ..PolicyConfig::default()
        };
        let (outcomes, times) = run(config, &stream);

        let evicted: Vec<u64> = outcomes.iter().filter_map(|o| o.evicted).collect();
        let survivors: Vec<u64> = outcomes
            .iter()
            .filter(|o| o.verdict == Verdict::Candidate && !evicted.contains(&o.ticket))
            .map(|o| o.ticket)
            .collect();

        // The reference: group passing frames by window, sort each group, take the first K.
        let first = times.first().copied().unwrap_or(0);
        let mut expected = Vec::new();
        let mut windows: Vec<u64> = times.iter().map(|t| (t - first) / window_ms).collect();
        windows.dedup();
        for window in windows {
            let mut members: Vec<(f32, u64)> = stream
                .iter()
                .zip(&times)
                .enumerate()
                .filter(|(_, ((_, passes, _, _), t))| *passes && (*t - first) / window_ms == window)
                .map(|(i, ((_, _, priority, _), _))| (*priority, i as u64))
                .collect();
            members.sort_by(|a, b| {
                if ranks_above(*a, *b) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            });
            expected.extend(members.iter().take(records).map(|m| m.1));
        }
        expected.sort_unstable();
        prop_assert_eq!(survivors, expected);

        // A window closes exactly when the frame's window index differs from the previous one.
        for i in 1..times.len() {
            let closed = (times[i] - first) / window_ms != (times[i - 1] - first) / window_ms;
            prop_assert_eq!(outcomes[i].window_closed, closed, "frame {}", i);
        }
    }

    /// Baseline, rules, duplicates, cooldown and budget together, step by step.
    #[test]
    fn every_check_matches_the_reference(
        stream in frames(),
        budget in prop::option::of((1..=CANDIDATES, 1u64..200)),
        baseline_rate in prop_oneof![Just(0.0f32), Just(1.0), 0.0f32..0.5],
        seed in any::<u64>(),
        duplicate_distance in prop::option::of(0u32..8),
        cooldown_ms in prop_oneof![Just(0u64), 0u64..60],
    ) {
        let config = PolicyConfig {
            budget: budget.map(|(records, window_ms)| Budget { records, window_ms }),
            baseline_rate,
            seed,
            duplicate_distance,
            cooldown_ms,
        };
        let (outcomes, times) = run(config, &stream);
        let mut reference = Reference {
            config,
            rng: SplitMix64(seed),
            window_start: None,
            window: Vec::new(),
            history: Vec::new(),
            last_kept: None,
        };
        for (i, (&(_, passes, priority, hash), &time)) in stream.iter().zip(&times).enumerate() {
            let expected = reference.decide(i as u64, time, passes, priority, hash);
            prop_assert_eq!(outcomes[i], expected, "frame {}", i);
        }
    }
}

#[test]
fn baseline_share_is_close_to_the_rate() {
    // 100,000 draws at 1%: the binomial standard deviation is 31, so 6 sigma is about 190.
    let config = PolicyConfig { baseline_rate: 0.01, seed: 7, ..PolicyConfig::default() };
    let mut policy = Policy::<1, 1>::try_new(config).unwrap();
    for time in 0..100_000 {
        policy.decide(time, false, 0.0, None);
    }
    let baseline = policy.counts().baseline;
    assert!(baseline.abs_diff(1_000) < 190, "{baseline} baseline frames of 100000 at 1%");
    assert_eq!(policy.counts().below_threshold, 100_000 - baseline);
}
