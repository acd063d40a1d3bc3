//! `qualm evaluate`: how well each uncertainty score flags wrong pixels, failed frames and
//! out-of-distribution frames on labeled data.
//!
//! Scores and frame statistics come from `qualm_core::analyze`, the code the camera runs;
//! the metrics from [`crate::metrics`]. Pixels are pooled over all frames before a metric is
//! taken (no per-frame averaging). Every uncertainty value is oriented so that larger means
//! less certain: low max-softmax, high entropy, low margin, high energy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use qualm_core::{
    FrameStats, Layout, OutputKind, OutputMap, OwnedFrameMaps, SCORES, Score, Statistic,
    StatsConfig, Temperature, analyze,
};
use serde_json::{Map, Value, json};

use crate::labeled::{DataArgs, Dataset, Frame, Logits};
use crate::metrics::{
    CalibrationSummary, CalibrationSums, Curves, IGNORE_LABEL, Metric, Ranking, Undefined, curves,
    ranking_metrics,
};

/// Arguments of `qualm evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Softmax temperature T > 0: logits are divided by it before every score and metric.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,

    /// A frame has failed when its mIoU is below this: the mean, over the classes present in
    /// its label or its prediction (TP + FP + FN > 0, label 255 ignored), of TP / (TP + FP +
    /// FN). Frames without a labeled pixel are left out of the frame metrics.
    #[arg(long, default_value_t = 0.5, value_name = "IOU")]
    failed_iou: f64,

    /// Also count a frame as failed when its pixel accuracy (labeled pixels) is below this
    /// [default: accuracy is not used].
    #[arg(long, value_name = "ACCURACY")]
    failed_accuracy: Option<f64>,

    /// Out-of-distribution frames (repeatable): a folder of images (in its images/ subfolder
    /// when there is one) with --model, of .npy logits with --logits. Each set is compared,
    /// frame by frame, with the labeled frames (OOD frames are the positive class).
    #[arg(long, value_name = "DIR")]
    ood: Vec<PathBuf>,

    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// Max-softmax at or above which a wrong pixel counts as confidently wrong.
pub const CONFIDENTLY_WRONG: f32 = 0.9;

/// What one labeled frame contributes.
pub(crate) struct LabeledFrame {
    /// Values of [`Statistic::ALL`] in order, over the whole frame (as the camera sees it).
    pub(crate) statistics: StatisticValues,
    /// Calibration sums of its labeled pixels.
    pub(crate) calibration: CalibrationSums,
    /// Scores of its labeled pixels, in [`Score`] order.
    pub(crate) scores: Vec<[f32; SCORES]>,
    /// Whether each of those pixels is predicted wrong.
    pub(crate) errors: Vec<bool>,
    /// Confusion counts `[label, prediction]` row-major, `classes x classes`.
    pub(crate) confusion: Vec<u64>,
    /// Classes of the frame's logits.
    pub(crate) classes: usize,
    /// Pixels labeled 255.
    pub(crate) ignored: u64,
    /// Wrong pixels with max-softmax at least [`CONFIDENTLY_WRONG`].
    pub(crate) confidently_wrong: u64,
}

/// Name of a per-pixel score in reports.
pub fn score_name(score: Score) -> &'static str {
    match score {
        Score::MaxSoftmax => "max_softmax",
        Score::Entropy => "entropy",
        Score::Margin => "margin",
        Score::Energy => "energy",
    }
}

/// The frame statistic that is the frame mean of `score`; its orientation is the score's.
pub fn mean_statistic(score: Score) -> Statistic {
    match score {
        Score::MaxSoftmax => Statistic::MeanMaxSoftmax,
        Score::Entropy => Statistic::MeanEntropy,
        Score::Margin => Statistic::MeanMargin,
        Score::Energy => Statistic::MeanEnergy,
    }
}

/// Analyzes CHW logits with `qualm_core`, returning the frame statistics and the per-pixel
/// maps (classes and scores).
///
/// # Errors
/// When the logits do not form a valid map.
pub fn analyze_logits(
    logits: &Logits,
    config: &StatsConfig,
) -> Result<(FrameStats, OwnedFrameMaps)> {
    let Logits { values, classes, height, width } = logits;
    let map = OutputMap::try_new(
        &values[..],
        *classes,
        *height,
        *width,
        Layout::Chw,
        OutputKind::Logits,
    )?;
    let mut maps = OwnedFrameMaps::new(map.pixels());
    let stats = analyze(&map, config, maps.as_maps())?;
    Ok((stats, maps))
}

