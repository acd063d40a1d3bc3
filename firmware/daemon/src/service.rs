//! qualmd as a long-running service: the `[device]` settings, signals (SIGTERM and SIGINT
//! drain, SIGHUP reloads the calibration), systemd readiness and watchdog pings, and the loop
//! that takes frames from the capture thread.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sd_notify::NotifyState;
use serde::Deserialize;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::capture::{Capture, CaptureOptions, Next, Overflow};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{Daemon, Summary, open_source};
use crate::source::{is_camera_device, is_stream_url};
use crate::staged::{StagedFrames, run_staged};
use crate::status::{StatusGpioConfig, StatusIndicator};
use crate::summary::Summaries;
use crate::uplink::UplinkWaker;

/// The `[device]` table of the configuration: how qualmd runs on the camera.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Frames that may wait for inference; a live source drops the oldest beyond this.
    pub queue: usize,
    /// Drop the oldest frame when the queue is full. Default: yes for live sources (camera,
    /// stream URL), no for a folder or video file (they wait, and no frame is lost).
    pub drop_oldest: Option<bool>,
    /// Start the source again when it ends. Default: yes for live sources, no otherwise
    /// (set it to replay a recording forever, e.g. for a soak test).
    pub restart: Option<bool>,
    /// First wait before reopening an ended source, in milliseconds; doubles per failure.
    pub retry_initial_ms: u64,
    /// Longest wait before reopening, in milliseconds.
    pub retry_max_ms: u64,
    /// Address of the Prometheus endpoint (`GET /metrics`); none when absent. Keep it on
    /// 127.0.0.1 unless the network in front of the camera is trusted.
    pub metrics: Option<SocketAddr>,
    /// GPIO line of the status light, e.g. `{ chip = "/dev/gpiochip0", line = 17 }`; no light
    /// when absent.
    pub status_gpio: Option<StatusGpioConfig>,
    /// How often a summary line goes to the ledger, as a duration like `"60s"`; none when
    /// absent.
    pub summary_interval: Option<String>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            queue: 2,
            drop_oldest: None,
            restart: None,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            metrics: None,
            status_gpio: None,
            summary_interval: None,
        }
    }
}

impl DeviceConfig {
    /// The capture thread's options for `config`'s source.
    ///
    /// # Errors
    /// When the queue is empty or the retry times are zero or inverted.
    pub fn capture_options(&self, config: &Config) -> anyhow::Result<CaptureOptions> {
        if self.queue == 0 {
            anyhow::bail!("expected [device] queue of at least 1 frame, found 0");
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            anyhow::bail!(
                "expected 0 < [device] retry_initial_ms <= retry_max_ms, found {} and {}",
                self.retry_initial_ms,
                self.retry_max_ms
            );
        }
        let live =
            config.source.video.as_deref().is_some_and(|v| is_stream_url(v) || is_camera_device(v));
        let drop_oldest = self.drop_oldest.unwrap_or(live);
        Ok(CaptureOptions {
            capacity: self.queue,
            overflow: if drop_oldest { Overflow::DropOldest } else { Overflow::Block },
            restart: self.restart.unwrap_or(live),
            backoff_initial: Duration::from_millis(self.retry_initial_ms),
            backoff_max: Duration::from_millis(self.retry_max_ms),
        })
    }

    /// The summary interval, when set.
    ///
    /// # Errors
    /// When it does not parse as a duration or is zero.
    pub fn summary_interval(&self) -> anyhow::Result<Option<Duration>> {
        let Some(text) = self.summary_interval.as_deref() else { return Ok(None) };
        match humantime::parse_duration(text) {
            Ok(interval) if !interval.is_zero() => Ok(Some(interval)),
            _ => anyhow::bail!(
                "expected [device] summary_interval as a duration like \"60s\", found {text:?}"
            ),
        }
    }
}

