//! `qualmd`: runs the segmentation model on every frame, keeps the uncertain ones.
//!
//! Exit codes: 0 when the source was processed to its end or a SIGTERM/SIGINT drained the run
//! (bad frames are skipped, not fatal), 1 when start-up failed (another qualmd holding the
//! spool's lock included) or the ledger could not be written, 2 for usage errors. A second
//! SIGTERM/SIGINT during the drain exits with 1 at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use qualm_daemon::config::{Config, SourceConfig};
use qualm_daemon::metrics::{self, Metrics};
use qualm_daemon::mqtt::MqttPublisher;
use qualm_daemon::pipeline::Daemon;
use qualm_daemon::service::{self, DeviceConfig, Outputs, ServiceContext, Signals};
use qualm_daemon::status::{self, StatusIndicator, StatusLight, UplinkHealth};
use qualm_daemon::summary::Summaries;
use qualm_daemon::uplink::{Credentials, Uplink, UplinkHandle};

/// Run a segmentation model on camera frames, score how unsure it is on each one, and keep the
/// frames worth labeling as records in a spool folder. Every frame adds a line to the ledger.
///
/// Settings come from --config (TOML, paths relative to the file); flags override them.
#[derive(Debug, Parser)]
#[command(name = "qualmd", version, about, long_about)]
struct Args {
    /// Configuration file (TOML) with keys model, calibration, spool, ledger, max_frames,
    /// jpeg_quality, roi, spool_max_records, spool_max_bytes, a source table with frames or
    /// video, an optional policy table (budget, baseline, duplicates, cooldown; README) and an
    /// optional uplink table (S3 or HTTP PUT; README).
    #[arg(long, short)]
    config: Option<PathBuf>,

    /// Model card (TOML) of the ONNX model to run.
    #[arg(long)]
    model: Option<PathBuf>,

    /// Calibration file made by `qualm thresholds`; its model sha256 must match the model.
    #[arg(long, conflicts_with = "observe")]
    calibration: Option<PathBuf>,

    /// Ignore any calibration: score every frame into the ledger, keep none.
    #[arg(long)]
    observe: bool,

    /// Read frames from this folder of .jpg/.png files, in name order.
    #[arg(long, conflicts_with = "video")]
    frames: Option<PathBuf>,

    /// Read frames through ffmpeg from a video file, a stream URL (rtsp://, http://), or a
    /// V4L2 camera such as /dev/video0 (needs the v4l2 feature). Streams and cameras are
    /// live: reopened when they end, oldest frame dropped when inference falls behind.
    #[arg(long)]
    video: Option<PathBuf>,

    /// Start the source again whenever it ends [default: only for streams and cameras].
    #[arg(long = "loop")]
    restart: bool,

    /// Serve Prometheus metrics at this address, e.g. 127.0.0.1:9187 [default: none].
    #[arg(long)]
    metrics: Option<SocketAddr>,

    /// Folder for kept records.
    #[arg(long)]
    spool: Option<PathBuf>,

    /// Ledger file (JSON Lines, appended to).
    #[arg(long)]
    ledger: Option<PathBuf>,

    /// Stop after this many frames [default: all].
    #[arg(long)]
    max_frames: Option<u64>,

    /// Log filter, as in RUST_LOG (for example `info` or `qualm_daemon=debug`).
    #[arg(long, default_value = "info", env = "QUALMD_LOG")]
    log: String,
}

