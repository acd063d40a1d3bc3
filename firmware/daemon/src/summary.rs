//! Periodic summary lines: every `[device] summary_interval` qualmd appends one line to the
//! ledger, whether or not a frame was kept, so a reader can tell a quiet camera from a dead one.
//! A line counts what happened since the previous summary (frames, kept, evicted, not stored,
//! failed, dropped, and frames by ledger reason) and holds fixed-bin histograms of the gate
//! statistic and of the mean entropy. It carries `"kind": "summary"`; frame lines carry no
//! `kind`, and [`read_ledger`](crate::ledger::read_ledger) skips summary lines.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use qualm_core::Statistic;
use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, LedgerEntry};
use crate::mqtt::MqttSender;
use crate::pipeline::Summary;

/// The `kind` of a summary line.
pub const SUMMARY_KIND: &str = "summary";

/// Bins of each summary histogram.
pub const HISTOGRAM_BINS: usize = 10;

/// A histogram of `HISTOGRAM_BINS` equal-width bins over `[low, high]`; a value equal to
/// `high` falls in the last bin. Values outside the range and non-finite ones are counted apart.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Histogram {
    /// Lower edge of the first bin.
    pub low: f32,
    /// Upper edge of the last bin.
    pub high: f32,
    /// Values per bin: bin `i` holds `low + i * width <= v < low + (i + 1) * width`.
    pub counts: [u64; HISTOGRAM_BINS],
    /// Values below `low`.
    pub below: u64,
    /// Values above `high`.
    pub above: u64,
    /// NaN or infinite values.
    pub not_finite: u64,
}

impl Histogram {
    /// An empty histogram over `[low, high]`.
    pub fn new(low: f32, high: f32) -> Self {
        Self { low, high, counts: [0; HISTOGRAM_BINS], below: 0, above: 0, not_finite: 0 }
    }

    /// An empty histogram over the range `statistic` usually takes: `[-20, 0]` for the energy
    /// statistics (energy is `-T logsumexp(z / T)`, at most 0 for confident logits), `[0, 1]`
    /// for every other one (probabilities, normalized entropies, margins, fractions).
    pub fn for_statistic(statistic: Statistic) -> Self {
        match statistic {
            Statistic::MeanEnergy | Statistic::P90Energy => Self::new(-20.0, 0.0),
            _ => Self::new(0.0, 1.0),
        }
    }

    /// Counts one value.
    pub fn add(&mut self, value: f32) {
        if !value.is_finite() {
            self.not_finite += 1;
        } else if value < self.low {
            self.below += 1;
        } else if value > self.high {
            self.above += 1;
        } else {
            // bin = floor((v - low) / (high - low) * bins), the top edge folded into the last
            let share = f64::from(value - self.low) / f64::from(self.high - self.low);
            let bin = ((share * HISTOGRAM_BINS as f64) as usize).min(HISTOGRAM_BINS - 1);
            self.counts[bin] += 1;
        }
    }

    /// Every value counted, in range or not.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.below + self.above + self.not_finite
    }

    fn clear(&mut self) {
        *self = Self::new(self.low, self.high);
    }
}

/// One summary line of the ledger.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct SummaryLine {
    /// Always [`SUMMARY_KIND`].
    pub kind: String,
    /// Wall-clock time the line was written (RFC 3339, UTC).
    pub time: String,
    /// Wall-clock seconds since the previous summary (or the start).
    pub seconds: f64,
    /// Frames read since the previous summary, including bad ones.
    pub frames: u64,
    /// Frames stored as records.
    pub kept: u64,
    /// Records removed again (their `evicted` lines are not frames).
    pub evicted: u64,
    /// Frames to keep that the spool could not store.
    pub spool_errors: u64,
    /// Frames that could not be read or scored.
    pub failed: u64,
    /// Frames the capture thread dropped because the queue was full (they have no line).
    pub dropped: u64,
    /// Frames by the `reason` of their ledger line; the counts add up to `frames`.
    pub reasons: BTreeMap<String, u64>,
    /// The statistic the first gated frame of the interval was gated on; none when no frame
    /// was gated (observe-only, or only failed frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<Statistic>,
    /// Values of `statistic` of the frames gated on it.
    pub statistic_histogram: Histogram,
    /// Gated frames left out of `statistic_histogram` because a calibration reload changed
    /// the statistic within the interval.
    pub other_statistic: u64,
    /// Mean normalized entropy of every scored frame, over `[0, 1]`.
    pub entropy_histogram: Histogram,
}

/// Collects frames between two summaries and appends the summary lines to the ledger.
#[derive(Debug)]
pub struct Summaries {
    ledger: Ledger,
    interval: Duration,
    started: Instant,
    /// Totals and dropped count at the previous summary: counts are differences of totals.
    last_totals: Summary,
    last_dropped: u64,
    reasons: BTreeMap<String, u64>,
    statistic: Option<Statistic>,
    statistic_histogram: Histogram,
    other_statistic: u64,
    entropy_histogram: Histogram,
    /// Where each line's JSON goes besides the ledger.
    publisher: Option<MqttSender>,
}