/// Opens `config`'s source and starts the capture thread on it.
///
/// # Errors
/// When the source cannot be opened (the first time: later failures are retried) or the
/// device settings are invalid.
pub fn start_capture(config: &Config) -> anyhow::Result<Capture> {
    let options = config.device.capture_options(config)?;
    let source = open_source(config)?;
    let reopen_config = config.clone();
    Capture::start(source, Box::new(move || open_source(&reopen_config)), options)
}

/// Flags set by signal handlers and read once per frame.
#[derive(Debug)]
pub struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers: SIGTERM and SIGINT ask for a drain (a second one ends the
    /// process at once), SIGHUP asks for a calibration reload.
    ///
    /// # Errors
    /// When a handler cannot be installed.
    pub fn install() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for signal in [SIGTERM, SIGINT] {
            // Order matters: the exit-if-already-set handler runs before the flag is set.
            signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
                .context("cannot install a signal handler")?;
            signal_hook::flag::register(signal, Arc::clone(&stop))
                .context("cannot install a signal handler")?;
        }
        signal_hook::flag::register(SIGHUP, Arc::clone(&reload))
            .context("cannot install a signal handler")?;
        Ok(Self { stop, reload })
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether a reload was asked for since the last call.
    pub fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::Relaxed)
    }
}

/// Sends a state to systemd; only logged when it fails (no systemd is the normal case).
fn notify(state: NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot notify systemd: {error}");
    }
}

/// What the service loop needs besides the daemon and its capture.
#[derive(Debug)]
pub struct ServiceContext<'a> {
    /// Signal flags.
    pub signals: &'a Signals,
    /// Metrics to count frames into.
    pub metrics: Option<&'a Metrics>,
    /// Calibration file to read again on SIGHUP.
    pub calibration: Option<&'a Path>,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
}

/// Outputs the service loop drives besides the ledger and the metrics; all optional.
#[derive(Default)]
pub struct Outputs<'a> {
    /// The status light: ticked every loop turn, told of each kept frame.
    pub status: Option<&'a mut dyn StatusIndicator>,
    /// Periodic summary lines.
    pub summaries: Option<&'a mut Summaries>,
    /// The uplink, woken whenever a record became final.
    pub uplink: Option<&'a UplinkWaker>,
}

impl std::fmt::Debug for Outputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("status", &self.status.is_some())
            .field("summaries", &self.summaries)
            .field("uplink", &self.uplink.is_some())
            .finish()
    }
}

/// How a service run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServiceSummary {
    /// Frame counts.
    pub frames: Summary,
    /// Frames the capture thread dropped because the queue was full.
    pub dropped: u64,
    /// Whether a signal ended the run (rather than the source or `max_frames`).
    pub signalled: bool,
}

/// Runs frames from `capture` through `daemon` until the source ends, `max_frames` frames
/// were handled, or a stop signal arrives; then flushes the ledger. Tells systemd it is
/// ready at the start and stopping at the end, and pings its watchdog in between. Drives the
/// status light and writes summary lines when `outputs` holds them.
///
/// The frame loop is staged ([`crate::staged`]): a prepare thread and an inference thread run
/// ahead of this one, which scores, gates, stores and ledgers each frame in source order.
/// Frames still in those stages when a stop signal or `max_frames` ends the run are dropped
/// unledgered, like those still in the capture queue.
///
/// # Errors
/// When the ledger cannot be written, or a stage thread panicked.
pub fn serve(
    daemon: &mut Daemon,
    capture: &Capture,
    context: &ServiceContext<'_>,
    outputs: Outputs<'_>,
) -> anyhow::Result<ServiceSummary> {
    let mut inference =
        daemon.take_inference().context("the model already runs on another thread")?;
    let preparer = daemon.preparer();
    let result = run_staged(capture, preparer, &mut inference, |frames| {
        serve_frames(daemon, frames, capture, context, outputs)
    });
    daemon.restore_inference(inference);
    result
}

