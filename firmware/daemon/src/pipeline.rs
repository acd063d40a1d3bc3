//! The per-frame path: prepare, infer, score, gate, store, log.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{GrayImage, ImageFormat, RgbImage};
use qualm_core::{Decision, FrameStats, OwnedFrameMaps, StatsConfig, Temperature};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::calibration::Calibration;
use crate::config::Config;
use crate::ledger::{Ledger, LedgerEntry};
use crate::model::SegmentationModel;
use crate::source::{BadFrame, FolderSource, Frame, FrameSource, VideoSource};
use crate::spool::{RecordFile, Spool};

/// Counts of one run, printed when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Frames read, including bad ones.
    pub frames: u64,
    /// Frames stored as records.
    pub kept: u64,
    /// Frames that could not be read or scored.
    pub failed: u64,
    /// Wall-clock seconds of the frame loop.
    pub seconds: f64,
}

impl Summary {
    /// Counts one frame's ledger entry.
    pub fn count(&mut self, entry: &LedgerEntry) {
        self.frames += 1;
        self.kept += u64::from(entry.kept);
        self.failed += u64::from(entry.error.is_some());
    }

    /// Frames per second over the run.
    pub fn frames_per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.frames as f64 / self.seconds } else { 0.0 }
    }
}

/// The metadata file of a record.
#[derive(Debug, Serialize)]
struct RecordMeta<'a> {
    time: &'a str,
    frame: &'a str,
    origin: &'a str,
    model: &'a str,
    model_sha256: &'a str,
    classes: &'a [String],
    temperature: f32,
    statistic: &'a str,
    threshold: f32,
    value: f32,
    reason: String,
    stats: &'a FrameStats,
    files: [&'static str; 4],
}

/// Opens the configured frame source.
///
/// # Errors
/// When the folder or video cannot be opened.
pub fn open_source(config: &Config) -> anyhow::Result<Box<dyn FrameSource + Send>> {
    match (&config.source.frames, &config.source.video) {
        (Some(folder), _) => Ok(Box::new(FolderSource::open(folder)?)),
        (None, Some(video)) => Ok(Box::new(VideoSource::open(video)?)),
        (None, None) => {
            anyhow::bail!("expected a frame source (frames folder or video), found none")
        }
    }
}

/// Everything that lives across frames.
#[derive(Debug)]
pub struct Daemon {
    model: SegmentationModel,
    calibration: Option<Calibration>,
    stats_config: StatsConfig,
    maps: OwnedFrameMaps,
    spool: Spool,
    ledger: Ledger,
    jpeg_quality: u8,
    /// Time of the last model run, for the metrics endpoint.
    last_inference: Duration,
}

impl Daemon {
    /// Loads the model and calibration and opens the spool and ledger.
    ///
    /// # Errors
    /// When any of them cannot be opened, or the calibration is for another model.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        let model = SegmentationModel::load(&config.model)?;

        let calibration = match &config.calibration {
            Some(path) => {
                let calibration = Calibration::load(path)?;
                calibration.check_model(path, model.sha256())?;
                tracing::info!(
                    path = %path.display(),
                    statistic = %calibration.gate.statistic,
                    threshold = calibration.gate.threshold,
                    temperature = calibration.temperature,
                    "calibration loaded"
                );
                Some(calibration)
            }
            None => {
                tracing::warn!("no calibration file: observing only, no frame will be kept");
                None
            }
        };
        let stats_config = stats_config_for(calibration.as_ref())?;

