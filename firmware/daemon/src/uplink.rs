//! The uplink: sends the spool's records to S3-compatible object storage or to an HTTP(S)
//! ingest URL, on a thread of its own, and never loses one.
//!
//! The spool scan is the queue: every complete record folder `<spool>/<key>/` (names starting
//! with `.` are incomplete and ignored) is uploaded file by file to `<prefix>/<key>/<file>`,
//! `meta.json` last, so a record whose `meta.json` is on the server is complete there. Only
//! after the server confirmed every file (a 2xx answer) does the uplink create
//! `<spool>/<key>/.uploaded` (fsynced) and, with `delete_after_upload`, remove the folder.
//! Nothing is held only in memory: a restart resumes where the last run stopped, and a record
//! whose upload was cut off is sent again to the same object keys, which overwrites the same
//! bytes rather than adding a duplicate (record keys carry a hash of the frame).
//!
//! Failures are retried after an exponential backoff with jitter; a token bucket caps the
//! bandwidth of request bodies. Inference never waits on the network: the pipeline only writes
//! records, and the uplink finds them by scanning the spool every `scan_interval_seconds` or
//! when woken through an [`UplinkWaker`].

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::status::UplinkHealth;

/// Name of the marker a record folder gets once the server has every one of its files.
pub const UPLOADED_MARKER: &str = ".uploaded";

/// The record file uploaded last: its presence on the server means the record is complete.
const META_FILE: &str = "meta.json";

/// How long a presigned S3 URL stays valid; it is signed right before each request.
const PRESIGN_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// Bytes of a request body handed to the connection at a time (and taken from the bucket).
const BODY_CHUNK: usize = 16 * 1024;

/// Bytes of an error answer kept for the log.
const ERROR_BODY_LIMIT: usize = 512;

/// Consecutive failed passes after which the uplink counts as unhealthy (status light on).
pub const UNHEALTHY_AFTER_FAILURES: u64 = 3;

/// Environment variables read for credentials when no `credentials_file` is configured.
pub const ENV_ACCESS_KEY_ID: &str = "QUALM_UPLINK_ACCESS_KEY_ID";
/// See [`ENV_ACCESS_KEY_ID`]; `AWS_SECRET_ACCESS_KEY` is the fallback.
pub const ENV_SECRET_ACCESS_KEY: &str = "QUALM_UPLINK_SECRET_ACCESS_KEY";
/// Bearer token for the HTTP sink, sent as `Authorization: Bearer ...`.
pub const ENV_TOKEN: &str = "QUALM_UPLINK_TOKEN";

/// Which kind of server receives the records.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// S3-compatible object storage; requests are signed with AWS Signature Version 4.
    S3,
    /// Plain HTTP(S) `PUT` of each file under a base URL (WebDAV servers, ingest services).
    Http,
}

/// The `[uplink]` table of qualmd's configuration. Without it nothing is uploaded.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// `"s3"` or `"http"`.
    pub sink: SinkKind,
    /// S3: the endpoint (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`).
    /// HTTP: the base URL that object keys are appended to.
    pub url: String,
    /// S3 only: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// S3 only: the region named in the signature [default: `us-east-1`].
    #[serde(default = "default_region")]
    pub region: String,
    /// S3 only: address the bucket as a host name (`bucket.endpoint`) instead of as the first
    /// path segment [default: false, path style, which every S3-compatible server accepts].
    #[serde(default)]
    pub virtual_host: bool,
    /// Prefix of every object key, without slashes at either end [default: none].
    #[serde(default)]
    pub prefix: String,
    /// TOML file with `access_key_id` and `secret_access_key` (S3) or `token` (HTTP). Without
    /// it they come from the environment: `QUALM_UPLINK_ACCESS_KEY_ID` and
    /// `QUALM_UPLINK_SECRET_ACCESS_KEY` (or `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`),
    /// `QUALM_UPLINK_TOKEN`. Never logged.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Remove a record folder once the server has all of it [default: true]; when false the
    /// folder stays, marked by an empty `.uploaded` file.
    #[serde(default = "default_true")]
    pub delete_after_upload: bool,
    /// Upper bound on request body bytes per second [default: unlimited].
    #[serde(default)]
    pub bandwidth_bytes_per_second: Option<u64>,
    /// Seconds between scans of the spool when nothing wakes the uplink [default: 2].
    #[serde(default = "default_scan_interval")]
    pub scan_interval_seconds: f64,
    /// Wait after the first failure; each further failure doubles it [default: 1].
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_seconds: f64,
    /// Longest wait between retries [default: 300].
    #[serde(default = "default_backoff_max")]
    pub backoff_max_seconds: f64,
    /// Longest time one request may take, connection to answer [default: 60].
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

fn default_scan_interval() -> f64 {
    2.0
}

fn default_backoff_initial() -> f64 {
    1.0
}

fn default_backoff_max() -> f64 {
    300.0
}

fn default_timeout() -> f64 {
    60.0
}