/// The statistics stage of [`serve`]: its loop on the calling thread.
fn serve_frames(
    daemon: &mut Daemon,
    frames: &StagedFrames,
    capture: &Capture,
    context: &ServiceContext<'_>,
    mut outputs: Outputs<'_>,
) -> anyhow::Result<ServiceSummary> {
    let mut summary = Summary::default();
    let started = Instant::now();
    // Ping at half the period systemd allows, as sd_watchdog_enabled(3) advises.
    let watchdog = sd_notify::watchdog_enabled().map(|period| period / 2);
    let mut last_ping = Instant::now();
    let capture_status = capture.status();
    let mut final_records = daemon.final_records();
    notify(NotifyState::Ready);

    // The poll timeout bounds how late a signal or watchdog ping is when no frame comes.
    let poll = watchdog.map_or(Duration::from_millis(200), |w| w.min(Duration::from_millis(200)));
    while !context.signals.stopping() && context.max_frames.is_none_or(|n| summary.frames < n) {
        if context.signals.take_reload() {
            reload(daemon, context.calibration);
        }
        if let Some(period) = watchdog.filter(|&p| last_ping.elapsed() >= p) {
            notify(NotifyState::Watchdog);
            last_ping += period;
        }
        // Once per turn, at least every poll timeout: pulses end and summaries go out on time
        // even when no frame comes.
        let now = Instant::now();
        if let Some(status) = outputs.status.as_deref_mut() {
            status.tick(now);
        }
        if let Some(summaries) = outputs.summaries.as_deref_mut() {
            summaries.write_if_due(now, &summary, capture_status.dropped())?;
        }

        let item = match frames.next_timeout(poll) {
            Next::Item(item) => item,
            Next::Idle => continue,
            Next::Ended => break,
        };
        let entry = daemon.handle_inferred(item, &mut summary)?;
        if let (true, Some(status)) = (entry.kept, outputs.status.as_deref_mut()) {
            status.frame_kept(Instant::now());
        }
        if let Some(summaries) = outputs.summaries.as_deref_mut() {
            summaries.observe(&entry);
        }
        if let Some(metrics) = context.metrics {
            metrics.record(&entry, daemon.last_inference());
        }
        // A channel send: never waits on the network.
        if let Some(uplink) = outputs.uplink.filter(|_| daemon.final_records() != final_records) {
            final_records = daemon.final_records();
            uplink.wake();
        }
    }

    let signalled = context.signals.stopping();
    if signalled {
        tracing::info!("stop signal: finishing after {} frames", summary.frames);
        notify(NotifyState::Stopping);
    }
    daemon.finish()?;
    // After `finish`: evictions of the last budget window belong to the last summary.
    if let Some(summaries) = outputs.summaries {
        summaries.finish(Instant::now(), &summary, capture_status.dropped())?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(ServiceSummary { frames: summary, dropped: capture_status.dropped(), signalled })
}

/// Reads the calibration file again; keeps the old one when the new one is refused.
fn reload(daemon: &mut Daemon, calibration: Option<&Path>) {
    notify(NotifyState::Reloading);
    match calibration {
        None => tracing::warn!("SIGHUP: no calibration file configured, nothing to reload"),
        Some(path) => {
            if let Err(error) = daemon.reload_calibration(path) {
                tracing::error!("SIGHUP: keeping the current calibration: {error:#}");
            }
        }
    }
    notify(NotifyState::Ready);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_table_reads_the_status_light_and_the_summary_interval() {
        let text = "status_gpio = { chip = \"/dev/gpiochip0\", line = 17 }\n\
                    summary_interval = \"90s\"";
        let device: DeviceConfig = toml::from_str(text).unwrap();
        let gpio = device.status_gpio.clone().unwrap();
        assert_eq!(
            (gpio.chip.to_str(), gpio.line, gpio.pulse_ms),
            (Some("/dev/gpiochip0"), 17, 150)
        );
        assert_eq!(device.summary_interval().unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(DeviceConfig::default().summary_interval().unwrap(), None);

        for bad in ["0s", "soon"] {
            let device = DeviceConfig { summary_interval: Some(bad.into()), ..device.clone() };
            let message = device.summary_interval().unwrap_err().to_string();
            assert!(message.contains("summary_interval as a duration"), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }
}