/// The values of [`Statistic::ALL`] in `stats`, in that order.
pub fn statistic_values(stats: &FrameStats) -> StatisticValues {
    Statistic::ALL.map(|statistic| statistic.value(stats))
}

/// The values of [`Statistic::ALL`] for one frame, in that order.
pub type StatisticValues = [f32; Statistic::ALL.len()];

/// What the camera would measure on a labeled frame, and how good the prediction was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameOutcome {
    /// The frame statistics, over the whole frame.
    pub statistics: StatisticValues,
    /// mIoU over labeled pixels (see [`miou_and_accuracy`]); `None` without any.
    pub miou: Option<f64>,
    /// Pixel accuracy over the same pixels.
    pub accuracy: Option<f64>,
}

/// The frame statistics of a labeled frame and the quality of its prediction.
///
/// # Errors
/// When the label cannot be read or does not fit, or the logits do not form a valid map.
pub fn frame_outcome(logits: &Logits, frame: &Frame, config: &StatsConfig) -> Result<FrameOutcome> {
    let labels = frame.read_label(logits)?;
    let (stats, maps) = analyze_logits(logits, config)
        .with_context(|| format!("{}: cannot analyze", frame.input.display()))?;

    let classes = logits.classes;
    let mut confusion = vec![0u64; classes * classes];
    for (index, &label) in labels.iter().enumerate() {
        if label != IGNORE_LABEL {
            let predicted = usize::from(maps.classes[index]);
            confusion[usize::from(label) * classes + predicted] += 1;
        }
    }
    let quality = miou_and_accuracy(&confusion, classes);
    Ok(FrameOutcome {
        statistics: statistic_values(&stats),
        miou: quality.map(|(miou, _)| miou),
        accuracy: quality.map(|(_, accuracy)| accuracy),
    })
}

fn score_labeled(logits: Logits, frame: &Frame, config: &StatsConfig) -> Result<LabeledFrame> {
    let labels = frame.read_label(&logits)?;
    let (stats, maps) = analyze_logits(&logits, config)
        .with_context(|| format!("{}: cannot analyze", frame.input.display()))?;

    let classes = logits.classes;
    let mut scored = LabeledFrame {
        statistics: statistic_values(&stats),
        calibration: CalibrationSums::default(),
        scores: Vec::with_capacity(labels.len()),
        errors: Vec::with_capacity(labels.len()),
        confusion: vec![0; classes * classes],
        classes,
        ignored: 0,
        confidently_wrong: 0,
    };
    for (index, &label) in labels.iter().enumerate() {
        if label == IGNORE_LABEL {
            scored.ignored += 1;
            continue;
        }
        let scores = maps.scores[index];
        let predicted = maps.classes[index];
        let wrong = predicted != label;
        let confident = scores[Score::MaxSoftmax.index()] >= CONFIDENTLY_WRONG;
        scored.confidently_wrong += u64::from(wrong && confident);
        scored.scores.push(scores);
        scored.errors.push(wrong);
        scored.confusion[usize::from(label) * classes + usize::from(predicted)] += 1;
    }
    let temperature = f64::from(config.temperature.get());
    scored.calibration.add_frame(&logits.values, classes, &labels, temperature);
    Ok(scored)
}

/// mIoU and pixel accuracy of a `classes x classes` confusion matrix `[label, prediction]`;
/// `None` when it holds no pixel.
pub fn miou_and_accuracy(confusion: &[u64], classes: usize) -> Option<(f64, f64)> {
    let total: u64 = confusion.iter().sum();
    if total == 0 {
        return None;
    }
    let mut iou_sum = 0.0;
    let mut present = 0usize;
    let mut correct = 0u64;
    for c in 0..classes {
        let true_positives = confusion[c * classes + c];
        let labeled: u64 = confusion[c * classes..(c + 1) * classes].iter().sum();
        let predicted: u64 = (0..classes).map(|row| confusion[row * classes + c]).sum();
        // IoU = TP / (TP + FP + FN) = TP / (labeled + predicted - TP).
        let union = labeled + predicted - true_positives;
        if union > 0 {
            iou_sum += true_positives as f64 / union as f64;
            present += 1;
        }
        correct += true_positives;
    }
    Some((iou_sum / present as f64, correct as f64 / total as f64))
}