impl UplinkConfig {
    /// A configuration with every optional key at its default.
    pub fn new(sink: SinkKind, url: &str) -> Self {
        Self {
            sink,
            url: url.into(),
            bucket: None,
            region: default_region(),
            virtual_host: false,
            prefix: String::new(),
            credentials_file: None,
            delete_after_upload: true,
            bandwidth_bytes_per_second: None,
            scan_interval_seconds: default_scan_interval(),
            backoff_initial_seconds: default_backoff_initial(),
            backoff_max_seconds: default_backoff_max(),
            timeout_seconds: default_timeout(),
        }
    }

    /// Checks the values that the file format cannot.
    ///
    /// # Errors
    /// When the URL is not `http(s)://`, an S3 sink has no bucket, the prefix has characters
    /// other than letters, digits, `-`, `_`, `.` and inner `/`, or a number is out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            bail!("uplink: expected url to start with http:// or https://, found {:?}", self.url);
        }
        if self.sink == SinkKind::S3 && self.bucket.as_deref().is_none_or(str::is_empty) {
            bail!("uplink: expected a bucket for sink \"s3\", found none");
        }
        let prefix = self.prefix.trim_matches('/');
        if !prefix.is_empty() && !prefix.split('/').all(is_safe_name) {
            bail!(
                "uplink: expected prefix of letters, digits, '-', '_', '.' and inner '/', \
                 found {:?}",
                self.prefix
            );
        }
        if self.bandwidth_bytes_per_second == Some(0) {
            bail!("uplink: expected bandwidth_bytes_per_second above 0, found 0");
        }
        for (name, value) in [
            ("scan_interval_seconds", self.scan_interval_seconds),
            ("backoff_initial_seconds", self.backoff_initial_seconds),
            ("backoff_max_seconds", self.backoff_max_seconds),
            ("timeout_seconds", self.timeout_seconds),
        ] {
            if !(value.is_finite() && value > 0.0 && value < 1e9) {
                bail!("uplink: expected {name} to be a positive number of seconds, found {value}");
            }
        }
        if self.backoff_max_seconds < self.backoff_initial_seconds {
            bail!(
                "uplink: expected backoff_max_seconds >= backoff_initial_seconds ({}), found {}",
                self.backoff_initial_seconds,
                self.backoff_max_seconds
            );
        }
        Ok(())
    }
}

/// A secret string; its `Debug` form never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What the uplink signs or authenticates with. `Debug` redacts the secrets.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// S3 access key id (not secret on its own, but kept out of logs all the same).
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    /// S3 secret access key.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Bearer token for the HTTP sink.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl Credentials {
    /// Reads the configured credentials file, or the environment when there is none.
    ///
    /// # Errors
    /// When the file cannot be read or is not valid TOML with the expected keys.
    pub fn load(config: &UplinkConfig) -> anyhow::Result<Self> {
        if let Some(path) = &config.credentials_file {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read uplink credentials {}", path.display()))?;
            // The parser's message could quote a line of the file, so it is left out.
            return toml::from_str(&text).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a valid credentials file: expected TOML with access_key_id and \
                     secret_access_key, or token",
                    path.display()
                )
            });
        }

        let var = |names: &[&str]| {
            names.iter().find_map(|name| std::env::var(name).ok()).map(Secret::new)
        };
        Ok(Self {
            access_key_id: var(&[ENV_ACCESS_KEY_ID, "AWS_ACCESS_KEY_ID"]),
            secret_access_key: var(&[ENV_SECRET_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY"]),
            token: var(&[ENV_TOKEN]),
        })
    }
}

/// Why an upload attempt failed; every variant is retried after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The request could not be sent or its answer not read (refused, timed out, cut off).
    #[error("cannot put object {object}: {source}")]
    Request {
        /// Object key.
        object: String,
        /// What the HTTP client reported.
        source: ureq::Error,
    },
    /// The server answered with a status other than 2xx.
    #[error("server refused object {object}: expected a 2xx answer, found {status}: {body}")]
    Status {
        /// Object key.
        object: String,
        /// HTTP status code.
        status: u16,
        /// Start of the answer's body.
        body: String,
    },
    /// The uplink was told to stop at once; the record in flight stays pending.
    #[error("stopped before object {object} was confirmed")]
    Stopped {
        /// Object key of the file abandoned (or next to send).
        object: String,
    },
    /// A file of the spool could not be read, marked or removed.
    #[error("cannot {action} {path}: {source}")]
    Spool {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Counts of one pass over the spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Records the server confirmed in this pass.
    pub records: u64,
    /// Body bytes the server confirmed in this pass.
    pub bytes: u64,
}

/// What the uplink thread reports to the metrics endpoint and the status light; updated
/// with relaxed atomics, read at any time.
#[derive(Debug)]
pub struct UplinkStats {
    records: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    refused: AtomicU64,
    pending: AtomicU64,
    /// Modification time (Unix milliseconds) of the oldest record not yet sent; 0 for none.
    oldest_pending_ms: AtomicU64,
    consecutive_failures: AtomicU64,
    healthy: UplinkHealth,
}

