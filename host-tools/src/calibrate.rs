//! `qualm calibrate`: fit a softmax temperature on labeled frames by least pixel NLL, and
//! report accuracy, ECE, MCE, NLL and Brier before and after it.
//!
//! The fit holds every `--fit-stride`-th labeled pixel in memory (9 classes x 4 bytes each);
//! the metrics before and after are over every labeled pixel, in two passes over the frames
//! (the second recomputes the logits rather than keeping them all).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::evaluate::insert_calibration;
use crate::labeled::{DataArgs, Dataset};
use crate::metrics::{
    CalibrationSummary, CalibrationSums, FitSample, TemperatureFit, Undefined, fit_temperature,
};
use crate::plot::{LineChart, Series};

/// Smallest temperature the fit considers.
const LOWER_TEMPERATURE: f64 = 0.05;
/// Largest temperature the fit considers.
const UPPER_TEMPERATURE: f64 = 20.0;
/// Width of the final bracket on `ln T`: about 0.001% on `T`.
const LOG_TOLERANCE: f64 = 1e-5;

/// Arguments of `qualm calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Fit on every K-th pixel of each frame (row-major index 0, K, 2K, ...) that is labeled,
    /// to bound memory; metrics are still over every labeled pixel.
    #[arg(long, value_name = "K", default_value_t = 4)]
    fit_stride: usize,

    /// Draw the reliability diagram (before and after the temperature) to FILE.png and
    /// FILE.svg.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one frame contributes to the first pass.
struct FirstPass {
    classes: usize,
    sums: CalibrationSums,
    sample: FitSample,
    ignored: u64,
}

/// Runs `qualm calibrate`.
///
/// # Errors
/// When an argument is invalid, a frame, label or model cannot be read, or no pixel is
/// labeled.
pub fn run(args: &CalibrateArgs) -> Result<()> {
    if args.fit_stride == 0 {
        bail!("expected --fit-stride of at least 1, found 0");
    }
    let dataset = args.data.to_dataset()?;
    let report = calibrate(&dataset, args.fit_stride)?;
    if let Some(plot) = &args.plot {
        let chart = report.reliability_chart();
        for (extension, bytes) in [("png", chart.to_png()?), ("svg", chart.to_svg()?.into_bytes())]
        {
            let path = plot.with_extension(extension);
            std::fs::write(&path, bytes)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(&dataset.description))?);
    } else {
        report.print(&dataset.description);
    }
    Ok(())
}

/// Fits the temperature on every `stride`-th labeled pixel of `dataset` and measures the
/// calibration metrics at `T = 1` and at the fitted `T` over every labeled pixel.
///
/// # Errors
/// When a frame, label or model cannot be read, the frames disagree on the class count, or no
/// pixel is labeled.
pub(crate) fn calibrate(dataset: &Dataset, stride: usize) -> Result<Calibrated> {
    let started = std::time::Instant::now();

    // Pass 1: metrics at T = 1 over all pixels, and the fit sample.
    let first = dataset.map_frames(&dataset.frames, "logits", |logits, frame| {
        let labels = frame.read_label(&logits)?;
        let mut sums = CalibrationSums::default();
        sums.add_frame(&logits.values, logits.classes, &labels, 1.0);
        let mut sample = FitSample::new(logits.classes);
        sample.add_frame(&logits.values, &labels, stride);
        let ignored = labels.iter().filter(|&&l| l == crate::metrics::IGNORE_LABEL).count();
        Ok(FirstPass { classes: logits.classes, sums, sample, ignored: ignored as u64 })
    })?;
    let first_seconds = started.elapsed().as_secs_f64();

    let classes = first[0].classes;
    let mut before = CalibrationSums::default();
    let mut sample = FitSample::new(classes);
    let mut ignored = 0;
    for (part, frame) in first.into_iter().zip(&dataset.frames) {
        if part.classes != classes {
            bail!(
                "{}: expected {classes} classes like the first frame, found {}",
                frame.input.display(),
                part.classes
            );
        }
        let mut part_sample = part.sample;
        before.merge(&part.sums);
        sample.append(&mut part_sample);
        ignored += part.ignored;
    }
    if sample.is_empty() {
        bail!("{}: expected labeled pixels to fit on, found none", dataset.description);
    }

    let fit_started = std::time::Instant::now();
    let fit = fit_temperature(
        &sample,
        LOWER_TEMPERATURE,
        UPPER_TEMPERATURE,
        LOG_TOLERANCE,
        dataset.threads,
    );
    let fit_seconds = fit_started.elapsed().as_secs_f64();
    tracing::debug!(temperature = fit.temperature, evaluations = fit.evaluations, "fitted");
    if let Some(reason) = &fit.reason {
        tracing::warn!("temperature fit did not converge: {reason}");
    }

    // Pass 2: the same metrics at the fitted temperature.
    let second_started = std::time::Instant::now();
    let temperature = fit.temperature;
    let after_parts = dataset.map_frames(&dataset.frames, "rescore", |logits, frame| {
        let labels = frame.read_label(&logits)?;
        let mut sums = CalibrationSums::default();
        sums.add_frame(&logits.values, logits.classes, &labels, temperature);
        Ok(sums)
    })?;
    let mut after = CalibrationSums::default();
    for part in &after_parts {
        after.merge(part);
    }
    let second_seconds = second_started.elapsed().as_secs_f64();

    Ok(Calibrated {
        frames: dataset.frames.len(),
        ignored,
        stride,
        fit_pixels: sample.len(),
        fit,
        before: before.summary(),
        after: after.summary(),
        seconds: [first_seconds, fit_seconds, second_seconds],
    })
}