/// Validated settings of a run.
pub(crate) struct Config {
    /// The labeled frames.
    pub(crate) dataset: Dataset,
    /// Statistics settings, with the temperature.
    pub(crate) stats: StatsConfig,
    /// Frame mIoU below which a frame has failed.
    pub(crate) failed_iou: f64,
    /// Pixel accuracy below which a frame has failed too, when set.
    pub(crate) failed_accuracy: Option<f64>,
    /// Out-of-distribution sets: name and frames.
    pub(crate) ood: Vec<(String, Vec<Frame>)>,
}

impl EvaluateArgs {
    fn to_config(&self) -> Result<Config> {
        let temperature = Temperature::try_new(self.temperature).map_err(|found| {
            anyhow::anyhow!("expected --temperature to be a finite number above 0, found {found}")
        })?;
        if !(0.0..=1.0).contains(&self.failed_iou) {
            bail!("expected --failed-iou in [0, 1], found {}", self.failed_iou);
        }
        if let Some(accuracy) = self.failed_accuracy.filter(|a| !(0.0..=1.0).contains(a)) {
            bail!("expected --failed-accuracy in [0, 1], found {accuracy}");
        }

        let dataset = self.data.to_dataset()?;
        let ood = ood_sets(&dataset, &self.ood)?;
        let stats = StatsConfig { temperature, ..StatsConfig::default() };
        let (failed_iou, failed_accuracy) = (self.failed_iou, self.failed_accuracy);
        Ok(Config { dataset, stats, failed_iou, failed_accuracy, ood })
    }
}

/// The unlabeled frames of each `--ood` folder, named by the folder.
///
/// # Errors
/// When a folder cannot be read, holds no frame, or two folders share a name.
pub(crate) fn ood_sets(dataset: &Dataset, dirs: &[PathBuf]) -> Result<Vec<(String, Vec<Frame>)>> {
    let mut ood: Vec<(String, Vec<Frame>)> = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        if ood.iter().any(|(other, _)| *other == name) {
            bail!(
                "{}: expected --ood folders of distinct names, found {name} twice",
                dir.display()
            );
        }
        ood.push((name, dataset.unlabeled(dir)?));
    }
    Ok(ood)
}

/// Runs `qualm evaluate`.
///
/// # Errors
/// When an argument is invalid, or a frame, label or model cannot be read or does not fit.
pub fn run(args: &EvaluateArgs) -> Result<()> {
    let config = args.to_config()?;
    let (report, _) = measure(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json(&config))?);
    } else {
        report.print(&config);
    }
    Ok(())
}

/// Scores every labeled and OOD frame of `config` and measures the metrics; returns them with
/// the labeled frames' contributions, in frame order.
///
/// # Errors
/// When a frame, label or model cannot be read or does not fit.
pub(crate) fn measure(config: &Config) -> Result<(Report, Vec<LabeledFrame>)> {
    let dataset = &config.dataset;
    let started = std::time::Instant::now();
    tracing::info!(frames = dataset.frames.len(), threads = dataset.threads, "evaluating");

    let frames = dataset.map_frames(&dataset.frames, "evaluate", |logits, frame| {
        score_labeled(logits, frame, &config.stats)
    })?;
    let classes = frames[0].classes;
    if let Some((frame, found)) =
        dataset.frames.iter().zip(&frames).find(|(_, f)| f.classes != classes)
    {
        bail!(
            "{}: expected {classes} classes like the first frame, found {}",
            frame.input.display(),
            found.classes
        );
    }

    let mut ood = Vec::new();
    for (name, ood_frames) in &config.ood {
        let values = dataset.map_frames(ood_frames, "ood", |logits, frame| {
            let (stats, _) = analyze_logits(&logits, &config.stats)
                .with_context(|| format!("{}: cannot analyze", frame.input.display()))?;
            Ok(statistic_values(&stats))
        })?;
        ood.push((name.clone(), values));
    }

    let report = Report::new(config, &frames, &ood);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "evaluation done");
    Ok((report, frames))
}