impl UplinkStats {
    fn new() -> Self {
        Self {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            oldest_pending_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Records the server confirmed since start.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Body bytes of confirmed files since start.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Failed passes (refused, timed out, cut off, non-2xx, spool errors) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records skipped since start because the server refused them for good (see
    /// [`refuses_the_record`]).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Records waiting in the spool, as of the last scan, less those sent since.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Age at `now` of the oldest record not yet sent, as of the last scan; zero when none.
    pub fn lag(&self, now: SystemTime) -> Duration {
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => now
                .duration_since(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .unwrap_or(Duration::ZERO),
        }
    }

    /// The health flag: false after [`UNHEALTHY_AFTER_FAILURES`] failed passes in a row, true
    /// again after a pass without failure.
    pub fn health(&self) -> UplinkHealth {
        Arc::clone(&self.healthy)
    }

    /// One record of the scan is done with: sent (`Some(bytes)`), or gone or sent earlier.
    fn done(&self, sent: Option<u64>) {
        if let Some(bytes) = sent {
            self.records.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        let _ =
            self.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn scanned(&self, pending: u64, oldest: Option<SystemTime>) {
        let ms = oldest
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        self.pending.store(pending, Ordering::Relaxed);
        self.oldest_pending_ms.store(ms, Ordering::Relaxed);
    }

    fn pass_ended(&self, failed: bool) {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let run = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if run >= UNHEALTHY_AFTER_FAILURES {
                self.healthy.store(false, Ordering::Relaxed);
            }
        } else {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.healthy.store(true, Ordering::Relaxed);
        }
    }
}

/// Where files go: a signer for S3, or a base URL for plain PUT.
enum Sink {
    S3 { bucket: rusty_s3::Bucket, credentials: Option<rusty_s3::Credentials> },
    Http { base: String, token: Option<Secret> },
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::S3 { bucket, credentials } => f
                .debug_struct("S3")
                .field("url", &bucket.base_url().as_str())
                .field("credentials", &credentials.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::Http { base, token } => f
                .debug_struct("Http")
                .field("base", base)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl Sink {
    fn new(config: &UplinkConfig, credentials: Credentials) -> anyhow::Result<Self> {
        match config.sink {
            SinkKind::S3 => {
                let endpoint: url::Url = config
                    .url
                    .parse()
                    .with_context(|| format!("uplink: {:?} is not a valid url", config.url))?;
                let style = if config.virtual_host {
                    rusty_s3::UrlStyle::VirtualHost
                } else {
                    rusty_s3::UrlStyle::Path
                };
                let name = config.bucket.clone().unwrap_or_default();
                let bucket = rusty_s3::Bucket::new(endpoint, style, name, config.region.clone())
                    .with_context(|| {
                        format!(
                            "uplink: cannot address bucket {:?} at {}",
                            config.bucket, config.url
                        )
                    })?;
                let credentials = match (credentials.access_key_id, credentials.secret_access_key) {
                    (Some(key), Some(secret)) => {
                        Some(rusty_s3::Credentials::new(key.expose(), secret.expose()))
                    }
                    // Unsigned requests would be refused on every retry while the spool fills:
                    // refuse to start instead.
                    (None, None) => bail!(
                        "uplink: the s3 sink expected an access key id and a secret access key \
                         (credentials_file, {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}, or \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), found none"
                    ),
                    _ => bail!(
                        "uplink: expected both an S3 access key id and a secret access key, \
                         found only one"
                    ),
                };
                Ok(Self::S3 { bucket, credentials })
            }
            SinkKind::Http => Ok(Self::Http {
                base: config.url.trim_end_matches('/').into(),
                token: credentials.token,
            }),
        }
    }

    /// The URL a `PUT` of `object` goes to; S3 URLs are presigned for this request.
    fn put_url(&self, object: &str) -> String {
        use rusty_s3::S3Action;
        match self {
            Self::S3 { bucket, credentials } => {
                bucket.put_object(credentials.as_ref(), object).sign(PRESIGN_VALIDITY).into()
            }
            Self::Http { base, .. } => format!("{base}/{object}"),
        }
    }

    fn bearer(&self) -> Option<&Secret> {
        match self {
            Self::Http { token, .. } => token.as_ref(),
            Self::S3 { .. } => None,
        }
    }
}

/// A token bucket over body bytes: refills at `rate` bytes per second up to `capacity`, and
/// lets a sender run into debt that it then waits off, so long runs keep to `rate`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. Bursts hold at most a quarter second of `rate`, and at most 64 KiB, so
    /// the cap holds over short uploads too.
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = (rate / 4.0).clamp(1.0, 64.0 * 1024.0);
        Self { rate, capacity, tokens: capacity, last: now }
    }

    /// Takes `bytes` tokens at `now` and returns how long the sender must wait before sending
    /// them: zero while the bucket holds enough, else the time the debt takes to refill.
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Exponential backoff with "equal jitter": the `n`-th wait after consecutive failures is
/// drawn uniformly from `[c / 2, c]` with `c = min(max, initial * 2^n)`, so retries of many
/// cameras spread out, yet none retries sooner than half the nominal wait.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    random: fastrand::Rng,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, failures: 0, random: fastrand::Rng::new() }
    }

    /// The nominal (largest) wait after the current count of failures.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Counts one more failure and returns how long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling / 2 + ceiling.mul_f64(0.5 * self.random.f64())
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A request body read from memory in chunks, each paid for from the token bucket first.
struct ThrottledBody<'a> {
    bytes: &'a [u8],
    position: usize,
    bucket: Option<&'a mut TokenBucket>,
    /// Set when the uplink must stop at once: the body then ends in an error, so the server
    /// never confirms the file and no marker is written.
    abort: &'a AtomicBool,
}

impl Read for ThrottledBody<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let rest = &self.bytes[self.position..];
        let n = rest.len().min(buffer.len()).min(BODY_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        if let Some(bucket) = self.bucket.as_deref_mut() {
            let wait = bucket.take(n, Instant::now());
            // Slept in slices, so a stop request is seen within a tenth of a second.
            let until = Instant::now() + wait;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if self.abort.load(Ordering::Relaxed) || left.is_zero() {
                    break;
                }
                thread::sleep(left.min(Duration::from_millis(100)));
            }
        }
        if self.abort.load(Ordering::Relaxed) {
            return Err(io::Error::other("uplink stopping"));
        }
        buffer[..n].copy_from_slice(&rest[..n]);
        self.position += n;
        Ok(n)
    }
}

/// Sends the spool's records to the configured server; see the module docs.
#[derive(Debug)]
pub struct Uplink {
    spool: PathBuf,
    prefix: String,
    sink: Sink,
    agent: ureq::Agent,
    bucket: Option<TokenBucket>,
    backoff: Backoff,
    scan_interval: Duration,
    delete_after_upload: bool,
    stats: Arc<UplinkStats>,
    abort: Arc<AtomicBool>,
    /// The record in flight: its key, the files the server already confirmed, and their
    /// bytes. A retry resumes after them; restarting the whole record would never finish one
    /// on a link that fails more often than every few requests.
    progress: Option<(String, Vec<String>, u64)>,
    /// Records the server refused with a status that names the request itself (see
    /// [`refuses_the_record`]): skipped until qualmd restarts, so that they do not hold up
    /// the records after them or resend their bodies on every pass.
    refused: BTreeSet<String>,
}

/// Whether an HTTP status refuses this one request rather than every upload: a bad or too
/// large request (400, 411, 413, 414, 415, 422). Credentials (401, 403), a missing bucket or
/// path (404, 405), timeouts and rate limits (408, 429) and server errors affect every record
/// and end the pass instead.
pub fn refuses_the_record(status: u16) -> bool {
    matches!(status, 400 | 411 | 413 | 414 | 415 | 422)
}

/// Whether a record or file name is safe to use in an object key and URL unescaped.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn spool_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UploadError {
    let path = path.to_path_buf();
    move |source| UploadError::Spool { action, path, source }
}

