//! `qualm report`: one self-contained HTML page that answers "which score can I trust on my
//! data?", with the charts written beside it as PNG and SVG.
//!
//! The page holds the calibration metrics before and after a temperature, the reliability
//! diagram, ROC and risk-coverage curves of the pixel scores, score histograms of right and
//! wrong pixels, the failed-frame and out-of-distribution tables, panels of the most uncertain
//! and the most confidently wrong frames (image, label, prediction, max-softmax map, entropy
//! map, error map), and a closing verdict in words. Every number comes from the same code as
//! `qualm calibrate` and `qualm evaluate`; the evaluation's JSON is embedded in the page.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use image::{Rgb, RgbImage};
use qualm_core::{Score, Statistic, StatsConfig, Temperature};
use serde_json::json;

use crate::calibrate::{Calibrated, calibrate};
use crate::evaluate::{
    CHANCE_MARGIN, Config, LabeledFrame, Report, analyze_logits, measure, ood_sets, score_name,
    separates,
};
use crate::labeled::{DataArgs, Frame, Logits};
use crate::metrics::{CalibrationSummary, IGNORE_LABEL, Metric};
use crate::plot::{LineChart, Series, density_steps};

/// Bins of the score histograms.
const HISTOGRAM_BINS: usize = 40;

/// Pixel stride of the temperature fit (as `qualm calibrate`'s default).
const FIT_STRIDE: usize = 4;

/// Arguments of `qualm report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Softmax temperature for the scores [default: fitted on these frames by least NLL, which
    /// the page then calls in-sample].
    #[arg(long)]
    temperature: Option<f32>,

    /// A frame has failed when its mIoU (classes present in its label or its prediction,
    /// label 255 ignored) is below this.
    #[arg(long, default_value_t = 0.5, value_name = "IOU")]
    failed_iou: f64,

    /// Out-of-distribution frames (repeatable), as for `qualm evaluate --ood`.
    #[arg(long, value_name = "DIR")]
    ood: Vec<PathBuf>,

    /// Corrupted copies of labeled frames (repeatable; images/ and labels/ like --data), to show
    /// how accuracy, calibration and the best score change; needs --model.
    #[arg(long, value_name = "DIR", requires = "model")]
    corrupt: Vec<PathBuf>,

    /// Frames shown in each panel section (most uncertain, most confidently wrong).
    #[arg(long, default_value_t = 4, value_name = "N")]
    panels: usize,

    /// HTML file to write; the charts go to a folder beside it named after it, with `_files`.
    #[arg(long, short, default_value = "qualm-report.html")]
    out: PathBuf,
}

/// One corrupted set's headline numbers.
struct CorruptRow {
    name: String,
    frames: usize,
    accuracy: Option<f64>,
    ece: Option<f64>,
    miou: Option<f64>,
    /// AUROC of wrong pixels per [`Score::ALL`].
    auroc: Vec<Metric>,
}