/// The outcome of a run.
pub(crate) struct Calibrated {
    frames: usize,
    ignored: u64,
    stride: usize,
    fit_pixels: usize,
    /// The temperature fit.
    pub(crate) fit: TemperatureFit,
    /// Metrics at `T = 1`.
    pub(crate) before: Result<CalibrationSummary, Undefined>,
    /// Metrics at the fitted temperature.
    pub(crate) after: Result<CalibrationSummary, Undefined>,
    /// Seconds of the first pass, the fit and the second pass.
    seconds: [f64; 3],
}

impl Calibrated {
    /// The reliability diagram: accuracy against mean confidence of each non-empty bin, at
    /// `T = 1` and at the fitted temperature, with the diagonal of perfect calibration.
    pub(crate) fn reliability_chart(&self) -> LineChart {
        let bins = |summary: &Result<CalibrationSummary, Undefined>| -> Vec<(f64, f64)> {
            summary
                .as_ref()
                .map_or(vec![], |s| s.bins.iter().map(|b| (b.confidence, b.accuracy)).collect())
        };
        LineChart {
            title: "Reliability diagram (15 bins of top-label confidence)".into(),
            x_label: "mean confidence in bin".into(),
            y_label: "accuracy in bin".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            series: vec![
                Series { name: "raw (T = 1)".into(), points: bins(&self.before) },
                Series {
                    name: format!("T = {:.3}", self.fit.temperature),
                    points: bins(&self.after),
                },
            ],
            diagonal: true,
        }
    }

    fn to_json(&self, data: &str) -> Value {
        let mut top = Map::new();
        top.insert("temperature".into(), json!(self.fit.temperature));
        insert_calibration(&mut top, &self.after);
        let mut before = Map::new();
        insert_calibration(&mut before, &self.before);
        top.insert("before".into(), Value::Object(before));
        top.insert("frames".into(), json!(self.frames));
        top.insert("pixels".into(), json!(self.after.as_ref().map_or(0, |c| c.pixels)));
        top.insert("ignored_pixels".into(), json!(self.ignored));
        top.insert("data".into(), json!(data));
        top.insert("in_sample".into(), json!(true));
        top.insert(
            "fit".into(),
            json!({
                "method": "golden-section search on ln T for the least mean pixel NLL",
                "bounds": [LOWER_TEMPERATURE, UPPER_TEMPERATURE],
                "pixel_stride": self.stride,
                "pixels": self.fit_pixels,
                "nll": self.fit.nll,
                "nll_at_one": self.fit.nll_at_one,
                "evaluations": self.fit.evaluations,
                "converged": self.fit.converged,
                "reason": self.fit.reason,
            }),
        );
        top.insert(
            "seconds".into(),
            json!({
                "first_pass": self.seconds[0],
                "fit": self.seconds[1],
                "second_pass": self.seconds[2],
            }),
        );
        Value::Object(top)
    }

    fn print(&self, data: &str) {
        let pixels = self.after.as_ref().map_or(0, |c| c.pixels);
        println!(
            "{} frames of {data}: {pixels} labeled pixels ({} ignored)",
            self.frames, self.ignored
        );
        println!(
            "temperature {:.4} (NLL on every {}th labeled pixel, {} pixels: {:.4} at T = 1, \
             {:.4} at T; {} evaluations)",
            self.fit.temperature,
            self.stride,
            self.fit_pixels,
            self.fit.nll_at_one,
            self.fit.nll,
            self.fit.evaluations
        );
        if let Some(reason) = &self.fit.reason {
            println!("warning: the fit did not converge: {reason}");
        }

        println!(
            "{:<10} {:>10} {:>10}",
            "metric",
            "T = 1",
            format!("T = {:.3}", self.fit.temperature)
        );
        let names = CalibrationSummary::NAMES;
        let before = self.before.as_ref().ok().map(CalibrationSummary::values);
        let after = self.after.as_ref().ok().map(CalibrationSummary::values);
        for (i, name) in names.iter().enumerate() {
            let cell = |c: Option<[f64; 5]>| c.map_or("-".to_string(), |c| format!("{:.4}", c[i]));
            println!("{name:<10} {:>10} {:>10}", cell(before), cell(after));
        }
        println!(
            "(in-sample: the temperature was fitted on these frames; ECE and MCE over 15 bins \
             (a, b] of top-label confidence)"
        );
        println!(
            "time: {:.1} s first pass, {:.1} s fit, {:.1} s second pass",
            self.seconds[0], self.seconds[1], self.seconds[2]
        );
    }
}
