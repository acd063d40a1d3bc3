//! Frames whose model output is mostly not numbers.
//!
//! `qualm-core` leaves pixels with NaN or infinite logits out of every statistic, so a frame
//! whose logits are all non-finite has no scored pixel, means of 0, and would look perfectly
//! certain to the gate. Such a frame means a broken model, input or runtime: exactly what an
//! engineer must see. qualmd therefore sends it to the keep policy as passing, with the highest
//! priority, and ledgers it with its own reason; `qualm replay` asks the same question here so
//! that it keeps the frames qualmd kept.

use qualm_core::FrameStats;
use qualm_core::policy::Rules;

/// Largest share of a frame's scored-or-non-finite pixels (those the region of interest keeps)
/// that may have non-finite logits before the frame counts as non-finite: a stray pixel is the
/// model's business, one in a hundred is not.
pub const NONFINITE_SHARE_LIMIT: f64 = 0.01;

/// The ledger reason of a non-finite frame.
pub const NONFINITE_REASON: &str = "non_finite";

/// Whether more than [`NONFINITE_SHARE_LIMIT`] of the pixels the region of interest keeps have
/// non-finite logits. A frame whose region keeps no pixel is not non-finite.
pub fn is_nonfinite(stats: &FrameStats) -> bool {
    let kept = stats.pixels.saturating_sub(stats.ignored_pixels);
    kept > 0 && f64::from(stats.nonfinite_pixels) > NONFINITE_SHARE_LIMIT * f64::from(kept)
}

/// What the keep policy is told about a frame: whether it passes `rules` and its priority
/// (larger = less sure). A non-finite frame passes whatever its statistics say, with the
/// highest priority, so only the policy's own limits (budget, cooldown, duplicates) hold it
/// back.
pub fn policy_input(rules: &Rules, stats: &FrameStats) -> (bool, f32) {
    if is_nonfinite(stats) {
        (true, f32::INFINITY)
    } else {
        (rules.passes(stats), rules.priority(stats))
    }
}

/// One line saying how many pixels were non-finite, for the ledger and the record's reason.
pub fn describe(stats: &FrameStats) -> String {
    let kept = stats.pixels.saturating_sub(stats.ignored_pixels);
    format!("{} of {kept} pixels have non-finite logits", stats.nonfinite_pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(pixels: u32, ignored: u32, nonfinite: u32) -> FrameStats {
        FrameStats {
            pixels,
            ignored_pixels: ignored,
            nonfinite_pixels: nonfinite,
            ..FrameStats::default()
        }
    }

    #[test]
    fn share_is_over_the_pixels_the_region_keeps() {
        // 1% of 1000 is the limit itself: not above it.
        assert!(!is_nonfinite(&stats(1000, 0, 10)));
        assert!(is_nonfinite(&stats(1000, 0, 11)));
        // 6 of the 500 kept pixels is 1.2%.
        assert!(is_nonfinite(&stats(1000, 500, 6)));
        assert!(!is_nonfinite(&stats(1000, 1000, 0)));
        assert!(is_nonfinite(&stats(65_536, 0, 65_536)));
    }
}