/// Runs `qualm report`.
///
/// # Errors
/// When an argument is invalid, data cannot be read or does not fit, or the page cannot be
/// written.
pub fn run(args: &ReportArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.failed_iou) {
        bail!("expected --failed-iou in [0, 1], found {}", args.failed_iou);
    }
    let dataset = args.data.to_dataset()?;

    // Calibration at T = 1 and at the fitted T; the scores use the given T or the fitted one.
    let calibrated = calibrate(&dataset, FIT_STRIDE)?;
    let temperature_value = args.temperature.unwrap_or(calibrated.fit.temperature as f32);
    let temperature = Temperature::try_new(temperature_value).map_err(|found| {
        anyhow::anyhow!("expected --temperature to be a finite number above 0, found {found}")
    })?;
    let stats = StatsConfig { temperature, ..StatsConfig::default() };
    let ood = ood_sets(&dataset, &args.ood)?;
    let config = Config { dataset, stats, failed_iou: args.failed_iou, failed_accuracy: None, ood };
    let (report, frames) = measure(&config)?;

    let mut corrupt = Vec::new();
    for dir in &args.corrupt {
        corrupt.push(corrupt_row(args, dir, stats)?);
    }

    let files = charts_folder(&args.out);
    fs::create_dir_all(&files)
        .with_context(|| format!("{}: cannot create the charts folder", files.display()))?;
    let charts = charts(&calibrated, &report, &frames, temperature.get())?;
    let mut figures = Vec::new();
    for (name, chart) in &charts {
        let svg = chart.to_svg()?;
        let svg_path = files.join(format!("{name}.svg"));
        fs::write(&svg_path, &svg)
            .with_context(|| format!("{}: cannot write", svg_path.display()))?;
        let png_path = files.join(format!("{name}.png"));
        fs::write(&png_path, chart.to_png()?)
            .with_context(|| format!("{}: cannot write", png_path.display()))?;
        figures.push((name.clone(), svg));
    }

    let panels = panels(&config, &report, &frames, args.panels)?;
    let page =
        Page { config: &config, calibrated: &calibrated, report: &report, corrupt: &corrupt };
    let html = page.html(&figures, &panels, args.temperature.is_none());
    fs::write(&args.out, html).with_context(|| format!("{}: cannot write", args.out.display()))?;
    println!(
        "wrote {} ({} frames, {} charts as PNG and SVG in {})",
        args.out.display(),
        report.frames,
        charts.len(),
        files.display()
    );
    Ok(())
}

/// `report.html` -> `report_files`, beside it.
fn charts_folder(out: &Path) -> PathBuf {
    let stem =
        out.file_stem().map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}_files"))
}

fn corrupt_row(args: &ReportArgs, dir: &Path, stats: StatsConfig) -> Result<CorruptRow> {
    let data = DataArgs { data: Some(dir.to_path_buf()), ..args.data.clone() };
    let dataset = data.to_dataset()?;
    let name =
        dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    let config =
        Config { dataset, stats, failed_iou: args.failed_iou, failed_accuracy: None, ood: vec![] };
    let (report, _) = measure(&config)?;
    let calibration = report.calibration.as_ref().ok();
    Ok(CorruptRow {
        name,
        frames: report.frames,
        accuracy: calibration.map(|c| c.accuracy),
        ece: calibration.map(|c| c.ece),
        miou: report.miou,
        auroc: report.pixel.iter().map(|r| r.auroc).collect(),
    })
}

/// The charts, each with its file name.
fn charts(
    calibrated: &Calibrated,
    report: &Report,
    frames: &[LabeledFrame],
    temperature: f32,
) -> Result<Vec<(String, LineChart)>> {
    let mut charts = Vec::new();

    charts.push(("reliability".to_string(), calibrated.reliability_chart()));

    let per_score = |pick: fn(&crate::metrics::Curves) -> &Vec<(f64, f64)>| -> Vec<Series> {
        Score::ALL
            .iter()
            .zip(&report.curves)
            .map(|(score, curves)| Series {
                name: score_name(*score).into(),
                points: pick(curves).clone(),
            })
            .collect()
    };
    charts.push((
        "roc".to_string(),
        LineChart {
            title: format!("ROC: flagging wrong pixels (T = {temperature:.3})"),
            x_label: "false positive rate (correct pixels flagged)".into(),
            y_label: "true positive rate (wrong pixels flagged)".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            series: per_score(|c| &c.roc),
            diagonal: true,
        },
    ));
    let risk_max = report
        .curves
        .iter()
        .flat_map(|c| c.risk_coverage.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    charts.push((
        "risk_coverage".to_string(),
        LineChart {
            title: "Risk-coverage: keep the most certain pixels".into(),
            x_label: "coverage (share of pixels kept)".into(),
            y_label: "risk (error rate among kept)".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, (risk_max * 1.1).max(1e-3)),
            series: per_score(|c| &c.risk_coverage),
            diagonal: false,
        },
    ));

    // Histograms of each score over right and wrong pixels, as densities.
    for score in Score::ALL {
        let index = score.index();
        let values = || frames.iter().flat_map(|f| f.scores.iter().zip(&f.errors));
        let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
        for (s, _) in values() {
            low = low.min(f64::from(s[index]));
            high = high.max(f64::from(s[index]));
        }
        if !low.is_finite() || low >= high {
            (low, high) = if low.is_finite() { (low, low + 1.0) } else { (0.0, 1.0) };
        }
        let mut counts = [[0u64; HISTOGRAM_BINS]; 2];
        for (s, &wrong) in values() {
            let position = (f64::from(s[index]) - low) / (high - low) * HISTOGRAM_BINS as f64;
            let bin = (position as usize).min(HISTOGRAM_BINS - 1);
            counts[usize::from(wrong)][bin] += 1;
        }
        let right = density_steps(&counts[0], (low, high));
        let wrong = density_steps(&counts[1], (low, high));
        let top = right.iter().chain(&wrong).map(|p| p.1).fold(0.0f64, f64::max);
        let name = score_name(score);
        charts.push((
            format!("histogram_{name}"),
            LineChart {
                title: format!("{name}: right and wrong pixels"),
                x_label: name.to_string(),
                y_label: "density".into(),
                x_range: (low, high),
                y_range: (0.0, (top * 1.05).max(1e-9)),
                series: vec![
                    Series { name: "right pixels".into(), points: right },
                    Series { name: "wrong pixels".into(), points: wrong },
                ],
                diagonal: false,
            },
        ));
    }
    Ok(charts)
}