        let (height, width) = model.output_size();
        let maps = OwnedFrameMaps::new(height * width);
        let spool = Spool::open(&config.spool)?;
        let ledger = Ledger::open(&config.ledger)?;
        let jpeg_quality = config.jpeg_quality;
        let last_inference = Duration::ZERO;
        Ok(Self {
            model,
            calibration,
            stats_config,
            maps,
            spool,
            ledger,
            jpeg_quality,
            last_inference,
        })
    }

    /// Replaces the calibration with the file at `path` (on SIGHUP). A file that cannot be
    /// read, or was made for another model, is refused and the current calibration stays.
    ///
    /// # Errors
    /// When the file is refused; nothing changes then.
    pub fn reload_calibration(&mut self, path: &Path) -> anyhow::Result<()> {
        let calibration = Calibration::load(path)?;
        calibration.check_model(path, self.model.sha256())?;
        self.stats_config = stats_config_for(Some(&calibration))?;
        let gate = calibration.gate;
        let temperature = calibration.temperature;
        tracing::info!(path = %path.display(), "calibration reloaded: {gate:?}, T = {temperature}");
        self.calibration = Some(calibration);
        Ok(())
    }

    /// How long the last model run took (zero before the first frame).
    pub fn last_inference(&self) -> Duration {
        self.last_inference
    }

    /// Runs until the source ends or `max_frames` frames were read. A bad frame is logged,
    /// written to the ledger and skipped.
    ///
    /// # Errors
    /// Only when the ledger cannot be written: without it nothing could be accounted for.
    pub fn run(
        &mut self,
        source: &mut dyn FrameSource,
        max_frames: Option<u64>,
    ) -> anyhow::Result<Summary> {
        let mut summary = Summary::default();
        let started = Instant::now();

        for item in source.take(max_frames.map_or(usize::MAX, |n| n as usize)) {
            let entry = self.handle(item)?;
            summary.count(&entry);
        }

        self.ledger.sync()?;
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Scores one item of a source, stores the frame when the gate keeps it, and appends its
    /// ledger line. A bad frame is logged and written to the ledger as an error.
    ///
    /// # Errors
    /// Only when the ledger cannot be written.
    pub fn handle(&mut self, item: Result<Frame, BadFrame>) -> anyhow::Result<LedgerEntry> {
        let entry = match item {
            Ok(frame) => self.process(&frame).unwrap_or_else(|error| {
                tracing::warn!(frame = %frame.id, "skipping frame: {error:#}");
                self.failed_entry(frame.id.clone(), frame.origin.clone(), &error)
            }),
            Err(bad) => {
                tracing::warn!(frame = %bad.id, "skipping frame: {:#}", bad.error);
                self.failed_entry(bad.id, String::new(), &bad.error)
            }
        };
        self.ledger.append(&entry)?;
        Ok(entry)
    }

    /// Flushes and fsyncs the ledger (at the end of a run, or before a clean stop).
    ///
    /// # Errors
    /// When the ledger cannot be written out.
    pub fn sync_ledger(&mut self) -> anyhow::Result<()> {
        self.ledger.sync()
    }

    fn failed_entry(&self, frame: String, origin: String, error: &anyhow::Error) -> LedgerEntry {
        LedgerEntry {
            time: now(),
            frame,
            origin,
            model_sha256: self.model.sha256().to_owned(),
            kept: false,
            reason: "error".into(),
            temperature: None,
            uncertain_level: None,
            statistic: None,
            threshold: None,
            stats: None,
            record: None,
            error: Some(format!("{error:#}")),
        }
    }

    fn process(&mut self, frame: &Frame) -> anyhow::Result<LedgerEntry> {
        self.model.prepare(&frame.image);
        let started = Instant::now();
        let output = self.model.infer()?;
        self.last_inference = started.elapsed();
        let stats = self.model.analyze(&output, &self.stats_config, self.maps.as_maps())?;
        tracing::trace!(frame = %frame.id, mean_entropy = stats.mean_entropy, "frame scored");

        let mut entry = LedgerEntry {
            time: now(),
            frame: frame.id.clone(),
            origin: frame.origin.clone(),
            model_sha256: self.model.sha256().to_owned(),
            kept: false,
            reason: "observe_only".into(),
            temperature: Some(self.stats_config.temperature.get()),
            uncertain_level: Some(self.stats_config.uncertain_level),
            statistic: None,
            threshold: None,
            stats: Some(stats),
            record: None,
            error: None,
        };
        let Some(calibration) = &self.calibration else { return Ok(entry) };

        let gate = calibration.gate;
        entry.statistic = Some(gate.statistic);
        entry.threshold = Some(gate.threshold);
        let value = match gate.decide(&stats) {
            Decision::Skip { .. } => {
                entry.reason = "below_threshold".into();
                return Ok(entry);
            }
            Decision::Keep { value } => value,
        };

        let direction = if gate.statistic.higher_is_uncertain() { "above" } else { "below" };
        let reason = format!("{} {value} {direction} threshold {}", gate.statistic, gate.threshold);
        tracing::debug!(frame = %frame.id, "keeping frame: {reason}");
        match self.store(frame, &stats, &entry.time, value, reason) {
            Ok(record) => {
                entry.kept = true;
                entry.reason = "kept".into();
                entry.record = Some(record);
            }
            Err(error) => {
                tracing::error!(frame = %frame.id, "cannot store record: {error:#}");
                entry.reason = "spool_error".into();
                entry.error = Some(format!("{error:#}"));
            }
        }
        Ok(entry)
    }

    fn store(
        &self,
        frame: &Frame,
        stats: &FrameStats,
        time: &str,
        value: f32,
        reason: String,
    ) -> anyhow::Result<String> {
        let (height, width) = self.model.output_size();
        let (frame_width, frame_height) = frame.image.dimensions();

        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, self.jpeg_quality)
            .encode_image(&frame.image)
            .context("cannot encode frame as JPEG")?;

        // Class ids as 8-bit gray, nearest-neighbour to frame size: what label tools import.
        let classes = GrayImage::from_raw(width as u32, height as u32, self.maps.classes.clone())
            .context("class map size mismatch")?;
        let mask = imageops::resize(&classes, frame_width, frame_height, FilterType::Nearest);
        let mask = encode_png(&mask)?;

        let heat = heat_map(&self.maps.uncertainty, width as u32, height as u32)?;
        let heat = imageops::resize(&heat, frame_width, frame_height, FilterType::Triangle);
        let heat = encode_png(&heat)?;

        let digest = hex::encode(Sha256::digest(&jpeg));
        let key = format!("{}-{}", frame.id, &digest[..12]);
        let calibration = self.calibration.as_ref().context("storing without calibration")?;
        let card = self.model.card();
        let meta = RecordMeta {
            time,
            frame: &frame.id,
            origin: &frame.origin,
            model: &card.name,
            model_sha256: self.model.sha256(),
            classes: &card.output.classes,
            temperature: calibration.temperature,
            statistic: calibration.gate.statistic.as_str(),
            threshold: calibration.gate.threshold,
            value,
            reason,
            stats,
            files: RECORD_FILES,
        };
        let meta = serde_json::to_vec_pretty(&meta).context("cannot encode record metadata")?;

        let files = [
            RecordFile { name: RECORD_FILES[0], bytes: &jpeg },
            RecordFile { name: RECORD_FILES[1], bytes: &mask },
            RecordFile { name: RECORD_FILES[2], bytes: &heat },
            RecordFile { name: RECORD_FILES[3], bytes: &meta },
        ];
        self.spool.store(&key, &files)?;
        Ok(key)
    }

    /// The spool folder.
    pub fn spool_folder(&self) -> PathBuf {
        self.spool.folder().to_path_buf()
    }
}