/// Everything measured, before formatting.
pub(crate) struct Report {
    pub(crate) frames: usize,
    pub(crate) pixels: u64,
    pub(crate) ignored: u64,
    pub(crate) calibration: Result<CalibrationSummary, Undefined>,
    pub(crate) miou: Option<f64>,
    /// One per [`Score::ALL`].
    pub(crate) pixel: Vec<Ranking>,
    /// ROC and risk-coverage curves of the pixels, one per [`Score::ALL`].
    pub(crate) curves: Vec<Curves>,
    /// Frames with a labeled pixel, and of them the failed ones.
    pub(crate) judged_frames: usize,
    pub(crate) failed_frames: usize,
    /// One per [`Statistic::ALL`]: failed frames against the others.
    pub(crate) failed: Vec<Ranking>,
    /// Per OOD set: its frame count and one ranking per [`Statistic::ALL`].
    pub(crate) ood: Vec<(String, usize, Vec<Ranking>)>,
}

impl Report {
    fn new(
        config: &Config,
        frames: &[LabeledFrame],
        ood: &[(String, Vec<StatisticValues>)],
    ) -> Self {
        let mut calibration = CalibrationSums::default();
        let classes = frames[0].classes;
        let mut confusion = vec![0u64; classes * classes];
        for frame in frames {
            calibration.merge(&frame.calibration);
            for (total, count) in confusion.iter_mut().zip(&frame.confusion) {
                *total += count;
            }
        }

        // Pooled pixels, one sort per score, the four on threads of their own.
        let pixel: Vec<(Ranking, Curves)> = std::thread::scope(|scope| {
            let handles: Vec<_> = Score::ALL
                .map(|score| {
                    scope.spawn(move || {
                        let statistic = mean_statistic(score);
                        let mut pairs: Vec<(f32, bool)> = frames
                            .iter()
                            .flat_map(|f| f.scores.iter().zip(&f.errors))
                            .map(|(s, &e)| (statistic.uncertainty(s[score.index()]), e))
                            .collect();
                        let ranking = ranking_metrics(&mut pairs);
                        (ranking, curves(&pairs))
                    })
                })
                .into_iter()
                .collect();
            handles.into_iter().map(|h| h.join().expect("metric worker panicked")).collect()
        });
        let (pixel, pixel_curves): (Vec<Ranking>, Vec<Curves>) = pixel.into_iter().unzip();

        // Failed frames: mIoU (or, when asked, accuracy) below target.
        let frame_failed: Vec<Option<bool>> = frames
            .iter()
            .map(|f| {
                let (miou, accuracy) = miou_and_accuracy(&f.confusion, f.classes)?;
                let low_accuracy = config.failed_accuracy.is_some_and(|a| accuracy < a);
                Some(miou < config.failed_iou || low_accuracy)
            })
            .collect();
        let judged: Vec<(&LabeledFrame, bool)> = frames
            .iter()
            .zip(&frame_failed)
            .filter_map(|(f, failed)| Some((f, (*failed)?)))
            .collect();
        let failed = (0..Statistic::ALL.len())
            .map(|i| {
                let statistic = Statistic::ALL[i];
                let mut pairs: Vec<(f32, bool)> = judged
                    .iter()
                    .map(|(f, failed)| (statistic.uncertainty(f.statistics[i]), *failed))
                    .collect();
                ranking_metrics(&mut pairs)
            })
            .collect();

        let ood = ood
            .iter()
            .map(|(name, values)| {
                let rankings = (0..Statistic::ALL.len())
                    .map(|i| {
                        let statistic = Statistic::ALL[i];
                        let inside = frames.iter().map(|f| (f.statistics[i], false));
                        let outside = values.iter().map(|v| (v[i], true));
                        let mut pairs: Vec<(f32, bool)> = inside
                            .chain(outside)
                            .map(|(value, ood)| (statistic.uncertainty(value), ood))
                            .collect();
                        ranking_metrics(&mut pairs)
                    })
                    .collect();
                (name.clone(), values.len(), rankings)
            })
            .collect();

        Self {
            frames: frames.len(),
            pixels: calibration.pixels,
            ignored: frames.iter().map(|f| f.ignored).sum(),
            calibration: calibration.summary(),
            miou: miou_and_accuracy(&confusion, classes).map(|(miou, _)| miou),
            pixel,
            curves: pixel_curves,
            judged_frames: judged.len(),
            failed_frames: judged.iter().filter(|(_, failed)| *failed).count(),
            failed,
            ood,
        }
    }

    /// What "failed" means, in words.
    pub(crate) fn failure_definition(config: &Config) -> String {
        let mut text = format!("frame mIoU below {}", config.failed_iou);
        if let Some(accuracy) = config.failed_accuracy {
            text.push_str(&format!(", or pixel accuracy below {accuracy}"));
        }
        text
    }

