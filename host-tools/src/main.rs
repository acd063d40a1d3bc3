//! `qualm`: the laptop side of Qualm.
//!
//! Exit codes: 0 on success, 1 when the command failed (the error chain is printed on stderr),
//! 2 for command-line usage errors (reported by clap).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qualm_tools::{
    calibrate, drift, evaluate, export, inspect, replay, report, stats, sweep, thresholds,
};

/// Inspect models, compute frame statistics and choose gate thresholds for qualmd.
#[derive(Debug, Parser)]
#[command(name = "qualm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model card's input and output shapes and classes, and time one inference.
    Inspect(inspect::InspectArgs),
    /// Print the uncertainty statistics of one frame's logits (a .npy file).
    Stats(stats::StatsArgs),
    /// Choose a gate threshold from a qualmd ledger and write a calibration file.
    Thresholds(thresholds::ThresholdsArgs),
    /// Fit a softmax temperature on labeled frames and report calibration before and after.
    Calibrate(calibrate::CalibrateArgs),
    /// Measure how well each uncertainty score flags wrong pixels, failed frames and
    /// out-of-distribution frames on labeled data.
    Evaluate(evaluate::EvaluateArgs),
    /// Write one self-contained HTML page: metrics, reliability diagram, ROC and risk-coverage
    /// curves, score histograms, frame panels and a verdict on which score to trust.
    Report(report::ReportArgs),
    /// Replay a ledger through a gate: which frames a calibration (or another threshold) would
    /// have kept, overall, per hour and per day.
    Replay(replay::ReplayArgs),
    /// Compare the field's frame statistics in a ledger with the calibration frames' (PSI, KS)
    /// and say whether the threshold still keeps what it was chosen to keep.
    Drift(drift::DriftArgs),
    /// Corrupt labeled frames in memory (noise, blur, brightness, JPEG) and report accuracy,
    /// ECE, frame statistics and the gate's keep rate per corruption and severity.
    Sweep(sweep::SweepArgs),
    /// Write the records of a qualmd spool in a labeling tool's import format (CVAT
    /// "Segmentation mask 1.1"), with the model's masks as the first draft.
    Export(export::ExportArgs),
}

/// Ends the process quietly when stdout is a closed pipe (`qualm stats ... | head`): `println!`
/// panics on a write error, and the reader having gone away is not a bug to report.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's text for a failed `print!`; the test `output_into_a_closed_pipe_...` notices
        // if it ever changes.
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUALM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let result = match &cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Thresholds(args) => thresholds::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Report(args) => report::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Drift(args) => drift::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Export(args) => export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qualm: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