/// File names inside a record folder.
pub const RECORD_FILES: [&str; 4] = ["frame.jpg", "mask.png", "uncertainty.png", "meta.json"];

fn encode_png<P, C>(image: &image::ImageBuffer<P, C>) -> anyhow::Result<Vec<u8>>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).context("cannot encode PNG")?;
    Ok(bytes)
}

/// Colours an uncertainty map (0 = sure, 255 = maximal entropy) with the inferno palette.
fn heat_map(uncertainty: &[u8], width: u32, height: u32) -> anyhow::Result<RgbImage> {
    let mut pixels = Vec::with_capacity(uncertainty.len() * 3);
    for &value in uncertainty {
        let colour = colorous::INFERNO.eval_rational(usize::from(value), 256);
        pixels.extend_from_slice(&[colour.r, colour.g, colour.b]);
    }
    RgbImage::from_raw(width, height, pixels).context("uncertainty map size mismatch")
}

/// The statistics settings a calibration asks for (temperature 1 without one).
fn stats_config_for(calibration: Option<&Calibration>) -> anyhow::Result<StatsConfig> {
    Ok(match calibration {
        Some(c) => StatsConfig {
            temperature: c.temperature()?,
            uncertain_level: c.uncertain_level,
            ..StatsConfig::default()
        },
        None => StatsConfig { temperature: Temperature::ONE, ..StatsConfig::default() },
    })
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
