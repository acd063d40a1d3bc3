//! The keep/skip decision for one frame.

use core::fmt;
use core::str::FromStr;

use crate::stats::FrameStats;

/// A frame statistic the gate can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Statistic {
    /// [`FrameStats::mean_max_softmax`]; lower means more uncertain.
    MeanMaxSoftmax,
    /// [`FrameStats::mean_entropy`]; higher means more uncertain.
    MeanEntropy,
    /// [`FrameStats::mean_margin`]; lower means more uncertain.
    MeanMargin,
    /// [`FrameStats::mean_energy`]; higher means more uncertain.
    MeanEnergy,
    /// [`FrameStats::p50_entropy`]; higher means more uncertain.
    P50Entropy,
    /// [`FrameStats::p90_entropy`]; higher means more uncertain.
    P90Entropy,
    /// [`FrameStats::p99_entropy`]; higher means more uncertain.
    P99Entropy,
    /// [`FrameStats::uncertain_fraction`]; higher means more uncertain.
    UncertainFraction,
    /// [`FrameStats::low_max_softmax_fraction`]; higher means more uncertain.
    LowMaxSoftmaxFraction,
    /// [`FrameStats::low_margin_fraction`]; higher means more uncertain.
    LowMarginFraction,
    /// [`FrameStats::high_energy_fraction`]; higher means more uncertain.
    HighEnergyFraction,
    /// [`FrameStats::p90_energy`]; higher means more uncertain.
    P90Energy,
    /// [`FrameStats::interior_mean_max_softmax`]; lower means more uncertain.
    InteriorMeanMaxSoftmax,
    /// [`FrameStats::interior_mean_entropy`]; higher means more uncertain.
    InteriorMeanEntropy,
    /// [`FrameStats::interior_p90_entropy`]; higher means more uncertain.
    InteriorP90Entropy,
    /// [`FrameStats::interior_uncertain_fraction`]; higher means more uncertain.
    InteriorUncertainFraction,
    /// [`FrameStats::worst_segment_entropy`]; higher means more uncertain.
    WorstSegmentEntropy,
}

impl Statistic {
    /// Every statistic, in a fixed order.
    pub const ALL: [Self; 17] = [
        Self::MeanMaxSoftmax,
        Self::MeanEntropy,
        Self::MeanMargin,
        Self::MeanEnergy,
        Self::P50Entropy,
        Self::P90Entropy,
        Self::P99Entropy,
        Self::UncertainFraction,
        Self::LowMaxSoftmaxFraction,
        Self::LowMarginFraction,
        Self::HighEnergyFraction,
        Self::P90Energy,
        Self::InteriorMeanMaxSoftmax,
        Self::InteriorMeanEntropy,
        Self::InteriorP90Entropy,
        Self::InteriorUncertainFraction,
        Self::WorstSegmentEntropy,
    ];

    /// The name used in configuration files, ledgers and JSON (the [`FrameStats`] field name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MeanMaxSoftmax => "mean_max_softmax",
            Self::MeanEntropy => "mean_entropy",
            Self::MeanMargin => "mean_margin",
            Self::MeanEnergy => "mean_energy",
            Self::P50Entropy => "p50_entropy",
            Self::P90Entropy => "p90_entropy",
            Self::P99Entropy => "p99_entropy",
            Self::UncertainFraction => "uncertain_fraction",
            Self::LowMaxSoftmaxFraction => "low_max_softmax_fraction",
            Self::LowMarginFraction => "low_margin_fraction",
            Self::HighEnergyFraction => "high_energy_fraction",
            Self::P90Energy => "p90_energy",
            Self::InteriorMeanMaxSoftmax => "interior_mean_max_softmax",
            Self::InteriorMeanEntropy => "interior_mean_entropy",
            Self::InteriorP90Entropy => "interior_p90_entropy",
            Self::InteriorUncertainFraction => "interior_uncertain_fraction",
            Self::WorstSegmentEntropy => "worst_segment_entropy",
        }
    }

    /// The statistic's value in `stats`.
    pub fn value(self, stats: &FrameStats) -> f32 {
        self.value_of(stats)
    }

    /// The statistic's value in frame statistics of any capacities.
    pub fn value_of<const CLASSES: usize, const SEGMENTS: usize>(
        self,
        stats: &FrameStats<CLASSES, SEGMENTS>,
    ) -> f32 {
        match self {
            Self::MeanMaxSoftmax => stats.mean_max_softmax,
            Self::MeanEntropy => stats.mean_entropy,
            Self::MeanMargin => stats.mean_margin,
            Self::MeanEnergy => stats.mean_energy,
            Self::P50Entropy => stats.p50_entropy,
            Self::P90Entropy => stats.p90_entropy,
            Self::P99Entropy => stats.p99_entropy,
            Self::UncertainFraction => stats.uncertain_fraction,
            Self::LowMaxSoftmaxFraction => stats.low_max_softmax_fraction,
            Self::LowMarginFraction => stats.low_margin_fraction,
            Self::HighEnergyFraction => stats.high_energy_fraction,
            Self::P90Energy => stats.p90_energy,
            Self::InteriorMeanMaxSoftmax => stats.interior_mean_max_softmax,
            Self::InteriorMeanEntropy => stats.interior_mean_entropy,
            Self::InteriorP90Entropy => stats.interior_p90_entropy,
            Self::InteriorUncertainFraction => stats.interior_uncertain_fraction,
            Self::WorstSegmentEntropy => stats.worst_segment_entropy,
        }
    }

    /// Whether a larger value means a less certain frame.
    pub fn higher_is_uncertain(self) -> bool {
        !matches!(self, Self::MeanMaxSoftmax | Self::MeanMargin | Self::InteriorMeanMaxSoftmax)
    }

    /// The value turned so that larger always means more uncertain (negated where needed);
    /// thresholds chosen on this orientation mean the same for every statistic.
    pub fn uncertainty(self, value: f32) -> f32 {
        if self.higher_is_uncertain() { value } else { -value }
    }
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given is not a known statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownStatistic;

