//! The per-frame path: prepare, infer, score, gate, store, log.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{GrayImage, ImageFormat, RgbImage};
use qualm_core::policy::{Outcome, Policy, Verdict};
use qualm_core::{FrameStats, OwnedFrameMaps, Rules, StatsConfig, Temperature};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::Tensor;

use crate::calibration::Calibration;
use crate::config::{BUDGET_CAPACITY, Config};
use crate::ledger::{Ledger, LedgerEntry};
use crate::model::{Inference, InputPreparer, SegmentationModel, stretch_rgb_into};
use crate::nonfinite::{self, NONFINITE_REASON};
use crate::perceptual::difference_hash;
use crate::source::{BadFrame, FolderSource, Frame, FrameSource, VideoSource};
use crate::spool::{RecordFile, RecordRank, Spool, SpoolLimits, Victim};
use crate::staged::{Inferred, StagedItem};

/// How many recently kept frames a new frame is compared with for near-duplicates.
pub const DUPLICATE_HISTORY: usize = 16;

/// Counts of one run, printed when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Frames read, including bad ones.
    pub frames: u64,
    /// Frames stored as records (some evicted later).
    pub kept: u64,
    /// Records removed again: pushed out of their budget window or evicted for room.
    pub evicted: u64,
    /// Frames to keep that the spool could not store.
    pub spool_errors: u64,
    /// Frames that could not be read or scored.
    pub failed: u64,
    /// Frames whose logits were mostly non-finite (ledgered as `non_finite`; those stored are
    /// also counted in `kept`).
    pub non_finite: u64,
    /// Wall-clock seconds of the frame loop.
    pub seconds: f64,
}

impl Summary {
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
    priority: f32,
    baseline: bool,
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
        (Some(folder), _) => Ok(Box::new(FolderSource::open(folder)?.with_limits(config.decode))),
        (None, Some(video)) => Ok(Box::new(VideoSource::open(video)?.with_limits(config.decode))),
        (None, None) => {
            anyhow::bail!("expected a frame source (frames folder or video), found none")
        }
    }
}

/// Frame times for the policy's window and cooldown.
#[derive(Debug)]
enum FrameClock {
    /// Recorded footage: frame `i` is at `i * interval_ms`.
    Fixed { interval_ms: u64, next: u64 },
    /// Live: milliseconds since start when the frame was read.
    Live(Instant),
}

