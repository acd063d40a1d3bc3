//! The laptop side of Qualm, behind the `qualm` command: inspect a model, compute the
//! statistics of one frame, choose gate thresholds, calibrate and evaluate a model's
//! uncertainty on labeled data, and after deployment replay ledgers, watch for drift, sweep
//! corruptions and export kept records to labeling tools.
//!
//! Each subcommand is a module with its clap arguments and a `run` function; [`metrics`] holds
//! the metric definitions they share, so tests can check them against a reference.
//!
//! ```
//! use qualm_tools::metrics::ranking_metrics;
//!
//! // Uncertainty of three pixels and whether each is wrong: the two wrong ones rank first.
//! let mut pixels = [(0.9f32, true), (0.7, true), (0.1, false)];
//! let ranking = ranking_metrics(&mut pixels);
//! assert_eq!(ranking.auroc, Ok(1.0));
//! ```
#![warn(missing_docs)]

pub mod calibrate;
pub mod drift;
pub mod evaluate;
pub mod export;
pub mod inspect;
pub mod labeled;
pub mod metrics;
pub mod plot;
pub mod replay;
pub mod report;
pub mod stats;
pub mod sweep;
pub mod thresholds;