impl Summaries {
    /// Appends to the ledger at `path` every `interval`, counting from `now`.
    ///
    /// # Errors
    /// When the ledger cannot be opened.
    pub fn open(path: &Path, interval: Duration, now: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            ledger: Ledger::open(path)?,
            interval,
            started: now,
            last_totals: Summary::default(),
            last_dropped: 0,
            reasons: BTreeMap::new(),
            statistic: None,
            statistic_histogram: Histogram::new(0.0, 1.0),
            other_statistic: 0,
            entropy_histogram: Histogram::new(0.0, 1.0),
            publisher: None,
        })
    }

    /// Queues every later summary line for an MQTT broker too: the same JSON as in the ledger.
    pub fn publish_to(&mut self, sender: MqttSender) {
        self.publisher = Some(sender);
    }

    /// Counts one frame's ledger line. Allocates only for a reason not seen since the last
    /// summary.
    pub fn observe(&mut self, entry: &LedgerEntry) {
        match self.reasons.get_mut(&entry.reason) {
            Some(count) => *count += 1,
            None => {
                self.reasons.insert(entry.reason.clone(), 1);
            }
        }
        let Some(stats) = &entry.stats else { return };
        self.entropy_histogram.add(stats.mean_entropy);

        let Some(statistic) = entry.statistic else { return };
        if self.statistic.is_none() {
            self.statistic = Some(statistic);
            self.statistic_histogram = Histogram::for_statistic(statistic);
        }
        if self.statistic == Some(statistic) {
            self.statistic_histogram.add(statistic.value(stats));
        } else {
            self.other_statistic += 1;
        }
    }

    /// Appends a summary when the interval has passed since the last one.
    ///
    /// # Errors
    /// When the ledger cannot be written.
    pub fn write_if_due(
        &mut self,
        now: Instant,
        totals: &Summary,
        dropped: u64,
    ) -> anyhow::Result<()> {
        if now.duration_since(self.started) >= self.interval {
            self.write(now, totals, dropped)?;
        }
        Ok(())
    }

    /// Appends the last summary of a run, with whatever was counted since the previous one,
    /// and fsyncs it.
    ///
    /// # Errors
    /// When the ledger cannot be written.
    pub fn finish(&mut self, now: Instant, totals: &Summary, dropped: u64) -> anyhow::Result<()> {
        self.write(now, totals, dropped)?;
        self.ledger.sync()
    }

    fn write(&mut self, now: Instant, totals: &Summary, dropped: u64) -> anyhow::Result<()> {
        let last = self.last_totals;
        let line = SummaryLine {
            kind: SUMMARY_KIND.to_owned(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            seconds: now.duration_since(self.started).as_secs_f64(),
            frames: totals.frames - last.frames,
            kept: totals.kept - last.kept,
            evicted: totals.evicted - last.evicted,
            spool_errors: totals.spool_errors - last.spool_errors,
            failed: totals.failed - last.failed,
            dropped: dropped.saturating_sub(self.last_dropped),
            reasons: std::mem::take(&mut self.reasons),
            statistic: self.statistic.take(),
            statistic_histogram: self.statistic_histogram.clone(),
            other_statistic: self.other_statistic,
            entropy_histogram: self.entropy_histogram.clone(),
        };
        self.ledger.append_line(&line)?;
        if let Some(publisher) = &self.publisher {
            // Serialized as the ledger serializes it: subscribers get the line byte for byte.
            let json = serde_json::to_vec(&line).context("cannot encode a summary line")?;
            if publisher.send(json).is_some() {
                tracing::debug!("mqtt queue full: dropped the oldest unsent summary");
            }
        }

        // The next interval starts now; a slow frame delays a summary, it does not skew the
        // next one.
        self.started = now;
        self.last_totals = *totals;
        self.last_dropped = dropped;
        self.statistic_histogram.clear();
        self.other_statistic = 0;
        self.entropy_histogram.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_match_a_plain_reference() {
        let values = [0.0, 0.05, 0.1, 0.349, 0.35, 0.999, 1.0, -0.01, 1.01, f32::NAN];
        let mut histogram = Histogram::new(0.0, 1.0);
        values.iter().for_each(|&v| histogram.add(v));
        // By hand: 0.0 and 0.05 in bin 0, 0.1 in bin 1, 0.349 and 0.35 in bin 3, 0.999 and
        // the top edge 1.0 in bin 9.
        assert_eq!(histogram.counts, [2, 1, 0, 2, 0, 0, 0, 0, 0, 2]);
        assert_eq!((histogram.below, histogram.above, histogram.not_finite), (1, 1, 1));
        assert_eq!(histogram.total(), values.len() as u64);

        let mut energy = Histogram::for_statistic(Statistic::MeanEnergy);
        energy.add(-19.0);
        energy.add(-0.5);
        assert_eq!(energy.counts, [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