impl FrameClock {
    fn tick(&mut self) -> u64 {
        match self {
            Self::Fixed { interval_ms, next } => {
                let time = *next * *interval_ms;
                *next += 1;
                time
            }
            Self::Live(started) => u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Everything that lives across frames.
#[derive(Debug)]
pub struct Daemon {
    model: SegmentationModel,
    calibration: Option<Calibration>,
    rules: Option<Rules>,
    policy: Policy<BUDGET_CAPACITY, DUPLICATE_HISTORY>,
    clock: FrameClock,
    stats_config: StatsConfig,
    maps: OwnedFrameMaps,
    roi: Option<Vec<u8>>,
    spool: Option<Spool>,
    spool_folder: PathBuf,
    spool_limits: SpoolLimits,
    // Records of the open budget window: (policy ticket, record key).
    pending: Vec<(u64, String)>,
    ledger: Ledger,
    jpeg_quality: u8,
    /// Records made final (stored or finalized) since start; the service loop wakes the
    /// uplink when it grows.
    final_records: u64,
    /// Time of the last model run, for the metrics endpoint.
    last_inference: Duration,
}

impl Daemon {
    /// Loads the model, calibration and region of interest and opens the spool and ledger.
    /// A spool that cannot be opened is not fatal: frames are still scored and ledgered, and
    /// every frame to keep tries to open it again.
    ///
    /// # Errors
    /// When the model, calibration, mask or ledger cannot be opened, the calibration is for
    /// another model, or a setting is invalid.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        let model = SegmentationModel::load(&config.model)?;

        let (calibration, rules) = match &config.calibration {
            Some(path) => {
                let calibration = Calibration::load(path)?;
                calibration.check_model(path, model.sha256())?;
                let rules = Calibration::load_rules(path)?;
                tracing::info!(
                    path = %path.display(),
                    statistic = %calibration.gate.statistic,
                    threshold = calibration.gate.threshold,
                    rules = rules.as_slice().len(),
                    combine = ?rules.combine,
                    temperature = calibration.temperature,
                    "calibration loaded"
                );
                (Some(calibration), Some(rules))
            }
            None => {
                tracing::warn!("no calibration file: observing only, no frame will be kept");
                (None, None)
            }
        };
        let stats_config = stats_config_for(calibration.as_ref())?;

        let policy_config = config.policy.policy_config()?;
        let policy = Policy::try_new(policy_config).map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        tracing::info!(?policy_config, "keep policy");
        let clock = match config.policy.frame_interval_ms()? {
            Some(interval_ms) => FrameClock::Fixed { interval_ms, next: 0 },
            None => FrameClock::Live(Instant::now()),
        };

        let (height, width) = model.output_size();
        let roi = config.roi.as_deref().map(|path| load_roi(path, width, height)).transpose()?;
        let maps = OwnedFrameMaps::new(height * width);
        let spool_limits = SpoolLimits {
            max_records: config.spool_max_records,
            max_bytes: config.spool_max_bytes,
        };
        let spool = open_spool(&config.spool, spool_limits);
        let ledger = Ledger::open(&config.ledger)?;
        Ok(Self {
            model,
            calibration,
            rules,
            policy,
            clock,
            stats_config,
            maps,
            roi,
            spool,
            spool_folder: config.spool.clone(),
            spool_limits,
            pending: Vec::new(),
            ledger,
            jpeg_quality: config.jpeg_quality,
            final_records: 0,
            last_inference: Duration::ZERO,
        })
    }

    /// Replaces the calibration and its rules with the file at `path` (on SIGHUP). A file that
    /// cannot be read, or was made for another model, is refused and the current one stays.
    /// The keep policy's state (budget window, cooldown, recent hashes) carries on.
    ///
    /// # Errors
    /// When the file is refused; nothing changes then.
    pub fn reload_calibration(&mut self, path: &Path) -> anyhow::Result<()> {
        let calibration = Calibration::load(path)?;
        calibration.check_model(path, self.model.sha256())?;
        let rules = Calibration::load_rules(path)?;
        let stats_config = stats_config_for(Some(&calibration))?;

        tracing::info!(
            path = %path.display(),
            rules = rules.as_slice().len(),
            combine = ?rules.combine,
            temperature = calibration.temperature,
            "calibration reloaded"
        );
        self.stats_config = stats_config;
        self.rules = Some(rules);
        self.calibration = Some(calibration);
        Ok(())
    }

    /// How long the last model run took (zero before the first frame).
    pub fn last_inference(&self) -> Duration {
        self.last_inference
    }

    /// Runs until the source ends or `max_frames` frames were read. A bad frame is logged,
    /// written to the ledger and skipped; a record that cannot be stored is logged and
    /// ledgered as `spool_error`. When the source ends the open budget window closes.
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
            self.handle(item, &mut summary)?;
        }

        self.finish()?;
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Scores one item of a source, applies the keep policy, stores the frame when kept and
    /// ledgers it (and any record evicted on the way); counts go into `summary`. A bad frame
    /// is logged and ledgered as an error. Returns the frame's own ledger line. Prepares and
    /// runs the model on this thread; [`Daemon::handle_inferred`] takes frames another thread
    /// ran the model on.
    ///
    /// # Errors
    /// Only when the ledger cannot be written: without it nothing could be accounted for.
    pub fn handle(
        &mut self,
        item: Result<Frame, BadFrame>,
        summary: &mut Summary,
    ) -> anyhow::Result<LedgerEntry> {
        let item = item.map(|frame| self.infer(frame));
        self.handle_inferred(item, summary)
    }

    /// [`Daemon::handle`] for a frame the model already ran on (or that failed on the way):
    /// statistics, keep policy, store and ledger.
    ///
    /// # Errors
    /// Only when the ledger cannot be written.
    pub fn handle_inferred(
        &mut self,
        item: StagedItem,
        summary: &mut Summary,
    ) -> anyhow::Result<LedgerEntry> {
        summary.frames += 1;
        let time_ms = self.clock.tick();
        let failed = match item {
            Ok(Inferred { frame, output, inference }) => {
                let stats = output.and_then(|output| {
                    self.last_inference = inference;
                    self.analyze(&frame, &output)
                });
                match stats {
                    Ok(stats) => return self.gate(&frame, stats, time_ms, summary),
                    Err(error) => {
                        tracing::warn!(frame = %frame.id, "skipping frame: {error:#}");
                        self.failed_entry(frame.id.clone(), frame.origin.clone(), &error)
                    }
                }
            }
            Err(bad) => {
                tracing::warn!(frame = %bad.id, "skipping frame: {:#}", bad.error);
                self.failed_entry(bad.id, String::new(), &bad.error)
            }
        };

        summary.failed += 1;
        self.ledger.append(&failed)?;
        Ok(failed)
    }

    /// The model's input preparation, for a prepare thread of its own.
    pub fn preparer(&self) -> InputPreparer {
        self.model.preparer()
    }

    /// Lends tract's state out to an inference thread (see [`SegmentationModel::take_inference`]).
    pub fn take_inference(&mut self) -> Option<Inference> {
        self.model.take_inference()
    }

    /// Gives back tract's state lent out with [`Daemon::take_inference`].
    pub fn restore_inference(&mut self, inference: Inference) {
        self.model.restore_inference(inference);
    }

    /// Ends a run: closes the open budget window (its candidates become final records) and
    /// flushes and fsyncs the ledger. Call it once, after the last frame or on a stop signal.
    ///
    /// # Errors
    /// When the ledger cannot be written out.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.policy.finish();
        self.finalize_pending();
        self.ledger.sync()
    }