/// One frame's panel: its name, why it was chosen, and its images as PNG data URIs.
struct Panel {
    stem: String,
    why: String,
    images: Vec<(&'static str, String)>,
}

/// The panels of the most uncertain frames (by the best failed-frame statistic, or mean
/// entropy) and of the frames with the most confidently wrong pixels.
fn panels(
    config: &Config,
    report: &Report,
    frames: &[LabeledFrame],
    count: usize,
) -> Result<Vec<(String, Vec<Panel>)>> {
    let best = report.best_json();
    let statistic = best["frame"]["statistic"]
        .as_str()
        .and_then(|name| name.parse::<Statistic>().ok())
        .unwrap_or(Statistic::MeanEntropy);
    let index = Statistic::ALL.iter().position(|s| *s == statistic).unwrap_or(1);

    let mut uncertain: Vec<usize> = (0..frames.len()).collect();
    uncertain.sort_by(|&a, &b| {
        let value = |i: usize| statistic.uncertainty(frames[i].statistics[index]);
        value(b).total_cmp(&value(a))
    });
    uncertain.truncate(count);
    let mut wrong: Vec<usize> =
        (0..frames.len()).filter(|&i| frames[i].confidently_wrong > 0).collect();
    wrong.sort_by_key(|&i| std::cmp::Reverse(frames[i].confidently_wrong));
    wrong.truncate(count);

    let chosen: Vec<Frame> =
        uncertain.iter().chain(&wrong).map(|&i| config.dataset.frames[i].clone()).collect();
    let images = config.dataset.map_frames(&chosen, "panels", |logits, frame| {
        panel_images(&logits, frame, &config.stats)
    })?;
    let mut images = images.into_iter();
    let mut section = |indices: &[usize], why: &dyn Fn(usize) -> String| -> Vec<Panel> {
        indices
            .iter()
            .map(|&i| Panel {
                stem: config.dataset.frames[i].stem.clone(),
                why: why(i),
                images: images.next().unwrap_or_default(),
            })
            .collect()
    };
    let uncertain_panels = section(&uncertain, &|i| {
        format!("{} = {:.4}", statistic.as_str(), frames[i].statistics[index])
    });
    let wrong_panels = section(&wrong, &|i| {
        format!("{} wrong pixels with max-softmax >= 0.9", frames[i].confidently_wrong)
    });
    Ok(vec![
        (format!("Most uncertain frames (by {})", statistic.as_str()), uncertain_panels),
        ("Most confidently wrong frames".to_string(), wrong_panels),
    ])
}

/// Image, label, prediction, max-softmax, entropy and error maps of one frame, as PNG data URIs.
fn panel_images(
    logits: &Logits,
    frame: &Frame,
    config: &StatsConfig,
) -> Result<Vec<(&'static str, String)>> {
    let labels = frame.read_label(logits)?;
    let (_, maps) = analyze_logits(logits, config)?;
    let (width, height) = (logits.width as u32, logits.height as u32);
    let mut images = Vec::new();

    let is_image = frame
        .input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("jpg"));
    if is_image {
        let picture = qualm_daemon::decode::decode_frame(&frame.input, Default::default())?;
        let picture = image::imageops::resize(&picture, width, height, image::imageops::Triangle);
        images.push(("image", data_uri(&picture)?));
    }

