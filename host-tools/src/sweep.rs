//! `qualm sweep`: how the model and its uncertainty behave as the labeled frames are corrupted
//! in memory (Gaussian noise, blur, brightness, JPEG quality) at a few severities: accuracy,
//! ECE, the mean of each frame statistic, and the share of frames the gate keeps.
//!
//! Each frame is decoded once and corrupted on its worker thread; the noise is seeded per
//! frame, corruption and severity, so the result does not depend on the thread count.

use std::io::Cursor;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, RgbImage, imageops};
use qualm_core::{FrameStats, Gate, Statistic, StatsConfig, Temperature};
use qualm_daemon::calibration::Calibration;
use qualm_daemon::card::ModelCard;
use serde_json::{Map, Value, json};

use crate::evaluate::{analyze_logits, insert_calibration};
use crate::labeled::DataArgs;
use crate::metrics::{CalibrationSummary, CalibrationSums};

/// Highest severity; 0 is the clean frame.
pub const MAX_SEVERITY: u8 = 3;

/// Keep share of clean frames that sets the gate when no calibration is given: the gate keeps
/// frames beyond the 90th percentile of the clean frames' statistic.
const CLEAN_PERCENTILE: f64 = 0.9;

/// A corruption applied to a frame in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Corruption {
    /// Gaussian noise added to every channel, sigma 8, 16, 32 (8-bit levels).
    GaussianNoise,
    /// Gaussian blur, sigma 0.8, 1.6, 3.0 pixels.
    GaussianBlur,
    /// Brighter: 38, 77, 115 levels added (0.15, 0.3, 0.45 of the range), clipped.
    Brightness,
    /// JPEG re-encoding at quality 30, 15, 7.
    Jpeg,
}

impl Corruption {
    /// Every corruption, in report order.
    pub const ALL: [Self; 4] =
        [Self::GaussianNoise, Self::GaussianBlur, Self::Brightness, Self::Jpeg];

    /// The name in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GaussianNoise => "gaussian-noise",
            Self::GaussianBlur => "gaussian-blur",
            Self::Brightness => "brightness",
            Self::Jpeg => "jpeg",
        }
    }

    /// The parameter at `severity` (1 to [`MAX_SEVERITY`]) in words.
    pub fn parameter(self, severity: u8) -> String {
        let i = usize::from(severity.clamp(1, MAX_SEVERITY)) - 1;
        match self {
            Self::GaussianNoise => format!("sigma {} levels", [8, 16, 32][i]),
            Self::GaussianBlur => format!("sigma {} px", [0.8, 1.6, 3.0][i]),
            Self::Brightness => format!("+{} levels", [38, 77, 115][i]),
            Self::Jpeg => format!("quality {}", [30, 15, 7][i]),
        }
    }

    /// The corrupted image; severity 0 returns it unchanged. `seed` drives the noise.
    ///
    /// # Errors
    /// When JPEG encoding or decoding fails.
    pub fn apply(self, image: &RgbImage, severity: u8, seed: u64) -> Result<RgbImage> {
        if severity == 0 {
            return Ok(image.clone());
        }
        let i = usize::from(severity.min(MAX_SEVERITY)) - 1;
        Ok(match self {
            Self::GaussianNoise => add_noise(image, [8.0, 16.0, 32.0][i], seed),
            Self::GaussianBlur => imageops::blur(image, [0.8, 1.6, 3.0][i]),
            Self::Brightness => imageops::brighten(image, [38, 77, 115][i]),
            Self::Jpeg => {
                let mut bytes = Vec::new();
                JpegEncoder::new_with_quality(&mut bytes, [30, 15, 7][i])
                    .encode_image(image)
                    .context("cannot encode a frame as JPEG")?;
                image::load(Cursor::new(bytes), ImageFormat::Jpeg)
                    .context("cannot decode a re-encoded JPEG frame")?
                    .to_rgb8()
            }
        })
    }
}

/// A seeded generator (splitmix64), uniform in `[0, 1)`.
struct Random(u64);

impl Random {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / 2f64.powi(64)
    }

    /// Two independent standard normal draws (Box-Muller).
    fn normal_pair(&mut self) -> (f64, f64) {
        let radius = (-2.0 * (1.0 - self.next()).ln()).sqrt();
        let angle = std::f64::consts::TAU * self.next();
        (radius * angle.cos(), radius * angle.sin())
    }
}