    fn entry(&self, frame: String, origin: String, reason: &str) -> LedgerEntry {
        LedgerEntry {
            time: now(),
            frame,
            origin,
            model_sha256: self.model.sha256().to_owned(),
            kept: false,
            reason: reason.into(),
            temperature: None,
            uncertain_level: None,
            statistic: None,
            threshold: None,
            stats: None,
            perceptual_hash: None,
            record: None,
            error: None,
        }
    }

    fn failed_entry(&self, frame: String, origin: String, error: &anyhow::Error) -> LedgerEntry {
        LedgerEntry { error: Some(format!("{error:#}")), ..self.entry(frame, origin, "error") }
    }

    /// Prepares `frame` and runs the model on it, on this thread.
    fn infer(&mut self, frame: Frame) -> Inferred {
        if let Err(error) = self.model.prepare(&frame.image) {
            return Inferred::failed(frame, error);
        }
        let started = Instant::now();
        let output = self.model.infer();
        Inferred { frame, output, inference: started.elapsed() }
    }

    fn analyze(&mut self, frame: &Frame, output: &Tensor) -> anyhow::Result<FrameStats> {
        let maps = self.maps.as_maps();
        let stats =
            self.model.analyze_in_region(output, &self.stats_config, maps, self.roi.as_deref())?;
        tracing::trace!(frame = %frame.id, mean_entropy = stats.mean_entropy, "frame scored");
        Ok(stats)
    }