impl fmt::Display for UnknownStatistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected one of ")?;
        for (i, statistic) in Statistic::ALL.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{}", statistic.as_str())?;
        }
        Ok(())
    }
}

impl core::error::Error for UnknownStatistic {}

impl FromStr for Statistic {
    type Err = UnknownStatistic;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|s| s.as_str() == name).ok_or(UnknownStatistic)
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use super::Statistic;

    impl serde::Serialize for Statistic {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(self.as_str())
        }
    }

    impl<'de> serde::Deserialize<'de> for Statistic {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Statistic;

                fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                    f.write_str("a statistic name such as \"mean_entropy\"")
                }

                fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Statistic, E> {
                    name.parse().map_err(|_| {
                        E::invalid_value(serde::de::Unexpected::Str(name), &super::UnknownStatistic)
                    })
                }
            }
            deserializer.deserialize_str(Visitor)
        }
    }

    impl serde::de::Expected for super::UnknownStatistic {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            core::fmt::Display::fmt(self, f)
        }
    }
}

/// Why the gate decided as it did.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Decision {
    /// The statistic was beyond the threshold: keep the frame.
    Keep {
        /// The statistic's value on this frame.
        value: f32,
    },
    /// The statistic was within the threshold: do not keep the frame.
    Skip {
        /// The statistic's value on this frame.
        value: f32,
    },
}

impl Decision {
    /// Whether the frame is kept.
    pub fn is_keep(self) -> bool {
        matches!(self, Self::Keep { .. })
    }
}

/// Keeps a frame when one statistic is strictly beyond a threshold, in the uncertain direction:
/// above it for entropy-like statistics, below it for max-softmax and margin.
///
/// "Strictly" matters: a threshold taken as the `ceil((n + 1)(1 - r))`-th smallest uncertainty
/// of `n` exchangeable frames keeps a new frame with probability at most `r`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Gate {
    /// The statistic compared.
    pub statistic: Statistic,
    /// The threshold, in the statistic's own units.
    pub threshold: f32,
}

impl Gate {
    /// Decides for one frame. A frame whose statistic is NaN is kept: it is worth a look.
    pub fn decide(&self, stats: &FrameStats) -> Decision {
        let value = self.statistic.value(stats);
        let statistic = self.statistic;
        let beyond = statistic.uncertainty(value) > statistic.uncertainty(self.threshold);
        let decision = if beyond || value.is_nan() {
            Decision::Keep { value }
        } else {
            Decision::Skip { value }
        };
        crate::log::debug!(
            "gate: {} = {}, threshold {}",
            statistic.as_str(),
            value,
            self.threshold
        );
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean_max_softmax: f32, mean_entropy: f32) -> FrameStats {
        FrameStats { mean_max_softmax, mean_entropy, ..FrameStats::default() }
    }

    #[test]
    fn entropy_keeps_above_threshold_only() {
        let gate = Gate { statistic: Statistic::MeanEntropy, threshold: 0.3 };
        assert!(gate.decide(&stats(0.0, 0.31)).is_keep());
        assert!(!gate.decide(&stats(0.0, 0.3)).is_keep());
        assert!(!gate.decide(&stats(0.0, 0.1)).is_keep());
    }

    #[test]
    fn max_softmax_keeps_below_threshold_only() {
        let gate = Gate { statistic: Statistic::MeanMaxSoftmax, threshold: 0.9 };
        assert!(gate.decide(&stats(0.8, 0.0)).is_keep());
        assert!(!gate.decide(&stats(0.9, 0.0)).is_keep());
        assert!(!gate.decide(&stats(0.95, 0.0)).is_keep());
    }

    #[test]
    fn nan_statistic_is_kept() {
        let gate = Gate { statistic: Statistic::MeanEntropy, threshold: 0.3 };
        assert!(gate.decide(&stats(0.0, f32::NAN)).is_keep());
    }

    #[test]
    fn names_round_trip() {
        for statistic in Statistic::ALL {
            assert_eq!(statistic.as_str().parse::<Statistic>(), Ok(statistic));
        }
        assert_eq!("entropy".parse::<Statistic>(), Err(UnknownStatistic));
    }

    #[test]
    fn every_name_is_a_frame_stats_field() {
        // The name is the JSON key of the value it reads: set each field apart and look it up.
        let stats: FrameStats = FrameStats {
            interior_mean_entropy: 0.25,
            worst_segment_entropy: 0.75,
            p90_energy: -3.0,
            ..FrameStats::default()
        };
        assert_eq!(Statistic::InteriorMeanEntropy.value(&stats), 0.25);
        assert_eq!(Statistic::WorstSegmentEntropy.value(&stats), 0.75);
        assert_eq!(Statistic::P90Energy.value(&stats), -3.0);
        let message = UnknownStatistic.to_string();
        assert!(Statistic::ALL.iter().all(|s| message.contains(s.as_str())));
    }
}