/// `image` with independent Gaussian noise of `sigma` levels on every channel, rounded and
/// clipped to `[0, 255]`.
fn add_noise(image: &RgbImage, sigma: f64, seed: u64) -> RgbImage {
    let mut random = Random(seed);
    let mut noisy = image.clone();
    for pair in noisy.chunks_mut(2) {
        let (a, b) = random.normal_pair();
        for (value, noise) in pair.iter_mut().zip([a, b]) {
            *value = (f64::from(*value) + sigma * noise).round().clamp(0.0, 255.0) as u8;
        }
    }
    noisy
}

/// The seed of one frame's corruption, from the frame's stem (FNV-1a) so that it depends
/// neither on the thread nor on the other frames of the folder.
fn frame_seed(seed: u64, stem: &str, corruption: Corruption, severity: u8) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in stem.bytes().chain([corruption as u8, severity]) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Arguments of `qualm sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Model card (TOML) to run.
    #[arg(long, value_name = "CARD")]
    model: PathBuf,

    /// Labeled folder: images/ (PNG or JPEG) and labels/ (8-bit grayscale PNG of class ids,
    /// 255 = ignore) with the same file stems.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Calibration file for the model: its temperature, uncertain level and gate [default:
    /// temperature 1, level 0.5, and a gate on --statistic at the 90th percentile of the clean
    /// frames].
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,

    /// Severities to apply, comma-separated, from 0 (clean) to 3.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    severities: Vec<u8>,

    /// Corruptions to apply, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    corruptions: Vec<Corruption>,

    /// Statistic of the gate when no --calibration is given.
    #[arg(long, default_value = "mean_entropy")]
    statistic: Statistic,

    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Worker threads, each with its own model instance [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one corrupted version of one frame gave.
struct Cell {
    sums: CalibrationSums,
    stats: FrameStats,
}

/// One row of the report: a corruption at a severity, over all frames.
struct Row {
    corruption: Option<Corruption>,
    severity: u8,
    sums: CalibrationSums,
    stats: Vec<FrameStats>,
}

impl Row {
    fn name(&self) -> &'static str {
        self.corruption.map_or("clean", Corruption::as_str)
    }

    /// Mean of `statistic` over the frames where it is not NaN, and how many those are.
    fn mean(&self, statistic: Statistic) -> (Option<f64>, usize) {
        let values: Vec<f64> = self
            .stats
            .iter()
            .map(|s| f64::from(statistic.value(s)))
            .filter(|v| !v.is_nan())
            .collect();
        let mean = (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
        (mean, values.len())
    }

    fn keep_rate(&self, gate: Gate) -> f64 {
        let kept = self.stats.iter().filter(|s| gate.decide(s).is_keep()).count();
        kept as f64 / self.stats.len().max(1) as f64
    }
}

/// Runs `qualm sweep`.
///
/// # Errors
/// When an argument is invalid, the calibration belongs to another model, or a frame, label or
/// the model cannot be read.
pub fn run(args: &SweepArgs) -> Result<()> {
    if let Some(&severity) = args.severities.iter().find(|&&s| s > MAX_SEVERITY) {
        bail!("expected --severities from 0 to {MAX_SEVERITY}, found {severity}");
    }
    let corruptions = if args.corruptions.is_empty() {
        Corruption::ALL.to_vec()
    } else {
        args.corruptions.clone()
    };
    let calibration = match &args.calibration {
        Some(path) => {
            let calibration = Calibration::load(path)?;
            calibration.check_model(path, &ModelCard::load(&args.model)?.sha256)?;
            Some(calibration)
        }
        None => None,
    };
    let config = match &calibration {
        Some(c) => StatsConfig {
            temperature: c.temperature()?,
            uncertain_level: c.uncertain_level,
            ..StatsConfig::default()
        },
        None => StatsConfig { temperature: Temperature::ONE, ..StatsConfig::default() },
    };
    let data = DataArgs {
        model: Some(args.model.clone()),
        data: Some(args.data.clone()),
        logits: None,
        labels: None,
        threads: args.threads,
    };
    let dataset = data.to_dataset()?;

    // The clean frame first, then every corruption at every severity.
    let mut versions: Vec<(Option<Corruption>, u8)> = vec![(None, 0)];
    for &corruption in &corruptions {
        versions.extend(args.severities.iter().map(|&s| (Some(corruption), s)));
    }
    let temperature = f64::from(config.temperature.get());
    let frames = dataset.map_images(&dataset.frames, "sweep", |model, image, frame| {
        let mut cells = Vec::with_capacity(versions.len());
        for &(corruption, severity) in &versions {
            let corrupted = match corruption {
                Some(c) => {
                    c.apply(&image, severity, frame_seed(args.seed, &frame.stem, c, severity))?
                }
                None => image.clone(),
            };
            let logits = model.logits(&corrupted, &frame.input)?;
            let labels = frame.read_label(&logits)?;
            let mut sums = CalibrationSums::default();
            sums.add_frame(&logits.values, logits.classes, &labels, temperature);
            let (stats, _) = analyze_logits(&logits, &config)
                .with_context(|| format!("{}: cannot analyze", frame.input.display()))?;
            cells.push(Cell { sums, stats });
        }
        Ok(cells)
    })?;

    // Regroup frame-major cells into one row per version.
    let mut rows: Vec<Row> = versions
        .iter()
        .map(|&(corruption, severity)| Row {
            corruption,
            severity,
            sums: CalibrationSums::default(),
            stats: Vec::with_capacity(frames.len()),
        })
        .collect();
    for cells in frames {
        for (row, cell) in rows.iter_mut().zip(cells) {
            row.sums.merge(&cell.sums);
            row.stats.push(cell.stats);
        }
    }

    let (gate, gate_source) = match (&calibration, &args.calibration) {
        (Some(c), Some(path)) => (c.gate, format!("calibration file {}", path.display())),
        _ => clean_gate(&rows[0], args.statistic)?,
    };
    let report = Report { rows, gate, gate_source, temperature, frames: dataset.frames.len() };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(args))?);
    } else {
        report.print(args);
    }
    Ok(())
}

/// A gate on `statistic` at the 90th percentile of the clean frames (the smallest value whose
/// empirical CDF reaches 0.9, in the uncertain orientation), said so.
fn clean_gate(clean: &Row, statistic: Statistic) -> Result<(Gate, String)> {
    let mut uncertainties: Vec<f32> = clean
        .stats
        .iter()
        .map(|s| statistic.uncertainty(statistic.value(s)))
        .filter(|v| !v.is_nan())
        .collect();
    if uncertainties.is_empty() {
        bail!("expected clean frames with a value of {statistic} to set the gate, found none");
    }
    uncertainties.sort_by(f32::total_cmp);
    let n = uncertainties.len();
    let rank = ((CLEAN_PERCENTILE * n as f64).ceil() as usize).clamp(1, n);
    let threshold = statistic.uncertainty(uncertainties[rank - 1]);
    let source = format!(
        "no calibration given: {statistic} at the 90th percentile of the {n} clean frames \
         (temperature 1)"
    );
    Ok((Gate { statistic, threshold }, source))
}

/// The whole sweep.
struct Report {
    rows: Vec<Row>,
    gate: Gate,
    gate_source: String,
    temperature: f64,
    frames: usize,
}

impl Report {
    fn to_json(&self, args: &SweepArgs) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut object = Map::new();
                object.insert("corruption".into(), json!(row.name()));
                object.insert("severity".into(), json!(row.severity));
                let parameter =
                    row.corruption.filter(|_| row.severity > 0).map(|c| c.parameter(row.severity));
                object.insert("parameter".into(), json!(parameter));
                let summary = row.sums.summary();
                insert_calibration(&mut object, &summary);
                object.remove("reliability");
                let means: Map<String, Value> = Statistic::ALL
                    .iter()
                    .map(|&s| (s.as_str().to_string(), json!(row.mean(s).0)))
                    .collect();
                object.insert("means".into(), Value::Object(means));
                object.insert("keep_rate".into(), json!(row.keep_rate(self.gate)));
                Value::Object(object)
            })
            .collect();
        json!({
            "model": args.model.display().to_string(),
            "data": args.data.display().to_string(),
            "frames": self.frames,
            "temperature": self.temperature,
            "seed": args.seed,
            "gate": {
                "statistic": self.gate.statistic.as_str(),
                "threshold": self.gate.threshold,
                "source": self.gate_source,
            },
            "rows": rows,
        })
    }

    fn print(&self, args: &SweepArgs) {
        println!(
            "{} frames of {} with {}, temperature {}",
            self.frames,
            args.data.display(),
            args.model.display(),
            self.temperature
        );
        println!(
            "gate: {} threshold {} ({})",
            self.gate.statistic, self.gate.threshold, self.gate_source
        );
        let gate_name = self.gate.statistic.as_str();
        println!(
            "{:<15} {:>3} {:<18} {:>8} {:>7} {:>12} {:>16} {:>10}",
            "corruption",
            "sev",
            "parameter",
            "accuracy",
            "ece",
            "mean_entropy",
            "mean_max_softmax",
            "keep rate"
        );
        for row in &self.rows {
            let summary = row.sums.summary().ok();
            let metric = |f: fn(&CalibrationSummary) -> f64| {
                summary.as_ref().map_or("-".to_string(), |s| format!("{:.4}", f(s)))
            };
            let mean = |s: Statistic| row.mean(s).0.map_or("-".to_string(), |m| format!("{m:.4}"));
            let parameter = row
                .corruption
                .filter(|_| row.severity > 0)
                .map_or(String::new(), |c| c.parameter(row.severity));
            println!(
                "{:<15} {:>3} {:<18} {:>8} {:>7} {:>12} {:>16} {:>10.3}",
                row.name(),
                row.severity,
                parameter,
                metric(|s| s.accuracy),
                metric(|s| s.ece),
                mean(Statistic::MeanEntropy),
                mean(Statistic::MeanMaxSoftmax),
                row.keep_rate(self.gate)
            );
        }
        println!(
            "(ECE over 15 bins (a, b] of top-label confidence; keep rate of the gate on \
             {gate_name}; --json gives the mean of every frame statistic)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(level: u8) -> RgbImage {
        RgbImage::from_pixel(64, 64, image::Rgb([level; 3]))
    }

    #[test]
    fn noise_has_the_stated_sigma_and_is_seeded() {
        let image = gray(128);
        let noisy = Corruption::GaussianNoise.apply(&image, 2, 7).unwrap();
        let values: Vec<f64> = noisy.as_raw().iter().map(|&v| f64::from(v)).collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 12,288 draws of sigma 16 (rounding adds 1/12 of variance): mean within 0.5, sd 2%.
        assert!((mean - 128.0).abs() < 0.5, "mean {mean}");
        assert!((sd - 16.0).abs() < 0.4, "sd {sd}");
        assert_eq!(noisy, Corruption::GaussianNoise.apply(&image, 2, 7).unwrap());
        assert_ne!(noisy, Corruption::GaussianNoise.apply(&image, 2, 8).unwrap());
    }

    #[test]
    fn severity_zero_is_the_clean_frame() {
        let image = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 3]));
        for corruption in Corruption::ALL {
            assert_eq!(corruption.apply(&image, 0, 1).unwrap(), image);
        }
    }

    #[test]
    fn brightness_adds_and_clips_and_blur_keeps_a_flat_frame() {
        let bright = Corruption::Brightness.apply(&gray(200), 1, 0).unwrap();
        assert!(bright.as_raw().iter().all(|&v| v == 238));
        let bright = Corruption::Brightness.apply(&gray(200), 3, 0).unwrap();
        assert!(bright.as_raw().iter().all(|&v| v == 255));
        let blurred = Corruption::GaussianBlur.apply(&gray(90), 3, 0).unwrap();
        assert!(blurred.as_raw().iter().all(|&v| v.abs_diff(90) <= 1));
    }

    #[test]
    fn jpeg_loses_detail_more_at_lower_quality() {
        let image = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([((x * 37 + y * 11) % 256) as u8, ((x * y) % 256) as u8, (y * 4) as u8])
        });
        let error = |severity| {
            let decoded = Corruption::Jpeg.apply(&image, severity, 0).unwrap();
            assert_eq!(decoded.dimensions(), image.dimensions());
            let raw = decoded.as_raw().iter().zip(image.as_raw());
            raw.map(|(&a, &b)| f64::from(a.abs_diff(b))).sum::<f64>()
        };
        assert!(error(1) > 0.0 && error(3) > error(1));
    }
}