    let class_colour = |class: u8| {
        let c = colorous::TABLEAU10[usize::from(class) % colorous::TABLEAU10.len()];
        Rgb([c.r, c.g, c.b])
    };
    let map = |f: &dyn Fn(usize) -> Rgb<u8>| {
        RgbImage::from_fn(width, height, |x, y| f((y * width + x) as usize))
    };
    let ignore = Rgb([235, 235, 235]);
    let scale = |score: Score, p: usize| {
        let value = maps.scores[p][score.index()];
        let c = colorous::VIRIDIS.eval_continuous(f64::from(value).clamp(0.0, 1.0));
        Rgb([c.r, c.g, c.b])
    };
    let label_map =
        map(&|p| if labels[p] == IGNORE_LABEL { ignore } else { class_colour(labels[p]) });
    images.push(("label", data_uri(&label_map)?));
    images.push(("prediction", data_uri(&map(&|p| class_colour(maps.classes[p])))?));
    images.push(("max-softmax", data_uri(&map(&|p| scale(Score::MaxSoftmax, p)))?));
    images.push(("entropy", data_uri(&map(&|p| scale(Score::Entropy, p)))?));
    let error_map = map(&|p| match labels[p] {
        IGNORE_LABEL => ignore,
        label if label == maps.classes[p] => Rgb([40, 40, 40]),
        _ => Rgb([214, 39, 40]),
    });
    images.push(("error", data_uri(&error_map)?));
    Ok(images)
}

fn data_uri(image: &RgbImage) -> Result<String> {
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)))
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "&ndash;".to_string(), |v| format!("{v:.4}"))
}

fn metric(value: Metric) -> String {
    cell(value.ok())
}

/// Mean top-label confidence of a calibration summary.
fn mean_confidence(summary: &CalibrationSummary) -> f64 {
    let total: u64 = summary.bins.iter().map(|b| b.pixels).sum();
    summary.bins.iter().map(|b| b.confidence * b.pixels as f64).sum::<f64>() / total.max(1) as f64
}

/// What the page is made of.
struct Page<'a> {
    config: &'a Config,
    calibrated: &'a Calibrated,
    report: &'a Report,
    corrupt: &'a [CorruptRow],
}