    /// Applies the policy to a scored frame, stores its record if kept, and ledgers the frame
    /// and every record removed on the way. A ledger line saying a record was evicted is
    /// written before the record is removed, so a crash never leaves the ledger claiming a
    /// record that is gone.
    fn gate(
        &mut self,
        frame: &Frame,
        stats: FrameStats,
        time_ms: u64,
        summary: &mut Summary,
    ) -> anyhow::Result<LedgerEntry> {
        let mut entry = LedgerEntry {
            temperature: Some(self.stats_config.temperature.get()),
            uncertain_level: Some(self.stats_config.uncertain_level),
            stats: Some(stats),
            ..self.entry(frame.id.clone(), frame.origin.clone(), "observe_only")
        };
        let non_finite = nonfinite::is_nonfinite(&stats);
        if non_finite {
            tracing::warn!(frame = %frame.id, "{}", nonfinite::describe(&stats));
            summary.non_finite += 1;
            entry.reason = NONFINITE_REASON.into();
            entry.error = Some(nonfinite::describe(&stats));
        }
        let Some(rules) = self.rules else {
            self.ledger.append(&entry)?;
            return Ok(entry);
        };

        let first = rules.as_slice()[0];
        entry.statistic = Some(first.statistic);
        entry.threshold = Some(first.threshold);
        let (passes, priority) = nonfinite::policy_input(&rules, &stats);
        // Hashed and ledgered even without duplicate suppression, so `qualm replay` can try it.
        // Hashed on every frame, checked or not, so `qualm replay` can try duplicate settings.
        let hash = difference_hash(&frame.image);
        entry.perceptual_hash = Some(format!("{hash:016x}"));
        let outcome = self.policy.decide(time_ms, passes, priority, Some(hash));
        if !non_finite {
            entry.reason = outcome.verdict.as_str().into();
        } else if !outcome.verdict.is_kept() {
            // The reason stays `non_finite`; the policy's refusal is told beside it.
            entry.error = Some(format!(
                "{}; not stored: {}",
                nonfinite::describe(&stats),
                outcome.verdict.as_str()
            ));
        }

        if outcome.window_closed {
            self.finalize_pending();
        }
        if let Some(ticket) = outcome.evicted {
            self.evict_candidate(ticket, summary)?;
        }
        if outcome.verdict.is_kept() {
            self.keep(frame, &stats, priority, outcome, &mut entry, summary);
        } else {
            tracing::debug!(frame = %frame.id, priority, "not keeping frame: {}", entry.reason);
        }

        self.ledger.append(&entry)?;
        if entry.kept {
            self.make_room(summary)?;
        }
        Ok(entry)
    }

    /// Stores the record of a frame the policy keeps; a spool error turns the entry into one.
    fn keep(
        &mut self,
        frame: &Frame,
        stats: &FrameStats,
        priority: f32,
        outcome: Outcome,
        entry: &mut LedgerEntry,
        summary: &mut Summary,
    ) {
        // meta.json is JSON: an infinite priority (NaN statistic) would turn into null.
        let rank = RecordRank {
            priority: priority.clamp(f32::MIN, f32::MAX),
            baseline: outcome.verdict == Verdict::Baseline,
        };
        let pending = outcome.verdict == Verdict::Candidate;
        let reason = self.keep_reason(stats, outcome.verdict);
        tracing::debug!(frame = %frame.id, pending, "keeping frame: {reason}");

        match self.store(frame, stats, &entry.time, rank, reason, pending) {
            Ok(key) => {
                if pending {
                    self.pending.push((outcome.ticket, key.clone()));
                } else {
                    self.final_records += 1;
                }
                entry.kept = true;
                entry.record = Some(key);
                summary.kept += 1;
            }
            Err(error) => {
                tracing::error!(frame = %frame.id, "cannot store record: {error:#}");
                entry.reason = "spool_error".into();
                entry.error = Some(format!("{error:#}"));
                summary.spool_errors += 1;
            }
        }
    }

    fn keep_reason(&self, stats: &FrameStats, verdict: Verdict) -> String {
        let Some(rules) = &self.rules else { return verdict.as_str().into() };
        if nonfinite::is_nonfinite(stats) {
            return nonfinite::describe(stats);
        }
        if verdict == Verdict::Baseline {
            return "random baseline sample".into();
        }
        let mut reason = String::new();
        for rule in rules.as_slice() {
            let value = rule.statistic.value(stats);
            let direction = if rule.statistic.higher_is_uncertain() { "above" } else { "below" };
            let side = if rule.decide(stats).is_keep() { "" } else { "not " };
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            reason.push_str(&format!(
                "{} {value} {side}{direction} threshold {}",
                rule.statistic, rule.threshold
            ));
        }
        reason
    }

    /// Removes the record of a candidate a more uncertain frame pushed out of its window.
    fn evict_candidate(&mut self, ticket: u64, summary: &mut Summary) -> anyhow::Result<()> {
        // A candidate whose record could not be stored has nothing to remove.
        let Some(index) = self.pending.iter().position(|(t, _)| *t == ticket) else {
            return Ok(());
        };
        let (_, key) = self.pending.swap_remove(index);
        let frame = key.rsplit_once('-').map_or(key.as_str(), |(frame, _)| frame).to_owned();
        self.evict(Victim { key, frame, uploaded: false }, "budget", summary)
    }