fn sync_folder(folder: &Path) -> Result<(), UploadError> {
    fs::File::open(folder).and_then(|f| f.sync_all()).map_err(spool_error("sync folder", folder))
}

/// The files of a record folder to upload, in upload order: by name, `meta.json` last.
/// `None` when the folder vanished (the spool bound may evict a record at any time).
///
/// # Errors
/// When the folder cannot be listed for another reason.
fn record_files(folder: &Path) -> Result<Option<Vec<String>>, UploadError> {
    let entries = match fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(spool_error("list record", folder)(error)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(spool_error("list record", folder))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if !is_safe_name(&name) {
            tracing::warn!(
                file = %entry.path().display(),
                "uplink: skipping a file whose name cannot be an object key"
            );
            continue;
        }
        files.push(name);
    }
    files.sort_by_key(|name| (name == META_FILE, name.clone()));
    Ok(Some(files))
}

impl Uplink {
    /// An uplink for the records of `spool`.
    ///
    /// # Errors
    /// When the configuration is invalid (see [`UplinkConfig::validate`]) or the S3 endpoint
    /// cannot be addressed.
    pub fn new(
        spool: &Path,
        config: &UplinkConfig,
        credentials: Credentials,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let sink = Sink::new(config, credentials)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_seconds)))
            .http_status_as_error(false)
            .user_agent(concat!("qualmd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let now = Instant::now();
        Ok(Self {
            spool: spool.to_path_buf(),
            prefix: config.prefix.trim_matches('/').to_string(),
            sink,
            agent,
            bucket: config.bandwidth_bytes_per_second.map(|rate| TokenBucket::new(rate, now)),
            backoff: Backoff::new(
                Duration::from_secs_f64(config.backoff_initial_seconds),
                Duration::from_secs_f64(config.backoff_max_seconds),
            ),
            scan_interval: Duration::from_secs_f64(config.scan_interval_seconds),
            delete_after_upload: config.delete_after_upload,
            stats: Arc::new(UplinkStats::new()),
            abort: Arc::new(AtomicBool::new(false)),
            progress: None,
            refused: BTreeSet::new(),
        })
    }

    /// Counters, pending records, lag and health, shared with the thread once spawned.
    pub fn stats(&self) -> Arc<UplinkStats> {
        Arc::clone(&self.stats)
    }

    /// The health flag the status light reads (see [`UplinkStats::health`]).
    pub fn health(&self) -> UplinkHealth {
        self.stats.health()
    }

    /// The object key of a file of a record: `<prefix>/<record>/<file>`.
    pub fn object_key(&self, record: &str, file: &str) -> String {
        if self.prefix.is_empty() {
            format!("{record}/{file}")
        } else {
            format!("{}/{record}/{file}", self.prefix)
        }
    }

    /// Record keys waiting in the spool, in name order (oldest frames first).
    ///
    /// # Errors
    /// When the spool folder cannot be listed.
    pub fn pending(&self) -> Result<Vec<String>, UploadError> {
        let entries = match fs::read_dir(&self.spool) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(spool_error("list spool", &self.spool)(error)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(spool_error("list spool", &self.spool))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || name.starts_with('.') {
                continue;
            }
            if !is_safe_name(&name) {
                tracing::warn!(
                    record = %entry.path().display(),
                    "uplink: skipping a record whose name cannot be an object key"
                );
                continue;
            }
            let uploaded = entry.path().join(UPLOADED_MARKER).exists();
            if !uploaded || self.delete_after_upload {
                keys.push(name);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Uploads every pending record once, in name order; stops at the first failure. A record
    /// the server refuses for good ([`refuses_the_record`]) is skipped from then on, logged
    /// and counted, and the pass goes on with the next one.
    ///
    /// # Errors
    /// The first other failure; the records before it are confirmed and marked, the one that
    /// failed and those after it stay pending.
    pub fn upload_pending(&mut self) -> Result<PassSummary, UploadError> {
        let keys = self.pending()?;
        // The oldest waiting record, by when its meta.json was written, gives the upload lag.
        let oldest = keys
            .iter()
            .filter_map(|key| fs::metadata(self.spool.join(key).join(META_FILE)).ok())
            .filter_map(|meta| meta.modified().ok())
            .min();
        self.stats.scanned(keys.len() as u64, oldest);

        let mut summary = PassSummary::default();
        for key in keys {
            if self.abort.load(Ordering::Relaxed) {
                return Err(UploadError::Stopped { object: self.object_key(&key, "") });
            }
            if self.refused.contains(&key) {
                continue;
            }
            let sent = match self.upload_record(&key) {
                Err(UploadError::Status { object, status, body }) if refuses_the_record(status) => {
                    tracing::warn!(
                        record = key,
                        object,
                        status,
                        body,
                        "uplink: the server refuses this record; it stays in the spool and is \
                         not sent again until qualmd restarts"
                    );
                    self.progress = None;
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    self.refused.insert(key);
                    continue;
                }
                other => other?,
            };
            self.stats.done(sent);
            if let Some(bytes) = sent {
                summary.records += 1;
                summary.bytes += bytes;
            }
        }
        // Records that came during the pass are counted at the next scan.
        self.stats.scanned(0, None);
        Ok(summary)
    }

    /// Uploads one record, marks it and (when configured) removes it. Returns the body bytes
    /// sent, or `None` when there was nothing to send (already marked, or the record vanished).
    fn upload_record(&mut self, key: &str) -> Result<Option<u64>, UploadError> {
        let folder = self.spool.join(key);
        let marker = folder.join(UPLOADED_MARKER);
        if marker.exists() {
            // A crash between marking and removing: finish the removal.
            self.remove(&folder)?;
            return Ok(None);
        }

        let Some(files) = record_files(&folder)? else {
            tracing::debug!(record = key, "uplink: record vanished before upload");
            return Ok(None);
        };
        if self.progress.as_ref().is_none_or(|(record, ..)| record != key) {
            self.progress = Some((key.to_owned(), Vec::new(), 0));
        }
        for file in &files {
            if self.progress.as_ref().is_some_and(|(_, done, _)| done.contains(file)) {
                continue;
            }
            let path = folder.join(file);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(record = key, "uplink: record vanished during upload");
                    return Ok(None);
                }
                Err(error) => return Err(spool_error("read", &path)(error)),
            };
            let object = self.object_key(key, file);
            match self.put(&object, file, &bytes) {
                Ok(()) => {
                    if let Some((_, done, sent)) = &mut self.progress {
                        done.push(file.clone());
                        *sent += bytes.len() as u64;
                    }
                }
                // Evicted for room while in flight: nothing to retry, and no error to count.
                Err(error) if !folder.is_dir() => {
                    tracing::debug!(record = key, %error, "uplink: record vanished during upload");
                    return Ok(None);
                }
                Err(error) => return Err(error),
            }
        }

        // The marker is durable before the folder goes, so a crash in between never sends
        // the record again; a crash before it only repeats idempotent PUTs. `create_new`
        // never makes the folder: a record the spool evicted (renamed away) meanwhile is not
        // marked, and its folder name is not brought back.
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .and_then(|f| f.sync_all());
        match created {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(record = key, "uplink: record evicted before it was marked");
                return Ok(None);
            }
            Err(error) => return Err(spool_error("mark as uploaded", &marker)(error)),
        }
        sync_folder(&folder)?;
        let sent = self.progress.take().map_or(0, |(_, _, sent)| sent);
        tracing::debug!(
            record = key,
            files = files.len(),
            bytes = sent,
            "uplink: record confirmed"
        );
        self.remove(&folder)?;
        Ok(Some(sent))
    }

    fn remove(&self, folder: &Path) -> Result<(), UploadError> {
        if !self.delete_after_upload {
            return Ok(());
        }
        match fs::remove_dir_all(folder) {
            Ok(()) => sync_folder(&self.spool),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(spool_error("remove uploaded record", folder)(error)),
        }
    }

    /// One `PUT` of `bytes` to `object`; `Ok` only on a 2xx answer.
    fn put(&mut self, object: &str, file: &str, bytes: &[u8]) -> Result<(), UploadError> {
        let url = self.sink.put_url(object);
        let mut request = self
            .agent
            .put(&url)
            .header("content-type", content_type(file))
            .header("content-length", bytes.len().to_string());
        if let Some(token) = self.sink.bearer() {
            request = request.header("authorization", format!("Bearer {}", token.expose()));
        }

        let abort = &*self.abort;
        let mut body = ThrottledBody { bytes, position: 0, bucket: self.bucket.as_mut(), abort };
        let request_error = |source| UploadError::Request { object: object.into(), source };
        let response = match request.send(ureq::SendBody::from_reader(&mut body)) {
            Ok(response) => response,
            Err(_) if abort.load(Ordering::Relaxed) => {
                return Err(UploadError::Stopped { object: object.into() });
            }
            Err(error) => return Err(request_error(error)),
        };

        let status = response.status().as_u16();
        // Reading the answer to its end lets the connection be reused.
        let mut answer = Vec::new();
        let read = response.into_body().into_reader().take(64 * 1024).read_to_end(&mut answer);
        if !(200..300).contains(&status) {
            answer.truncate(ERROR_BODY_LIMIT);
            let body = String::from_utf8_lossy(&answer).into_owned();
            return Err(UploadError::Status { object: object.into(), status, body });
        }
        if let Err(error) = read {
            tracing::debug!(object, %error, "uplink: answer body cut off after a 2xx status");
        }
        tracing::trace!(object, status, bytes = bytes.len(), "uplink: object confirmed");
        Ok(())
    }

    /// Starts the uplink on a thread of its own, named `uplink`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn spawn(self) -> anyhow::Result<UplinkHandle> {
        let (sender, receiver) = mpsc::channel();
        let stats = self.stats();
        let abort = Arc::clone(&self.abort);
        let thread = thread::Builder::new()
            .name("uplink".into())
            .spawn(move || self.run(&receiver))
            .context("cannot start the uplink thread")?;
        Ok(UplinkHandle { sender, thread, stats, abort })
    }

    /// The uplink's loop: a pass over the spool, then a wait (the scan interval after a
    /// success, the backoff after a failure). A wake-up cuts the scan interval short but not a
    /// backoff, so a busy camera does not hammer a failing server. A stop request makes one
    /// last pass, which ends at its first failure, and returns; an abort ends the pass in
    /// flight at once.
    pub fn run(mut self, signals: &Receiver<Signal>) {
        let mut stopping = false;
        loop {
            let (wait, failed) = match self.upload_pending() {
                Ok(summary) => {
                    if summary.records > 0 {
                        tracing::info!(
                            records = summary.records,
                            bytes = summary.bytes,
                            "uplink: records sent"
                        );
                    }
                    self.stats.pass_ended(false);
                    self.backoff.reset();
                    (self.scan_interval, false)
                }
                Err(error @ UploadError::Stopped { .. }) => {
                    tracing::info!("uplink: {error}; records left in the spool for the next start");
                    return;
                }
                Err(error) => {
                    self.stats.pass_ended(true);
                    let wait = self.backoff.next_wait();
                    if stopping {
                        tracing::warn!(%error, "uplink: stopping with records left in the spool");
                    } else {
                        tracing::warn!(
                            %error,
                            retry_in = ?wait,
                            "uplink: upload failed, will retry"
                        );
                    }
                    (wait, true)
                }
            };
            if stopping {
                return;
            }
            stopping = wait_for_signal(signals, wait, failed);
        }
    }
}

