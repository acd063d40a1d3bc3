//! Uncertainty scores of a segmentation model's output, reduced to fixed-size frame statistics,
//! and the gate that decides which frames to keep.
//!
//! Max-softmax alone is a poor confidence: it saturates and stays high far from the training
//! data. This crate computes max-softmax, normalized entropy, margin and energy per pixel after
//! temperature scaling, in one pass over a `[classes, height, width]` map of any layout and
//! element type, without a float copy and without allocating.
//!
//! ```
//! use qualm_core::{analyze, FrameBuffers, Layout, OutputKind, OutputMap, StatsConfig};
//!
//! // Two classes, a 1x2 frame in [C, H, W] layout: one sure pixel, one coin toss.
//! let logits = [0.0f32, 0.0, 9.0, 0.0];
//! let map = OutputMap::try_new(&logits, 2, 1, 2, Layout::Chw, OutputKind::Logits)?;
//! let mut buffers = FrameBuffers::<2>::new();
//! let stats = analyze(&map, &StatsConfig::default(), buffers.as_maps())?;
//!
//! assert_eq!(buffers.classes, [1, 0]);
//! assert!(stats.mean_entropy > 0.49 && stats.uncertain_fraction == 0.5);
//! // Two segments of one pixel each, both on the class boundary.
//! assert_eq!((stats.segments, stats.boundary_fraction), (2, 1.0));
//! # Ok::<(), qualm_core::MapError>(())
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

mod list;
mod log;
mod math;
mod region;

pub mod gate;
pub mod map;
pub mod policy;
pub mod score;
pub mod stats;

pub use gate::{Decision, Gate, Statistic};
pub use list::FixedList;
pub use map::{Element, Layout, MapError, OutputKind, OutputMap, Quantization};
pub use policy::{Combine, Policy, PolicyConfig, Rules, Verdict};
pub use region::NO_SEGMENT;
pub use score::{MAX_CLASSES, PixelScores, SCORES, Score, Temperature, score_logits};
#[cfg(any(test, feature = "alloc"))]
pub use stats::OwnedFrameMaps;
pub use stats::{
    CLASS_CAPACITY, ClassStats, ENTROPY_BINS, EnergyRange, FrameBuffers, FrameMaps, FrameStats,
    Histogram, SEGMENT_CAPACITY, SegmentScratch, SegmentStats, StatsConfig, analyze, analyze_with,
};