    /// Evicts records while the spool is over its limits.
    fn make_room(&mut self, summary: &mut Summary) -> anyhow::Result<()> {
        if let Some(spool) = &mut self.spool {
            spool.forget_vanished();
        }
        while let Some(victim) = self.spool.as_ref().and_then(Spool::next_victim) {
            self.pending.retain(|(_, key)| *key != victim.key);
            self.evict(victim, "quota", summary)?;
        }
        Ok(())
    }

    fn evict(&mut self, victim: Victim, cause: &str, summary: &mut Summary) -> anyhow::Result<()> {
        tracing::info!(record = %victim.key, cause, uploaded = victim.uploaded, "evicting record");
        let entry = LedgerEntry {
            record: Some(victim.key.clone()),
            ..self.entry(victim.frame, String::new(), "evicted")
        };
        self.ledger.append(&entry)?;
        summary.evicted += 1;
        if let Some(spool) = &mut self.spool
            && let Err(error) = spool.remove(&victim.key)
        {
            tracing::error!("cannot evict record: {error:#}");
        }
        Ok(())
    }

    /// Makes every record of the closed window final.
    fn finalize_pending(&mut self) {
        let Some(spool) = &mut self.spool else { return };
        for (_, key) in self.pending.drain(..) {
            match spool.finalize(&key) {
                Ok(()) => self.final_records += 1,
                // Still complete and still pending: the next start finalizes it.
                Err(error) => tracing::error!("cannot finalize record: {error:#}"),
            }
        }
    }

    fn store(
        &mut self,
        frame: &Frame,
        stats: &FrameStats,
        time: &str,
        rank: RecordRank,
        reason: String,
        pending: bool,
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
        let heat = stretch_rgb(&heat, frame_width, frame_height)?;
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
            value: calibration.gate.statistic.value(stats),
            priority: rank.priority,
            baseline: rank.baseline,
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
        let spool = match &mut self.spool {
            Some(spool) => spool,
            None => {
                let spool = Spool::open(&self.spool_folder, self.spool_limits)?;
                self.spool.insert(spool)
            }
        };
        spool.store(&key, &frame.id, &files, rank, pending)?;
        Ok(key)
    }

    /// Records made final (ready for the uplink) since start.
    pub fn final_records(&self) -> u64 {
        self.final_records
    }

    /// The spool folder.
    pub fn spool_folder(&self) -> PathBuf {
        self.spool_folder.clone()
    }
}

/// Opens the spool; on failure logs why and returns `None`, to be tried again per record.
fn open_spool(folder: &Path, limits: SpoolLimits) -> Option<Spool> {
    match Spool::open(folder, limits) {
        Ok(spool) => {
            let scan = spool.scan_report();
            tracing::info!(
                folder = %folder.display(),
                records = scan.records,
                bytes = spool.bytes(),
                finalized = scan.finalized,
                removed_partial = scan.removed_partial,
                ignored = scan.ignored,
                "spool opened"
            );
            Some(spool)
        }
        Err(error) => {
            tracing::error!("spool unavailable, frames are still scored and ledgered: {error:#}");
            None
        }
    }
}

/// Reads a region-of-interest mask (any image, taken as gray) scaled to the model output.
fn load_roi(path: &Path, width: usize, height: usize) -> anyhow::Result<Vec<u8>> {
    let mask = image::open(path)
        .with_context(|| format!("cannot read region-of-interest mask {}", path.display()))?
        .to_luma8();
    let mask = imageops::resize(&mask, width as u32, height as u32, FilterType::Nearest);
    if mask.pixels().all(|p| p[0] == 0) {
        anyhow::bail!("{}: expected a mask with some non-zero pixels, found none", path.display());
    }
    Ok(mask.into_raw())
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

/// `image` stretched to `width` x `height` as the model input is ([`stretch_rgb_into`]):
/// `imageops::resize` would hold a float copy of the frame-sized image on the way, megabytes
/// of peak memory for each kept frame.
fn stretch_rgb(image: &RgbImage, width: u32, height: u32) -> anyhow::Result<RgbImage> {
    let mut stretched =
        fast_image_resize::images::Image::new(width, height, fast_image_resize::PixelType::U8x3);
    stretch_rgb_into(&mut fast_image_resize::Resizer::new(), image, &mut stretched)
        .context("cannot resize the heat map to the frame")?;
    RgbImage::from_raw(width, height, stretched.into_vec()).context("resized image size mismatch")
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
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