/// Waits `wait` for the next pass; returns whether a stop was asked for. Wakes end the wait
/// unless `failed` (then the backoff runs out); queued wakes are taken in one go.
fn wait_for_signal(signals: &Receiver<Signal>, wait: Duration, failed: bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match signals.recv_timeout(left) {
            Ok(Signal::Wake) if failed => {}
            Ok(Signal::Wake) | Err(RecvTimeoutError::Timeout) => break,
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
        }
    }
    loop {
        match signals.try_recv() {
            Ok(Signal::Wake) => {}
            Ok(Signal::Stop) | Err(mpsc::TryRecvError::Disconnected) => return true,
            Err(mpsc::TryRecvError::Empty) => return false,
        }
    }
}

/// A message to the uplink thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// New records are in the spool: scan now instead of at the next interval.
    Wake,
    /// Make one last pass and end the thread.
    Stop,
}

/// Wakes the uplink thread; cheap to clone and to call from the frame loop.
#[derive(Clone, Debug)]
pub struct UplinkWaker(Sender<Signal>);

impl UplinkWaker {
    /// Asks for a scan now. Never blocks; a finished uplink ignores it.
    pub fn wake(&self) {
        let _ = self.0.send(Signal::Wake);
    }
}

/// The running uplink thread.
#[derive(Debug)]
pub struct UplinkHandle {
    sender: Sender<Signal>,
    thread: JoinHandle<()>,
    stats: Arc<UplinkStats>,
    abort: Arc<AtomicBool>,
}