impl Args {
    /// The configuration file merged with the flags.
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config {
                model: self.model.clone().context("expected --model or --config, found neither")?,
                calibration: None,
                spool: self.spool.clone().context("expected --spool or --config, found neither")?,
                ledger: self
                    .ledger
                    .clone()
                    .context("expected --ledger or --config, found neither")?,
                source: SourceConfig { frames: None, video: None },
                max_frames: None,
                jpeg_quality: 90,
                roi: None,
                spool_max_records: None,
                spool_max_bytes: None,
                policy: Default::default(),
                device: DeviceConfig::default(),
                mqtt: None,
                decode: Default::default(),
                uplink: None,
            },
        };

        if let Some(model) = self.model {
            config.model = model;
        }
        if self.calibration.is_some() {
            config.calibration = self.calibration;
        }
        if self.observe {
            config.calibration = None;
        }
        if self.frames.is_some() || self.video.is_some() {
            config.source = SourceConfig { frames: self.frames, video: self.video };
        }
        if let Some(spool) = self.spool {
            config.spool = spool;
        }
        if let Some(ledger) = self.ledger {
            config.ledger = ledger;
        }
        if self.max_frames.is_some() {
            config.max_frames = self.max_frames;
        }
        if self.restart {
            config.device.restart = Some(true);
        }
        if self.metrics.is_some() {
            config.device.metrics = self.metrics;
        }
        config.validate()?;
        Ok(config)
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = args.into_config()?;
    // Handlers first: a SIGTERM while the model loads still ends the run cleanly.
    let signals = Signals::install()?;
    // Before anything slow: a wrong path, or a second qualmd on this spool, stops here. The
    // lock is held until the run ends.
    config.check_inputs()?;
    let _spool_lock = qualm_daemon::lock::lock_spool(&config.spool)?;
    // Device outputs before the model: a missing GPIO chip fails fast.
    let summary_interval = config.device.summary_interval()?;
    // The uplink's settings and credentials are checked before the model loads; its thread
    // starts once the spool is open (start-up finalizes and cleans records it would read).
    let uplink = match &config.uplink {
        Some(settings) => Some(Uplink::new(&config.spool, settings, Credentials::load(settings)?)?),
        None => None,
    };
    let mut light = match &config.device.status_gpio {
        Some(gpio) => {
            // Without an uplink nothing stores to the flag and the light never shows it down.
            let health: UplinkHealth =
                uplink.as_ref().map_or_else(|| Arc::new(AtomicBool::new(true)), Uplink::health);
            let pulse = Duration::from_millis(gpio.pulse_ms);
            Some(StatusLight::new(status::open_gpio(gpio)?, health, pulse))
        }
        None => None,
    };
    let publisher = match &config.mqtt {
        Some(mqtt) => Some(MqttPublisher::start(mqtt.settings()?)?),
        None => None,
    };
    let mut daemon = Daemon::new(&config)?;
    let capture = service::start_capture(&config)?;
    let uplink = uplink.map(Uplink::spawn).transpose()?;
    let waker = uplink.as_ref().map(UplinkHandle::waker);

    let metrics = match config.device.metrics {
        Some(address) => {
            let metrics = Arc::new(Metrics::new()?);
            metrics.watch_capture(capture.status());
            if let Some(publisher) = &publisher {
                metrics.watch_mqtt(publisher.status());
            }
            if let Some(uplink) = &uplink {
                metrics.watch_uplink(uplink.stats());
            }
            metrics::serve(address, Arc::clone(&metrics), config.spool.clone())?;
            Some(metrics)
        }
        None => None,
    };

    let context = ServiceContext {
        signals: &signals,
        metrics: metrics.as_deref(),
        calibration: config.calibration.as_deref(),
        max_frames: config.max_frames,
    };
    let mut summaries = match summary_interval {
        Some(interval) => Some(Summaries::open(&config.ledger, interval, Instant::now())?),
        None => None,
    };
    if let (Some(summaries), Some(publisher)) = (summaries.as_mut(), &publisher) {
        summaries.publish_to(publisher.sender());
    }
    let outputs = Outputs {
        status: light.as_mut().map(|light| light as &mut dyn StatusIndicator),
        summaries: summaries.as_mut(),
        uplink: waker.as_ref(),
    };
    let outcome = service::serve(&mut daemon, &capture, &context, outputs);

    // A source that ended gets one last upload pass; a stop signal (or a failed run) abandons
    // the record in flight, which stays in the spool for the next start.
    if let Some(uplink) = uplink {
        let drain = outcome.as_ref().is_ok_and(|outcome| !outcome.signalled);
        uplink.stop(drain, || signals.stopping())?;
    }
    // The last summary is in the ledger already; the broker gets a bounded chance at it.
    if let Some(publisher) = publisher {
        publisher.finish(Duration::from_secs(2));
    }
    let outcome = outcome?;
    let summary = outcome.frames;
    println!(
        "qualmd: {} frames, {} kept, {} evicted, {} not stored, {} failed, {} dropped, \
         {} non-finite, {:.1} frames/s{}; records in {}, ledger {}",
        summary.frames,
        summary.kept,
        summary.evicted,
        summary.spool_errors,
        summary.failed,
        outcome.dropped,
        summary.non_finite,
        summary.frames_per_second(),
        if outcome.signalled { ", stopped by signal" } else { "" },
        daemon.spool_folder().display(),
        config.ledger.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();

    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qualmd: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