    /// The statistic of highest AUROC in `rankings` (one per [`Statistic::ALL`]), against
    /// frame-mean max-softmax; `separates` is false when even it is within [`CHANCE_MARGIN`]
    /// of chance.
    fn best_statistic(rankings: &[Ranking], positives: &str, negatives: &str) -> Value {
        let baseline = rankings[0].auroc;
        let best = Statistic::ALL
            .iter()
            .zip(rankings)
            .filter_map(|(s, r)| r.auroc.ok().map(|auroc| (s, auroc)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match (best, baseline) {
            (Some((statistic, auroc)), Ok(baseline)) => json!({
                "statistic": statistic.as_str(),
                "auroc": auroc,
                "separates": separates(auroc),
                "mean_max_softmax_auroc": baseline,
                "over_max_softmax": auroc - baseline,
            }),
            _ => json!({
                "statistic": null,
                "reason": baseline.err().unwrap_or(Undefined::Empty).describe(positives, negatives),
            }),
        }
    }

    /// The JSON object of `qualm evaluate --json`.
    pub(crate) fn to_json(&self, config: &Config) -> Value {
        let mut top = Map::new();
        top.insert("frames".into(), json!(self.frames));
        top.insert("pixels".into(), json!(self.pixels));
        top.insert("ignored_pixels".into(), json!(self.ignored));
        top.insert("temperature".into(), json!(config.stats.temperature.get()));
        top.insert("data".into(), json!(config.dataset.description));
        insert_calibration(&mut top, &self.calibration);
        top.insert("miou".into(), json!(self.miou));
        top.insert(
            "positive_class".into(),
            json!({
                "pixel": "error pixels (top-1 class differs from the label)",
                "frame": format!("failed frames ({})", Self::failure_definition(config)),
                "ood": "out-of-distribution frames",
            }),
        );
        top.insert(
            "failed_frames".into(),
            json!({
                "definition": Self::failure_definition(config),
                "failed": self.failed_frames,
                "frames": self.judged_frames,
                "without_labeled_pixels": self.frames - self.judged_frames,
            }),
        );

        let mut scores = Map::new();
        for (score, ranking) in Score::ALL.iter().zip(&self.pixel) {
            let statistic = mean_statistic(*score);
            let index = Statistic::ALL.iter().position(|s| *s == statistic).unwrap_or(0);
            let mut frame = frame_json(&self.failed[index], "failed frames", "passed frames");
            frame.insert("statistic".into(), json!(statistic.as_str()));
            frame.insert("ood".into(), self.ood_json(index));
            scores.insert(
                score_name(*score).into(),
                json!({ "pixel": pixel_json(ranking), "frame": frame }),
            );
        }
        top.insert("scores".into(), Value::Object(scores));

        let statistics: Map<String, Value> = Statistic::ALL
            .iter()
            .enumerate()
            .map(|(i, statistic)| {
                let failed = frame_json(&self.failed[i], "failed frames", "passed frames");
                let value = json!({ "failed": failed, "ood": self.ood_json(i) });
                (statistic.as_str().to_string(), value)
            })
            .collect();
        top.insert("frame_statistics".into(), Value::Object(statistics));

        let sets: BTreeMap<&str, Value> = self
            .ood
            .iter()
            .map(|(name, frames, _)| (name.as_str(), json!({ "frames": frames })))
            .collect();
        top.insert("ood".into(), json!(sets));
        top.insert("best".into(), self.best_json());
        Value::Object(top)
    }

    /// The OOD AUROC of statistic `index` of [`Statistic::ALL`], one entry per OOD set.
    fn ood_json(&self, index: usize) -> Value {
        let sets: Map<String, Value> = self
            .ood
            .iter()
            .map(|(name, _, r)| {
                let ood = frame_json(&r[index], "ood frames", "in-distribution frames");
                (name.clone(), Value::Object(ood))
            })
            .collect();
        Value::Object(sets)
    }

    /// The best score and statistics, against max-softmax.
    pub(crate) fn best_json(&self) -> Value {
        let baseline = self.pixel[0].auroc;
        let best_pixel = Score::ALL
            .iter()
            .zip(&self.pixel)
            .filter_map(|(s, r)| r.auroc.ok().map(|auroc| (s, auroc)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let pixel = match (best_pixel, baseline) {
            (Some((score, auroc)), Ok(baseline)) => json!({
                "score": score_name(*score),
                "auroc": auroc,
                "separates": separates(auroc),
                "max_softmax_auroc": baseline,
                "over_max_softmax": auroc - baseline,
            }),
            _ => json!({
                "score": null,
                "reason": baseline
                    .err()
                    .unwrap_or(Undefined::Empty)
                    .describe("error pixels", "correct pixels"),
            }),
        };
        let ood: Map<String, Value> = self
            .ood
            .iter()
            .map(|(name, _, rankings)| {
                let best = Self::best_statistic(rankings, "ood frames", "in-distribution frames");
                (name.clone(), best)
            })
            .collect();
        json!({
            "pixel": pixel,
            "frame": Self::best_statistic(&self.failed, "failed frames", "passed frames"),
            "ood": ood,
        })
    }

    fn print(&self, config: &Config) {
        println!(
            "{} frames, {} labeled pixels ({} ignored), temperature {}",
            self.frames,
            self.pixels,
            self.ignored,
            config.stats.temperature.get()
        );
        match &self.calibration {
            Ok(c) => println!(
                "accuracy {:.4}  mIoU {}  ECE {:.4}  MCE {:.4}  NLL {:.4}  Brier {:.4}",
                c.accuracy,
                self.miou.map_or("-".into(), |m| format!("{m:.4}")),
                c.ece,
                c.mce,
                c.nll,
                c.brier
            ),
            Err(e) => println!("calibration: {}", e.describe("labeled pixels", "labeled pixels")),
        }

        let errors = self.pixel.first().map_or(0, |r| r.positives);
        println!();
        println!("wrong pixels ({errors} of {}; errors are the positive class)", self.pixels);
        println!(
            "{:<14} {:>8} {:>10} {:>8} {:>8}",
            "score", "auroc", "aupr_error", "fpr95", "aurc"
        );
        for (score, r) in Score::ALL.iter().zip(&self.pixel) {
            println!(
                "{:<14} {:>8} {:>10} {:>8} {:>8}",
                score_name(*score),
                cell(r.auroc),
                cell(r.average_precision),
                cell(r.fpr_at_95_tpr),
                cell(r.aurc)
            );
        }

        println!();
        println!(
            "failed frames: {} of {} ({}); AUROC of each frame statistic, positive = failed{}",
            self.failed_frames,
            self.judged_frames,
            Self::failure_definition(config),
            self.ood
                .iter()
                .map(|(name, n, _)| format!(", or {name} ({n} frames)"))
                .collect::<String>()
        );
        let mut header = format!("{:<28} {:>8}", "statistic", "failed");
        for (name, _, _) in &self.ood {
            header.push_str(&format!(" {name:>16}"));
        }
        println!("{header}");
        for (i, statistic) in Statistic::ALL.iter().enumerate() {
            let mut line = format!("{:<28} {:>8}", statistic.as_str(), cell(self.failed[i].auroc));
            for (_, _, rankings) in &self.ood {
                line.push_str(&format!(" {:>16}", cell(rankings[i].auroc)));
            }
            println!("{line}");
        }

        println!();
        let best = self.best_json();
        let describe = |what: &str, value: &Value, key: &str| match value[key].as_str() {
            Some(name) if value["separates"] == false => println!(
                "best {what}: none separates (the best, {name}, has AUROC {:.4}, within \
                 {CHANCE_MARGIN} of chance)",
                value["auroc"].as_f64().unwrap_or(f64::NAN)
            ),
            Some(name) => println!(
                "best {what}: {name}, AUROC {:.4}, {:+.4} over max-softmax",
                value["auroc"].as_f64().unwrap_or(f64::NAN),
                value["over_max_softmax"].as_f64().unwrap_or(f64::NAN)
            ),
            None => println!("best {what}: none ({})", value["reason"].as_str().unwrap_or("")),
        };
        describe("pixel score", &best["pixel"], "score");
        describe("failed-frame statistic", &best["frame"], "statistic");
        for (name, _, _) in &self.ood {
            describe(&format!("{name} statistic"), &best["ood"][name], "statistic");
        }
    }
}

/// How far above chance (AUROC 0.5) the best score must rank to be called one that separates.
pub(crate) const CHANCE_MARGIN: f64 = 0.05;

/// Whether a best AUROC is more than [`CHANCE_MARGIN`] above chance. The best of several
/// scores is the largest AUROC, so one far below 0.5 would have been beaten by its own
/// reverse only if that were computed; this asks only whether the winner is any good.
pub(crate) fn separates(auroc: f64) -> bool {
    auroc > 0.5 + CHANCE_MARGIN
}

/// A metric as a table cell: 4 decimals, or `-` when undefined.
fn cell(metric: Metric) -> String {
    metric.map_or_else(|_| "-".to_string(), |v| format!("{v:.4}"))
}

/// Puts `key: value` in `object`, or `key: null` with the reason collected in `reasons`.
fn put(
    object: &mut Map<String, Value>,
    key: &str,
    metric: Metric,
    reasons: &mut Vec<String>,
    names: (&str, &str),
) {
    match metric {
        Ok(value) => object.insert(key.into(), json!(value)),
        Err(undefined) => {
            let reason = undefined.describe(names.0, names.1);
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
            object.insert(key.into(), Value::Null)
        }
    };
}

fn finish(mut object: Map<String, Value>, reasons: Vec<String>) -> Map<String, Value> {
    if !reasons.is_empty() {
        object.insert("reason".into(), json!(reasons.join("; ")));
    }
    object
}

fn pixel_json(r: &Ranking) -> Value {
    let names = ("error pixels", "correct pixels");
    let mut object = Map::new();
    let mut reasons = Vec::new();
    put(&mut object, "auroc", r.auroc, &mut reasons, names);
    put(&mut object, "aupr_error", r.average_precision, &mut reasons, names);
    put(&mut object, "fpr_at_95_tpr", r.fpr_at_95_tpr, &mut reasons, names);
    put(&mut object, "aurc", r.aurc, &mut reasons, names);
    object.insert("errors".into(), json!(r.positives));
    object.insert("correct".into(), json!(r.negatives));
    Value::Object(finish(object, reasons))
}

fn frame_json(r: &Ranking, positives: &str, negatives: &str) -> Map<String, Value> {
    let mut object = Map::new();
    let mut reasons = Vec::new();
    put(&mut object, "auroc", r.auroc, &mut reasons, (positives, negatives));
    object.insert("positives".into(), json!(r.positives));
    object.insert("negatives".into(), json!(r.negatives));
    finish(object, reasons)
}

/// Puts accuracy, ECE, MCE, NLL, Brier and the reliability bins at the top of `object`
/// (null with a reason when no pixel was labeled).
pub fn insert_calibration(
    object: &mut Map<String, Value>,
    calibration: &Result<CalibrationSummary, Undefined>,
) {
    let keys = CalibrationSummary::NAMES;
    match calibration {
        Ok(c) => {
            for (key, value) in keys.iter().zip(c.values()) {
                object.insert((*key).into(), json!(value));
            }
            object.insert("reliability".into(), json!(c.bins));
        }
        Err(undefined) => {
            for key in keys {
                object.insert(key.into(), Value::Null);
            }
            let reason = undefined.describe("labeled pixels", "labeled pixels");
            object.insert("reason".into(), json!(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miou_counts_classes_present_in_label_or_prediction() {
        // Class 0: TP 2, FN 1 (labeled 0, predicted 1); class 1: TP 0, FP 1; class 2 absent.
        let confusion = [2, 1, 0, 0, 0, 0, 0, 0, 0];
        let (miou, accuracy) = miou_and_accuracy(&confusion, 3).unwrap();
        assert!((miou - (2.0 / 3.0 + 0.0) / 2.0).abs() < 1e-12);
        assert!((accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(miou_and_accuracy(&[0; 4], 2), None);
    }

    /// A best AUROC of 0.5 (every value tied) is no verdict; 1.0 is.
    #[test]
    fn best_statistic_at_chance_does_not_separate() {
        let tied = || ranking_metrics(&mut [(1.0, true), (1.0, false)]);
        let mut rankings: Vec<Ranking> = Statistic::ALL.iter().map(|_| tied()).collect();
        let best = Report::best_statistic(&rankings, "failed frames", "passed frames");
        assert_eq!(best["auroc"], 0.5);
        assert_eq!(best["separates"], false);

        rankings[3] = ranking_metrics(&mut [(2.0, true), (1.0, false)]);
        let best = Report::best_statistic(&rankings, "failed frames", "passed frames");
        assert_eq!(best["statistic"], Statistic::ALL[3].as_str());
        assert_eq!((best["auroc"].as_f64(), best["separates"].as_bool()), (Some(1.0), Some(true)));
        assert!(!separates(0.55) && separates(0.551));
    }
}