impl UplinkHandle {
    /// A waker for the service loop to call after a record became final.
    pub fn waker(&self) -> UplinkWaker {
        UplinkWaker(self.sender.clone())
    }

    /// The thread's counters and health (see [`UplinkStats`]).
    pub fn stats(&self) -> Arc<UplinkStats> {
        Arc::clone(&self.stats)
    }

    /// Ends the thread and waits for it. With `drain`, it first makes one last pass, which
    /// stops at its first failure; without, or as soon as `interrupt` returns true (polled
    /// every 50 ms: a SIGTERM during the drain), the file in flight is abandoned (its record
    /// gets no marker). What is not sent stays in the spool for the next start.
    ///
    /// # Errors
    /// When the uplink thread panicked.
    pub fn stop(self, drain: bool, interrupt: impl Fn() -> bool) -> anyhow::Result<()> {
        if !drain {
            self.abort.store(true, Ordering::Relaxed);
        }
        let _ = self.sender.send(Signal::Stop);
        while !self.thread.is_finished() {
            if interrupt() {
                self.abort.store(true, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.thread.join().map_err(|_| anyhow::anyhow!("the uplink thread panicked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_waits_off_its_debt_at_the_rate() {
        // Rate 1000 B/s: capacity a quarter second, 250 B.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        assert_eq!(bucket.take(250, start), Duration::ZERO);
        // 500 B more with an empty bucket: half a second of debt.
        assert_eq!(bucket.take(500, start), Duration::from_millis(500));
        // After the debt is waited off, 100 B more cost 0.1 s.
        let later = start + Duration::from_millis(500);
        let wait = bucket.take(100, later);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // A long pause refills only up to capacity: 300 B after 10 s cost 50 ms.
        let much_later = later + Duration::from_secs(10);
        let wait = bucket.take(300, much_later);
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn token_bucket_total_time_is_bytes_over_rate() {
        // Sending 1,000,000 B in 16 KiB chunks at 200,000 B/s, sleeping as told, takes
        // (1,000,000 - capacity) / rate seconds: capacity = min(rate / 4, 64 KiB) = 50,000.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(200_000, start);
        let mut now = start;
        let mut left = 1_000_000usize;
        while left > 0 {
            let n = left.min(BODY_CHUNK);
            now += bucket.take(n, now);
            left -= n;
        }
        let seconds = (now - start).as_secs_f64();
        assert!((seconds - 950_000.0 / 200_000.0).abs() < 1e-6, "{seconds}");
    }

    #[test]
    fn backoff_grows_doubling_within_jitter_and_stays_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for ceiling in ceilings {
            let ceiling = Duration::from_millis(ceiling);
            assert_eq!(backoff.ceiling(), ceiling);
            let wait = backoff.next_wait();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{wait:?} outside [{ceiling:?}/2, ..]");
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        // Thousands of failures neither overflow nor pass the cap.
        for _ in 0..5000 {
            assert!(backoff.next_wait() <= Duration::from_secs(2));
        }
    }

    #[test]
    fn wakes_cut_the_scan_interval_short_but_not_a_backoff() {
        let (sender, receiver) = mpsc::channel();
        let wait = Duration::from_millis(300);
        for _ in 0..3 {
            sender.send(Signal::Wake).unwrap();
        }
        // After a success: a wake ends the wait at once, and the queued ones are taken too.
        let start = Instant::now();
        assert!(!wait_for_signal(&receiver, wait, false));
        assert!(start.elapsed() < wait / 2, "{:?}", start.elapsed());
        assert!(receiver.try_recv().is_err());

        // After a failure: the backoff runs out in full despite wakes.
        sender.send(Signal::Wake).unwrap();
        let start = Instant::now();
        assert!(!wait_for_signal(&receiver, wait, true));
        assert!(start.elapsed() >= wait, "{:?}", start.elapsed());

        // A stop ends any wait, and so does a dropped sender.
        sender.send(Signal::Stop).unwrap();
        assert!(wait_for_signal(&receiver, Duration::from_secs(60), true));
        drop(sender);
        assert!(wait_for_signal(&receiver, Duration::from_secs(60), false));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let credentials = Credentials {
            access_key_id: Some(Secret::new("AKIDEXAMPLE")),
            secret_access_key: Some(Secret::new("wJalrXUtnFEMI")),
            token: Some(Secret::new("tok-123")),
        };
        let text = format!("{credentials:?}");
        for secret in ["AKIDEXAMPLE", "wJalrXUtnFEMI", "tok-123"] {
            assert!(!text.contains(secret), "{text}");
        }

        let mut config = UplinkConfig::new(SinkKind::S3, "http://127.0.0.1:1");
        config.bucket = Some("frames".into());
        let uplink = Uplink::new(Path::new("spool"), &config, credentials.clone()).unwrap();
        let text = format!("{uplink:?}");
        assert!(!text.contains("wJalrXUtnFEMI") && !text.contains("AKIDEXAMPLE"), "{text}");

        let config = UplinkConfig::new(SinkKind::Http, "http://127.0.0.1:1/in");
        let uplink = Uplink::new(Path::new("spool"), &config, credentials).unwrap();
        assert!(!format!("{uplink:?}").contains("tok-123"));
    }

    #[test]
    fn an_s3_sink_without_credentials_does_not_start() {
        let mut config = UplinkConfig::new(SinkKind::S3, "http://127.0.0.1:1");
        config.bucket = Some("frames".into());
        let error = Uplink::new(Path::new("spool"), &config, Credentials::default()).unwrap_err();
        assert!(error.to_string().contains("found none"), "{error}");
    }

    #[test]
    fn credentials_file_is_read_and_a_bad_one_is_named_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        fs::write(&path, "access_key_id = \"id\"\nsecret_access_key = \"s3cr3t\"\n").unwrap();
        let mut config = UplinkConfig::new(SinkKind::S3, "http://127.0.0.1:1");
        config.credentials_file = Some(path.clone());
        let credentials = Credentials::load(&config).unwrap();
        assert_eq!(credentials.secret_access_key, Some(Secret::new("s3cr3t")));

        fs::write(&path, "secret_access_key = s3cr3t-unquoted\n").unwrap();
        let error = format!("{:#}", Credentials::load(&config).unwrap_err());
        assert!(error.contains("credentials.toml") && !error.contains("s3cr3t"), "{error}");
    }

    #[test]
    fn invalid_configurations_are_refused_with_the_key_named() {
        type Change = fn(&mut UplinkConfig);
        let cases: [(Change, &str); 5] = [
            (|c| c.url = "ftp://host".into(), "http:// or https://"),
            (|c| c.bucket = None, "bucket"),
            (|c| c.prefix = "a b".into(), "prefix"),
            (|c| c.bandwidth_bytes_per_second = Some(0), "bandwidth_bytes_per_second"),
            (|c| c.backoff_max_seconds = 0.5, "backoff_max_seconds"),
        ];
        for (change, expected) in cases {
            let mut config = UplinkConfig::new(SinkKind::S3, "http://127.0.0.1:1");
            config.bucket = Some("b".into());
            config.validate().unwrap();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn the_example_device_configuration_has_a_valid_uplink_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/qualmd.toml");
        let config = crate::config::Config::load(&path).unwrap();
        config.validate().unwrap();
        let uplink = config.uplink.unwrap();
        assert_eq!((uplink.sink, uplink.bucket.as_deref()), (SinkKind::S3, Some("camera-records")));
        // Relative to the configuration file, like every other path in it.
        assert_eq!(uplink.credentials_file, Some(path.with_file_name("uplink.toml")));
        assert_eq!(uplink.bandwidth_bytes_per_second, Some(500_000));
    }

    #[test]
    fn record_files_put_meta_last_and_skip_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["meta.json", "uncertainty.png", "frame.jpg", "mask.png", ".uploaded"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let files = record_files(dir.path()).unwrap().unwrap();
        assert_eq!(files, ["frame.jpg", "mask.png", "uncertainty.png", "meta.json"]);
        assert_eq!(record_files(&dir.path().join("gone")).unwrap(), None);
    }

    #[test]
    fn pending_ignores_hidden_and_marked_records() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b-2", "a-1", ".partial-c-3", "d-4"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        fs::write(dir.path().join("d-4").join(UPLOADED_MARKER), b"").unwrap();
        let mut config = UplinkConfig::new(SinkKind::Http, "http://127.0.0.1:1");
        config.delete_after_upload = false;
        let uplink = Uplink::new(dir.path(), &config, Credentials::default()).unwrap();
        assert_eq!(uplink.pending().unwrap(), ["a-1", "b-2"]);
        assert_eq!(uplink.object_key("a-1", "meta.json"), "a-1/meta.json");

        // With deletion on, a marked record is pending: its removal was cut short.
        config.delete_after_upload = true;
        config.prefix = "/cam-7/".into();
        let uplink = Uplink::new(dir.path(), &config, Credentials::default()).unwrap();
        assert_eq!(uplink.pending().unwrap(), ["a-1", "b-2", "d-4"]);
        assert_eq!(uplink.object_key("a-1", "frame.jpg"), "cam-7/a-1/frame.jpg");
    }
}
