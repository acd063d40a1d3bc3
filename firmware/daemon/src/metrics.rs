//! The Prometheus text endpoint: counters of frames seen, kept, dropped and failed, histograms
//! of the frame scores and of inference time, the spool's size, the source's state and the
//! uplink's progress (records and bytes sent, failures, pending records, upload lag).
//!
//! Served by a plain std listener on its own thread (one request at a time: a scraper asks
//! every few seconds), encoded by the `prometheus` crate's text encoder; no async runtime.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder,
    exponential_buckets, linear_buckets,
};

use crate::capture::CaptureStatus;
use crate::ledger::LedgerEntry;
use crate::mqtt::MqttStatus;
use crate::uplink::UplinkStats;

/// The uplink's metrics; they read 0 without an `[uplink]` table.
struct UplinkMetrics {
    records: IntCounter,
    bytes: IntCounter,
    failures: IntCounter,
    refused: IntCounter,
    pending: IntGauge,
    lag_seconds: Gauge,
    watched: Mutex<Option<Arc<UplinkStats>>>,
}

impl UplinkMetrics {
    fn new(r: &Registry) -> anyhow::Result<Self> {
        let lag = Gauge::new("qualmd_uplink_lag_seconds", "age of the oldest record not sent")
            .context("metric qualmd_uplink_lag_seconds")?;
        r.register(Box::new(lag.clone())).context("metric qualmd_uplink_lag_seconds")?;
        Ok(Self {
            records: counter(r, "qualmd_uplink_records_total", "records the server confirmed")?,
            bytes: counter(r, "qualmd_uplink_bytes_total", "bytes of confirmed records")?,
            failures: counter(r, "qualmd_uplink_failures_total", "failed upload passes")?,
            refused: counter(
                r,
                "qualmd_uplink_refused_records_total",
                "records the server refused for good, skipped until restart",
            )?,
            pending: gauge(r, "qualmd_uplink_pending_records", "records waiting to be sent")?,
            lag_seconds: lag,
            watched: Mutex::new(None),
        })
    }

    /// Copies the uplink thread's numbers in; counters only move forward.
    fn update(&self) {
        let Some(stats) = &*self.watched.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        self.records.inc_by(stats.records().saturating_sub(self.records.get()));
        self.bytes.inc_by(stats.bytes().saturating_sub(self.bytes.get()));
        self.failures.inc_by(stats.failures().saturating_sub(self.failures.get()));
        self.refused.inc_by(stats.refused().saturating_sub(self.refused.get()));
        self.pending.set(i64::try_from(stats.pending()).unwrap_or(i64::MAX));
        self.lag_seconds.set(stats.lag(std::time::SystemTime::now()).as_secs_f64());
    }
}