impl Page<'_> {
    fn html(
        &self,
        figures: &[(String, String)],
        panels: &[(String, Vec<Panel>)],
        in_sample: bool,
    ) -> String {
        let report = self.report;
        let temperature = self.config.stats.temperature.get();
        let mut page = String::new();
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Qualm report</title><style>{STYLE}</style></head><body>\n\
             <h1>Qualm report: which uncertainty score to trust on this data</h1>\n\
             <p class=\"meta\">{} frames, {} labeled pixels ({} ignored) from {}. Scores at \
             temperature T = {temperature:.4}{}. Errors, failed frames and out-of-distribution \
             frames are the positive class; pixels are pooled over all frames.</p>\n",
            report.frames,
            report.pixels,
            report.ignored,
            escape(&self.config.dataset.description),
            if in_sample { " (fitted on these same frames: in-sample)" } else { "" },
        );

        self.calibration_section(&mut page);
        let figure = |name: &str| {
            figures
                .iter()
                .find(|(n, _)| n == name)
                .map_or(String::new(), |(_, svg)| format!("<figure>{svg}</figure>"))
        };
        let _ = writeln!(page, "<div class=\"row\">{}</div>", figure("reliability"));

        self.pixel_section(&mut page);
        let _ =
            writeln!(page, "<div class=\"row\">{}{}</div>", figure("roc"), figure("risk_coverage"));
        let histograms: String =
            Score::ALL.iter().map(|s| figure(&format!("histogram_{}", score_name(*s)))).collect();
        let _ = writeln!(page, "<h2>Score histograms</h2><div class=\"row\">{histograms}</div>");

        self.frame_section(&mut page);
        self.corrupt_section(&mut page);
        for (title, frames) in panels {
            Self::panel_section(&mut page, title, frames);
        }
        self.verdict(&mut page, in_sample);

        let data = json!({
            "evaluation": report.to_json(self.config),
            "calibration": {
                "fitted_temperature": self.calibrated.fit.temperature,
                "converged": self.calibrated.fit.converged,
                "before": self.calibrated.before.as_ref().ok(),
                "after": self.calibrated.after.as_ref().ok(),
            },
        });
        // `</` cannot end the script early: serde_json escapes no slash, so do it here.
        let data = data.to_string().replace("</", "<\\/");
        let _ = write!(
            page,
            "<script type=\"application/json\" id=\"qualm-data\">{data}</script>\n\
             <script>{LOAD_CHECK}</script>\n</body></html>\n"
        );
        page
    }

    fn calibration_section(&self, page: &mut String) {
        let fitted = self.calibrated.fit.temperature;
        let before = self.calibrated.before.as_ref().ok();
        let after = self.calibrated.after.as_ref().ok();
        let _ = write!(
            *page,
            "<h2>Calibration</h2><table><tr><th>metric</th><th>raw (T = 1)</th>\
             <th>T = {fitted:.4} (least NLL)</th></tr>"
        );
        for (i, name) in CalibrationSummary::NAMES.iter().enumerate() {
            let _ = write!(
                *page,
                "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
                cell(before.map(|c| c.values()[i])),
                cell(after.map(|c| c.values()[i]))
            );
        }
        let confidence = |c: Option<&CalibrationSummary>| cell(c.map(mean_confidence));
        let _ = write!(
            *page,
            "<tr><td>mean confidence</td><td>{}</td><td>{}</td></tr></table>\n\
             <p>ECE: 15 equal-width bins (a, b] of top-label confidence, weighted by their share \
             of pixels, empty bins skipped. NLL in nats; Brier is the multi-class sum of squares.\
             {}</p>\n",
            confidence(before),
            confidence(after),
            self.calibrated.fit.reason.as_ref().map_or(String::new(), |r| format!(
                " <b>The fit did not converge:</b> {}.",
                escape(r)
            ))
        );
    }

    fn pixel_section(&self, page: &mut String) {
        let errors = self.report.pixel.first().map_or(0, |r| r.positives);
        let _ = write!(
            *page,
            "<h2>Wrong pixels</h2><p>{errors} of {} labeled pixels are wrong. Each score is \
             oriented so that a larger value means less certain.</p><table><tr><th>score</th>\
             <th>AUROC</th><th>AUPR (errors)</th><th>FPR at 95% TPR</th><th>AURC</th></tr>",
            self.report.pixels
        );
        for (score, r) in Score::ALL.iter().zip(&self.report.pixel) {
            let _ = write!(
                *page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                score_name(*score),
                metric(r.auroc),
                metric(r.average_precision),
                metric(r.fpr_at_95_tpr),
                metric(r.aurc)
            );
        }
        page.push_str("</table>\n");
    }

    fn frame_section(&self, page: &mut String) {
        let report = self.report;
        let _ = write!(
            *page,
            "<h2>Failed and out-of-distribution frames</h2><p>{} of {} frames failed ({}). AUROC \
             of each frame statistic; positive = failed frame, or OOD frame against the labeled \
             ones.</p><table><tr><th>statistic</th><th>failed</th>",
            report.failed_frames,
            report.judged_frames,
            escape(&Report::failure_definition(self.config))
        );
        for (name, frames, _) in &report.ood {
            let _ = write!(*page, "<th>{} ({frames})</th>", escape(name));
        }
        page.push_str("</tr>");
        for (i, statistic) in Statistic::ALL.iter().enumerate() {
            let _ = write!(
                *page,
                "<tr><td>{}</td><td>{}</td>",
                statistic,
                metric(report.failed[i].auroc)
            );
            for (_, _, rankings) in &report.ood {
                let _ = write!(*page, "<td>{}</td>", metric(rankings[i].auroc));
            }
            page.push_str("</tr>");
        }
        page.push_str("</table>\n");
    }

    fn corrupt_section(&self, page: &mut String) {
        if self.corrupt.is_empty() {
            return;
        }
        let clean = self.report.calibration.as_ref().ok();
        let _ = write!(
            *page,
            "<h2>Under corruption</h2><table><tr><th>set</th><th>frames</th><th>accuracy</th>\
             <th>ECE</th><th>mIoU</th>{}</tr><tr><td>clean</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td>{}</tr>",
            Score::ALL
                .iter()
                .map(|s| format!("<th>AUROC {}</th>", score_name(*s)))
                .collect::<String>(),
            self.report.frames,
            cell(clean.map(|c| c.accuracy)),
            cell(clean.map(|c| c.ece)),
            cell(self.report.miou),
            self.report
                .pixel
                .iter()
                .map(|r| format!("<td>{}</td>", metric(r.auroc)))
                .collect::<String>()
        );
        for row in self.corrupt {
            let _ = write!(
                *page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
                escape(&row.name),
                row.frames,
                cell(row.accuracy),
                cell(row.ece),
                cell(row.miou),
                row.auroc.iter().map(|a| format!("<td>{}</td>", metric(*a))).collect::<String>()
            );
        }
        page.push_str("</table>\n");
    }

    fn panel_section(page: &mut String, title: &str, frames: &[Panel]) {
        let _ = write!(
            *page,
            "<h2>{}</h2><p>Max-softmax and entropy maps from 0 (dark) to 1 (yellow); the error \
             map is red where the prediction is wrong, grey where the label is 255 (ignored). \
             Read the max-softmax map beside the error map: bright is not the same as right.</p>",
            escape(title)
        );
        if frames.is_empty() {
            page.push_str("<p>No frame qualifies.</p>\n");
        }
        for frame in frames {
            let _ = write!(
                *page,
                "<div class=\"panel\"><div class=\"caption\">{} &middot; {}</div>",
                escape(&frame.stem),
                escape(&frame.why)
            );
            for (name, uri) in &frame.images {
                let _ = write!(
                    *page,
                    "<figure><img src=\"{uri}\" alt=\"{name} of {}\"><figcaption>{name}\
                     </figcaption></figure>",
                    escape(&frame.stem)
                );
            }
            page.push_str("</div>\n");
        }
    }

    /// The closing verdict in plain words.
    fn verdict(&self, page: &mut String, in_sample: bool) {
        let report = self.report;
        let best = report.best_json();
        let mut lines: Vec<String> = Vec::new();

        let pixel = &best["pixel"];
        match pixel["score"].as_str() {
            Some(_) if pixel["separates"] == false => lines.push(format!(
                "Wrong pixels: no score separates them from right ones (the best AUROC is {:.3}, \
                 within {CHANCE_MARGIN} of chance).",
                pixel["auroc"].as_f64().unwrap_or(f64::NAN)
            )),
            Some("max_softmax") => lines.push(format!(
                "Wrong pixels: max-softmax ranks them best here (AUROC {:.3}); the other scores do \
                 not beat it on this data.",
                pixel["auroc"].as_f64().unwrap_or(f64::NAN)
            )),
            Some(score) => lines.push(format!(
                "Wrong pixels: trust <b>{score}</b> (AUROC {:.3}, {:+.3} over max-softmax's {:.3}).",
                pixel["auroc"].as_f64().unwrap_or(f64::NAN),
                pixel["over_max_softmax"].as_f64().unwrap_or(f64::NAN),
                pixel["max_softmax_auroc"].as_f64().unwrap_or(f64::NAN)
            )),
            None => lines.push("Wrong pixels: no verdict, the data has no wrong pixel or no right one.".into()),
        }
        let frame = &best["frame"];
        if frame["separates"] == false {
            lines.push(format!(
                "Failed frames: no statistic separates them from passed ones (the best AUROC is \
                 {:.3}, within {CHANCE_MARGIN} of chance).",
                frame["auroc"].as_f64().unwrap_or(f64::NAN)
            ));
        } else if let Some(statistic) = frame["statistic"].as_str() {
            lines.push(format!(
                "Failed frames: gate on <b>{statistic}</b> (AUROC {:.3}, {:+.3} over the frame mean \
                 of max-softmax, {:.3}).",
                frame["auroc"].as_f64().unwrap_or(f64::NAN),
                frame["over_max_softmax"].as_f64().unwrap_or(f64::NAN),
                frame["mean_max_softmax_auroc"].as_f64().unwrap_or(f64::NAN)
            ));
        }

        if let (Ok(before), Ok(after)) = (&self.calibrated.before, &self.calibrated.after) {
            let confidence = mean_confidence(before);
            let direction =
                if confidence > before.accuracy { "overconfident" } else { "underconfident" };
            lines.push(format!(
                "Calibration: the raw model is {direction}: mean confidence {confidence:.3} against \
                 accuracy {:.3}, ECE {:.4}. At T = {:.3} the ECE is {:.4}{}.",
                before.accuracy,
                before.ece,
                self.calibrated.fit.temperature,
                after.ece,
                if in_sample { " (in-sample: fit T on other frames before you trust it)" } else { "" }
            ));
        }

        for (name, _, rankings) in &report.ood {
            let baseline = rankings[0].auroc.ok();
            let best = Statistic::ALL
                .iter()
                .zip(rankings)
                .filter_map(|(s, r)| r.auroc.ok().map(|a| (s, a)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((_, auroc)) = best
                && !separates(auroc)
            {
                lines.push(format!(
                    "Out of distribution ({}): no statistic separates these frames (the best \
                     AUROC is {auroc:.3}, within {CHANCE_MARGIN} of chance).",
                    escape(name)
                ));
            } else if let (Some((statistic, auroc)), Some(baseline)) = (best, baseline) {
                let warning = if baseline < 0.5 {
                    " Max-softmax is <b>more</b> confident on these frames than on the labeled ones."
                } else {
                    ""
                };
                lines.push(format!(
                    "Out of distribution ({}): best statistic {} (AUROC {auroc:.3}; frame-mean \
                     max-softmax {baseline:.3}).{warning}",
                    escape(name),
                    statistic.as_str()
                ));
            }
        }

        let clean = report.calibration.as_ref().ok();
        if self.corrupt.is_empty() {
            lines.push(
                "Corruptions: none given (--corrupt); models/build/multiclass_data.py writes \
                 corrupted copies of the test frames."
                    .into(),
            );
        } else if let Some(clean) = clean {
            let worst = self
                .corrupt
                .iter()
                .filter_map(|r| Some((r, r.accuracy?, r.ece?)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((row, accuracy, ece)) = worst {
                lines.push(format!(
                    "Corruptions: accuracy falls from {:.3} to {accuracy:.3} on {} and ECE moves \
                     from {:.4} to {ece:.4}; see the table for each score's AUROC there.",
                    clean.accuracy,
                    escape(&row.name),
                    clean.ece
                ));
            }
        }

        page.push_str("<h2>Verdict</h2><ul class=\"verdict\">");
        for line in lines {
            let _ = write!(*page, "<li>{line}</li>");
        }
        page.push_str("</ul>\n");
    }
}

/// The page's style sheet.
const STYLE: &str = "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right}td:first-child,th:first-child{text-align:left}.row{display:flex;\
flex-wrap:wrap;gap:1em}figure{margin:0}.panel{display:flex;flex-wrap:wrap;gap:6px;\
margin:1em 0;align-items:flex-end}.panel img{width:192px;image-rendering:pixelated}\
.caption{width:100%;font-weight:bold}figcaption{text-align:center;font-size:0.85em}\
.meta{color:#555}.verdict li{margin:0.4em 0}";

/// Marks the page once loaded with how many images decoded, for tests in a headless browser.
const LOAD_CHECK: &str = "window.addEventListener('load',function(){var i=document.images,\
ok=0;for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0){ok++;}}\
document.body.setAttribute('data-images',ok+'/'+i.length);});";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_go_beside_the_page() {
        assert_eq!(charts_folder(Path::new("out/r.html")), Path::new("out/r_files"));
        assert_eq!(charts_folder(Path::new("report")), Path::new("report_files"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