/// Every metric qualmd exports.
pub struct Metrics {
    registry: Registry,
    frames: IntCounter,
    kept: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    source_restarts: IntCounter,
    source_state: IntGauge,
    spool_bytes: IntGauge,
    mean_entropy: Histogram,
    mean_max_softmax: Histogram,
    inference_seconds: Histogram,
    /// Held while a frame is counted and while the text is encoded, so that one scrape sees
    /// the counters of a whole number of frames.
    consistent: Mutex<()>,
    capture: Mutex<Option<Arc<CaptureStatus>>>,
    mqtt_published: IntCounter,
    mqtt_failures: IntCounter,
    mqtt_dropped: IntCounter,
    mqtt_connected: IntGauge,
    mqtt: Mutex<Option<Arc<MqttStatus>>>,
    uplink: UplinkMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("frames", &self.frames.get()).finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntCounter> {
    let metric = IntCounter::new(name, help).with_context(|| format!("metric {name}"))?;
    registry.register(Box::new(metric.clone())).with_context(|| format!("metric {name}"))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> anyhow::Result<IntGauge> {
    let metric = IntGauge::new(name, help).with_context(|| format!("metric {name}"))?;
    registry.register(Box::new(metric.clone())).with_context(|| format!("metric {name}"))?;
    Ok(metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> anyhow::Result<Histogram> {
    let options = HistogramOpts::new(name, help).buckets(buckets);
    let metric = Histogram::with_opts(options).with_context(|| format!("metric {name}"))?;
    registry.register(Box::new(metric.clone())).with_context(|| format!("metric {name}"))?;
    Ok(metric)
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Errors
    /// Only on an invalid metric definition (a bug).
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        // Scores live in [0, 1]: twenty bins of 0.05. Inference on the boards we target takes
        // from a few milliseconds to about a second: 1 ms doubling up to 2 s.
        let unit = linear_buckets(0.05, 0.05, 20).context("score buckets")?;
        let seconds = exponential_buckets(0.001, 2.0, 12).context("time buckets")?;
        Ok(Self {
            frames: counter(r, "qualmd_frames_total", "frames read, including bad ones")?,
            kept: counter(r, "qualmd_frames_kept_total", "frames stored as records")?,
            failed: counter(r, "qualmd_frames_failed_total", "frames not read or not scored")?,
            dropped: counter(r, "qualmd_frames_dropped_total", "frames dropped, queue full")?,
            source_restarts: counter(r, "qualmd_source_restarts_total", "source reopen tries")?,
            source_state: gauge(r, "qualmd_source_state", "0 running, 1 retrying, 2 ended")?,
            spool_bytes: gauge(r, "qualmd_spool_bytes", "bytes of the records in the spool")?,
            mean_entropy: histogram(
                r,
                "qualmd_mean_entropy",
                "frame mean normalized entropy",
                unit.clone(),
            )?,
            mean_max_softmax: histogram(
                r,
                "qualmd_mean_max_softmax",
                "frame mean max-softmax",
                unit,
            )?,
            inference_seconds: histogram(
                r,
                "qualmd_inference_seconds",
                "model run time per frame",
                seconds,
            )?,
            mqtt_published: counter(r, "qualmd_mqtt_published_total", "summaries published")?,
            mqtt_failures: counter(r, "qualmd_mqtt_failures_total", "failed connects, publishes")?,
            mqtt_dropped: counter(r, "qualmd_mqtt_dropped_total", "summaries dropped, queue full")?,
            mqtt_connected: gauge(r, "qualmd_mqtt_connected", "1 while connected to the broker")?,
            mqtt: Mutex::new(None),
            uplink: UplinkMetrics::new(r)?,
            registry,
            consistent: Mutex::new(()),
            capture: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.consistent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reports the capture thread's counters from now on.
    pub fn watch_capture(&self, status: Arc<CaptureStatus>) {
        *self.capture.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// Reports the MQTT publisher's counters from now on.
    pub fn watch_mqtt(&self, status: Arc<MqttStatus>) {
        *self.mqtt.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// Reports the uplink thread's numbers from now on.
    pub fn watch_uplink(&self, stats: Arc<UplinkStats>) {
        *self.uplink.watched.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// Counts one frame from its ledger entry; `inference` is the model's run time for it.
    pub fn record(&self, entry: &LedgerEntry, inference: Duration) {
        let _consistent = self.lock();
        self.frames.inc();
        self.kept.inc_by(u64::from(entry.kept));
        self.failed.inc_by(u64::from(entry.error.is_some()));
        if let Some(stats) = &entry.stats {
            self.mean_entropy.observe(f64::from(stats.mean_entropy));
            self.mean_max_softmax.observe(f64::from(stats.mean_max_softmax));
            self.inference_seconds.observe(inference.as_secs_f64());
        }
    }

    /// The Prometheus text exposition of every metric; `spool` is measured now.
    ///
    /// # Errors
    /// Only when encoding fails (a bug).
    pub fn render(&self, spool: &Path) -> anyhow::Result<String> {
        // Walking the spool per scrape (seconds apart) is cheaper than tracking it per frame.
        self.spool_bytes.set(i64::try_from(folder_bytes(spool)).unwrap_or(i64::MAX));
        if let Some(status) = &*self.capture.lock().unwrap_or_else(|p| p.into_inner()) {
            // Counters only move forward: add what the capture thread counted since.
            self.dropped.inc_by(status.dropped().saturating_sub(self.dropped.get()));
            let restarts = status.restarts().saturating_sub(self.source_restarts.get());
            self.source_restarts.inc_by(restarts);
            self.source_state.set(status.state() as i64);
        }
        if let Some(status) = &*self.mqtt.lock().unwrap_or_else(|p| p.into_inner()) {
            self.mqtt_published
                .inc_by(status.published().saturating_sub(self.mqtt_published.get()));
            self.mqtt_failures.inc_by(status.failures().saturating_sub(self.mqtt_failures.get()));
            self.mqtt_dropped.inc_by(status.dropped().saturating_sub(self.mqtt_dropped.get()));
            self.mqtt_connected.set(i64::from(status.connected()));
        }
        self.uplink.update();

        let _consistent = self.lock();
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .context("cannot encode metrics")?;
        Ok(text)
    }
}

/// Bytes of the regular files under `folder` (0 when it cannot be read).
fn folder_bytes(folder: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(folder) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => folder_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Binds `address` and serves `GET /metrics` on a thread of its own.
///
/// # Errors
/// When the address cannot be bound.
pub fn serve(address: SocketAddr, metrics: Arc<Metrics>, spool: PathBuf) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .with_context(|| format!("cannot listen for metrics on {address}"))?;
    let bound = listener.local_addr().context("metrics listener has no address")?;
    tracing::info!("metrics on http://{bound}/metrics");
    thread::Builder::new()
        .name("qualmd-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(error) = answer(stream, &metrics, &spool) {
                    tracing::debug!("metrics request failed: {error:#}");
                }
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(())
}

/// Answers one HTTP/1.x request and closes the connection.
fn answer(stream: TcpStream, metrics: &Metrics, spool: &Path) -> anyhow::Result<()> {
    // A client that connects and says nothing must not hold the only serving thread.
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(16 * 1024);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers are not needed, but are read so the client sees an orderly close.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }

    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, kind, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        ("200 OK", prometheus::TEXT_FORMAT, metrics.render(spool)?)
    } else {
        ("404 Not Found", "text/plain", format!("expected GET /metrics, found {method} {path}\n"))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of an unlabeled metric line `name value` in exposition text.
    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
    }

    fn entry(kept: bool, error: bool) -> LedgerEntry {
        let mut entry: LedgerEntry = serde_json::from_str(
            r#"{"time": "", "frame": "f", "origin": "", "model_sha256": "", "kept": false,
                "reason": ""}"#,
        )
        .unwrap();
        entry.kept = kept;
        entry.error = error.then(String::new);
        entry
    }

    #[test]
    fn counters_and_spool_bytes_are_exported() {
        let metrics = Metrics::new().unwrap();
        for (kept, error) in [(true, false), (false, false), (false, true), (true, false)] {
            metrics.record(&entry(kept, error), Duration::from_millis(3));
        }
        let spool = tempfile::tempdir().unwrap();
        fs::create_dir(spool.path().join("a")).unwrap();
        fs::write(spool.path().join("a/frame.jpg"), [0u8; 1000]).unwrap();
        fs::write(spool.path().join("meta.json"), [0u8; 24]).unwrap();

        let text = metrics.render(spool.path()).unwrap();
        assert_eq!(value(&text, "qualmd_frames_total"), 4.0);
        assert_eq!(value(&text, "qualmd_frames_kept_total"), 2.0);
        assert_eq!(value(&text, "qualmd_frames_failed_total"), 1.0);
        assert_eq!(value(&text, "qualmd_spool_bytes"), 1024.0);
    }

    #[test]
    fn the_endpoint_answers_over_loopback() {
        let metrics = Arc::new(Metrics::new().unwrap());
        metrics.record(&entry(true, false), Duration::ZERO);
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        serve(address, Arc::clone(&metrics), PathBuf::from("/nonexistent")).unwrap();

        let text = scrape(address, "/metrics");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert_eq!(value(&text, "qualmd_frames_kept_total"), 1.0);
        assert!(scrape(address, "/other").starts_with("HTTP/1.1 404"));
    }

    fn scrape(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        text
    }
}
