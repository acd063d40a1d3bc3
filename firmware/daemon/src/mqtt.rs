//! Summary lines published to an MQTT broker (MQTT 3.1.1, plain TCP), besides the ledger.
//!
//! The inference loop hands each summary line's JSON to an [`MqttSender`], which only locks a
//! bounded queue: when the queue is full the oldest summary is dropped and counted, so the loop
//! never waits for the network. A thread of its own ([`MqttPublisher`]) connects, publishes the
//! queue in order (at QoS 1 a summary leaves the queue only once the broker acknowledged it),
//! pings the broker while idle, and reconnects with exponential backoff and jitter when the
//! broker is gone. A summary whose acknowledgement was lost is sent again after the reconnect:
//! QoS 1 is "at least once".
//!
//! The packets are encoded and decoded by `mqttbytes` (its `v4` module); the session around
//! them (CONNECT/CONNACK, PUBLISH/PUBACK, PINGREQ/PINGRESP, DISCONNECT) is the few functions of
//! `Session` over a blocking `TcpStream`, with a timeout on every read and write. No TLS:
//! publish to a broker on the device or the local network, and bridge it onward from there.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use mqttbytes::QoS;
use mqttbytes::v4::{self, ConnectReturnCode, Packet};
use serde::Deserialize;

use crate::uplink::Backoff;

/// Longest packet accepted from the broker; it only sends acknowledgements to a publisher.
const MAX_INCOMING_PACKET: usize = 64 * 1024;

/// Longest wait for a connection, a write or an acknowledgement while running.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[mqtt]` table of the configuration. Only `broker` is required.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker address as `host:port`, e.g. `"127.0.0.1:1883"`.
    pub broker: String,
    /// Topic of the summaries; `qualm/<hostname>/summary` when absent.
    #[serde(default)]
    pub topic: Option<String>,
    /// Client id; `qualmd-<hostname>` when absent.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Quality of service, 0 (at most once) or 1 (at least once, acknowledged).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Longest silence the broker allows before it drops the connection, as a duration like
    /// `"30s"` (1 s to 18 h); qualmd pings after half of it.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: String,
    /// Ask the broker to keep the last summary for subscribers that come later.
    #[serde(default)]
    pub retain: bool,
    /// User name sent on connect; none when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (surrounding whitespace is trimmed); needs `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password; needs `username`.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Summaries waiting for the broker; the oldest is dropped beyond this.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// First wait before connecting again, in milliseconds; doubles per failure.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest wait before connecting again, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive() -> String {
    "60s".into()
}

fn default_queue() -> usize {
    64
}

fn default_retry_initial_ms() -> u64 {
    500
}

fn default_retry_max_ms() -> u64 {
    60_000
}

impl MqttConfig {
    /// The configuration checked and completed: defaults filled in, the password read.
    ///
    /// # Errors
    /// When a value is out of range, the topic has wildcards, a password comes without a user
    /// name or from two places, or the password file or variable cannot be read.
    pub fn settings(&self) -> anyhow::Result<MqttSettings> {
        let broker = self.broker.trim();
        match broker.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => bail!("[mqtt]: expected broker as \"host:port\", found {:?}", self.broker),
        }
        let host = hostname();
        let topic = self.topic.clone().unwrap_or_else(|| format!("qualm/{host}/summary"));
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            bail!("[mqtt]: expected a topic without wildcards (+, #), found {topic:?}");
        }
        let qos = match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => bail!("[mqtt]: expected qos 0 or 1, found {other}"),
        };
        let keep_alive = humantime::parse_duration(&self.keep_alive)
            .ok()
            .and_then(|d| u16::try_from(d.as_secs()).ok())
            .filter(|&seconds| seconds > 0)
            .with_context(|| {
                let found = &self.keep_alive;
                format!("[mqtt]: expected keep_alive from \"1s\" to \"18h\", found {found:?}")
            })?;
        if self.queue == 0 {
            bail!("[mqtt]: expected queue of at least 1 summary, found 0");
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            bail!(
                "[mqtt]: expected 0 < retry_initial_ms <= retry_max_ms, found {} and {}",
                self.retry_initial_ms,
                self.retry_max_ms
            );
        }

        Ok(MqttSettings {
            broker: broker.to_owned(),
            topic,
            client_id: self.client_id.clone().unwrap_or_else(|| format!("qualmd-{host}")),
            qos,
            keep_alive_seconds: keep_alive,
            retain: self.retain,
            login: self.login()?,
            queue: self.queue,
            retry_initial: Duration::from_millis(self.retry_initial_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
        })
    }

    fn login(&self) -> anyhow::Result<Option<Login>> {
        let password = match (&self.password_file, &self.password_env) {
            (None, None) => None,
            (Some(path), None) => Some(
                fs::read_to_string(path)
                    .with_context(|| {
                        format!("[mqtt]: cannot read password_file {}", path.display())
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(name)) => Some(std::env::var(name).with_context(|| {
                format!("[mqtt]: expected the password in environment variable {name}, found none")
            })?),
            (Some(_), Some(_)) => {
                bail!("[mqtt]: expected one of password_file and password_env, found both")
            }
        };
        match (&self.username, password) {
            (None, None) => Ok(None),
            (None, Some(_)) => bail!("[mqtt]: expected username with a password, found none"),
            (Some(username), password) => Ok(Some(Login {
                username: username.clone(),
                password: Password(password.unwrap_or_default()),
            })),
        }
    }
}

/// The host name from the kernel, for the default topic and client id; `qualmd` when unknown.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "qualmd".into())
}

/// A password; its `Debug` text never shows it.
#[derive(Clone, PartialEq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// User name and password sent on connect.
#[derive(Clone, Debug, PartialEq)]
pub struct Login {
    /// User name.
    pub username: String,
    /// Password (empty when only a user name is configured).
    pub password: Password,
}

/// Checked MQTT settings, as the publisher uses them.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttSettings {
    /// Broker address, `host:port`.
    pub broker: String,
    /// Topic of the summaries.
    pub topic: String,
    /// Client id.
    pub client_id: String,
    /// Quality of service (0 or 1).
    pub qos: QoS,
    /// Keep-alive interval announced on connect, in seconds.
    pub keep_alive_seconds: u16,
    /// Retain flag of every publish.
    pub retain: bool,
    /// Credentials, when configured.
    pub login: Option<Login>,
    /// Queue capacity in summaries.
    pub queue: usize,
    /// First reconnect wait.
    pub retry_initial: Duration,
    /// Longest reconnect wait.
    pub retry_max: Duration,
}

/// The publisher's counters, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct MqttStatus {
    published: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicBool,
}

impl MqttStatus {
    /// Summaries the broker acknowledged (at QoS 0: written to the connection).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Connection attempts and publishes that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Summaries dropped unsent because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether a session with the broker is open.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Summaries waiting for the broker, each with a sequence number so the publisher removes
/// exactly the one it sent even when the queue moved meanwhile.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<(u64, Vec<u8>)>,
    next: u64,
    /// Set by [`MqttPublisher::finish`]: publish what is left until then, then stop.
    stop_at: Option<Instant>,
    /// Set by the thread as it ends.
    ended: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    status: Arc<MqttStatus>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Time left to publish, when stopping.
    fn stop_at(&self) -> Option<Instant> {
        self.lock().stop_at
    }

    /// Waits `wait` unless a stop is asked for first.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut queue = self.lock();
        while queue.stop_at.is_none() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            queue = self.wake.wait_timeout(queue, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The next summary to publish, waiting for one until `idle_until`.
    fn next(&self, idle_until: Instant) -> Work {
        let mut queue = self.lock();
        loop {
            if let Some(stop_at) = queue.stop_at
                && (queue.items.is_empty() || Instant::now() >= stop_at)
            {
                return Work::Exit;
            }
            if let Some((sequence, payload)) = queue.items.front() {
                return Work::Publish(*sequence, payload.clone());
            }
            let left = idle_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Work::Idle;
            }
            queue = self.wake.wait_timeout(queue, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Removes the summary `sequence` once it was published (unless it was dropped meanwhile).
    fn done(&self, sequence: u64) {
        let mut queue = self.lock();
        if queue.items.front().is_some_and(|(front, _)| *front == sequence) {
            queue.items.pop_front();
        }
    }

    /// Whether the thread should end while disconnected.
    fn exhausted(&self) -> bool {
        let queue = self.lock();
        queue.stop_at.is_some_and(|at| queue.items.is_empty() || Instant::now() >= at)
    }
}

enum Work {
    Publish(u64, Vec<u8>),
    Idle,
    Exit,
}

/// Hands summaries to the publisher thread; cheap to clone, never blocks on the network.
#[derive(Clone, Debug)]
pub struct MqttSender {
    shared: Arc<Shared>,
}

impl MqttSender {
    /// Queues one summary's JSON. When the queue is full the oldest summary makes room: it is
    /// counted as dropped and handed back.
    pub fn send(&self, payload: Vec<u8>) -> Option<Vec<u8>> {
        let mut queue = self.shared.lock();
        let dropped = if queue.items.len() >= self.shared.capacity {
            self.shared.status.dropped.fetch_add(1, Ordering::Relaxed);
            queue.items.pop_front().map(|(_, payload)| payload)
        } else {
            None
        };
        let sequence = queue.next;
        queue.next += 1;
        queue.items.push_back((sequence, payload));
        drop(queue);
        self.shared.wake.notify_all();
        dropped
    }
}

/// The publisher thread and its queue.
#[derive(Debug)]
pub struct MqttPublisher {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

impl MqttPublisher {
    /// Starts the publisher thread; it connects in the background.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(settings: MqttSettings) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            capacity: settings.queue,
            status: Arc::new(MqttStatus::default()),
        });
        tracing::info!(
            "mqtt: publishing summaries to {} on {} (qos {}, queue {})",
            settings.topic,
            settings.broker,
            settings.qos as u8,
            settings.queue
        );
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("qualmd-mqtt".into())
            .spawn(move || {
                publish_loop(&thread_shared, &settings);
                thread_shared.lock().ended = true;
                thread_shared.wake.notify_all();
            })
            .context("cannot start the mqtt thread")?;
        Ok(Self { shared, thread })
    }

    /// A handle to queue summaries with.
    pub fn sender(&self) -> MqttSender {
        MqttSender { shared: Arc::clone(&self.shared) }
    }

    /// The publisher's counters.
    pub fn status(&self) -> Arc<MqttStatus> {
        Arc::clone(&self.shared.status)
    }

    /// Publishes what is still queued for at most `timeout`, disconnects and ends the thread.
    /// Returns how many summaries were left unsent.
    pub fn finish(self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut queue = self.shared.lock();
        queue.stop_at = Some(deadline);
        self.shared.wake.notify_all();

        // The thread's waits end by the deadline, except a connect or read begun before the
        // stop (up to IO_TIMEOUT): that one is not waited for, and ends with the process.
        let grace = deadline + Duration::from_millis(100);
        while !queue.ended {
            let left = grace.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = self.shared.wake.wait_timeout(queue, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let (ended, left) = (queue.ended, queue.items.len());
        drop(queue);
        if ended && self.thread.join().is_err() {
            tracing::error!("mqtt: the publisher thread panicked");
        }
        if left > 0 {
            tracing::warn!("mqtt: {left} summaries not published before the stop (in the ledger)");
        }
        left
    }
}

/// The publisher thread: connect, publish the queue in order, ping while idle, reconnect.
fn publish_loop(shared: &Shared, settings: &MqttSettings) {
    let status = &shared.status;
    let mut backoff = Backoff::new(settings.retry_initial, settings.retry_max);
    let mut outage_logged = false;
    let mut session: Option<Session> = None;

    loop {
        // Disconnected: connect, or wait and try again.
        let Some(current) = session.as_mut() else {
            if shared.exhausted() {
                return;
            }
            match Session::connect(settings, io_timeout(shared)) {
                Ok(opened) => {
                    tracing::info!("mqtt: connected to {}", settings.broker);
                    status.connected.store(true, Ordering::Relaxed);
                    backoff.reset();
                    outage_logged = false;
                    session = Some(opened);
                }
                Err(error) => {
                    status.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_wait();
                    if !outage_logged {
                        tracing::warn!("mqtt: cannot connect to {}: {error:#}", settings.broker);
                        outage_logged = true;
                    }
                    tracing::debug!("mqtt: next connect in {wait:?}: {error:#}");
                    let wait = shared
                        .stop_at()
                        .map_or(wait, |at| wait.min(at.saturating_duration_since(Instant::now())));
                    shared.pause(wait);
                }
            }
            continue;
        };

        // Connected: publish the oldest summary, or ping after half the keep-alive of silence.
        let idle_until =
            current.last_sent + Duration::from_secs(settings.keep_alive_seconds.into()) / 2;
        let result = match shared.next(idle_until) {
            Work::Publish(sequence, payload) => {
                current.publish(settings, payload, io_timeout(shared)).map(|()| {
                    shared.done(sequence);
                    status.published.fetch_add(1, Ordering::Relaxed);
                })
            }
            Work::Idle => current.ping(io_timeout(shared)),
            Work::Exit => {
                if let Some(closing) = session.take() {
                    closing.disconnect();
                }
                status.connected.store(false, Ordering::Relaxed);
                return;
            }
        };
        if let Err(error) = result {
            tracing::warn!("mqtt: connection to {} lost: {error:#}", settings.broker);
            status.failures.fetch_add(1, Ordering::Relaxed);
            status.connected.store(false, Ordering::Relaxed);
            outage_logged = true;
            session = None;
        }
    }
}

/// The time one network step may take: [`IO_TIMEOUT`], less when a stop deadline is nearer.
fn io_timeout(shared: &Shared) -> Duration {
    let left =
        shared.stop_at().map_or(IO_TIMEOUT, |at| at.saturating_duration_since(Instant::now()));
    // A zero timeout means "none" to the socket calls.
    left.clamp(Duration::from_millis(1), IO_TIMEOUT)
}

/// One open connection to the broker.
struct Session {
    stream: TcpStream,
    /// Bytes read from the broker and not yet decoded.
    incoming: BytesMut,
    /// Encoded packets on their way out (reused).
    outgoing: BytesMut,
    /// Packet id of the next QoS 1 publish: 1 to 65535, never 0.
    next_packet_id: u16,
    /// When the last packet was written: the keep-alive counts from it.
    last_sent: Instant,
}

impl Session {
    /// Opens a TCP connection, sends CONNECT (clean session) and waits for a CONNACK that
    /// accepts it.
    fn connect(settings: &MqttSettings, timeout: Duration) -> anyhow::Result<Self> {
        let addresses = settings
            .broker
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", settings.broker))?;
        let mut last_error = anyhow!("{} resolves to no address", settings.broker);
        let mut stream = None;
        for address in addresses {
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(opened) => {
                    stream = Some(opened);
                    break;
                }
                Err(error) => last_error = anyhow!(error).context(format!("connect {address}")),
            }
        }
        let stream = stream.ok_or(last_error)?;
        // Summaries are small and sent one at a time: do not wait to fill a segment.
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let mut session = Self {
            stream,
            incoming: BytesMut::with_capacity(256),
            outgoing: BytesMut::with_capacity(4096),
            next_packet_id: 1,
            last_sent: Instant::now(),
        };

        let mut connect = v4::Connect::new(settings.client_id.as_str());
        connect.keep_alive = settings.keep_alive_seconds;
        connect.clean_session = true;
        if let Some(login) = &settings.login {
            connect.set_login(login.username.as_str(), login.password.0.as_str());
        }
        session.send(timeout, |buffer| connect.write(buffer))?;
        match session.receive(timeout)? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(session),
            Packet::ConnAck(ack) => bail!("the broker refused the connection: {:?}", ack.code),
            other => bail!("expected CONNACK from the broker, found {}", packet_name(&other)),
        }
    }

    /// Publishes one payload; at QoS 1 waits for its PUBACK.
    fn publish(
        &mut self,
        settings: &MqttSettings,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut publish = v4::Publish::new(settings.topic.as_str(), settings.qos, payload);
        publish.retain = settings.retain;
        if settings.qos == QoS::AtMostOnce {
            return self.send(timeout, |buffer| publish.write(buffer));
        }
        let packet_id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        publish.pkid = packet_id;
        self.send(timeout, |buffer| publish.write(buffer))?;

        // Only acknowledgements come to a client that subscribes to nothing; a PINGRESP that
        // was late is skipped.
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                Packet::PubAck(ack) if ack.pkid == packet_id => return Ok(()),
                Packet::PubAck(_) | Packet::PingResp => {}
                other => bail!("expected PUBACK from the broker, found {}", packet_name(&other)),
            }
        }
    }

    /// Sends PINGREQ and waits for PINGRESP.
    fn ping(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.send(timeout, |buffer| v4::PingReq.write(buffer))?;
        match self.receive(timeout)? {
            Packet::PingResp => Ok(()),
            other => bail!("expected PINGRESP from the broker, found {}", packet_name(&other)),
        }
    }

    /// Says goodbye: the broker then drops the session without complaint.
    fn disconnect(mut self) {
        // Best effort: the connection closes either way.
        let _ = self.send(Duration::from_millis(200), |buffer| v4::Disconnect.write(buffer));
    }

    /// Encodes one packet with `encode` and writes it.
    fn send(
        &mut self,
        timeout: Duration,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
    ) -> anyhow::Result<()> {
        self.outgoing.clear();
        encode(&mut self.outgoing).map_err(|error| anyhow!("cannot encode a packet: {error:?}"))?;
        self.stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        self.stream.write_all(&self.outgoing).context("cannot write to the broker")?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Reads until one whole packet arrived, for at most `timeout`.
    fn receive(&mut self, timeout: Duration) -> anyhow::Result<Packet> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 512];
        loop {
            match v4::read(&mut self.incoming, MAX_INCOMING_PACKET) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => bail!("malformed packet from the broker: {error:?}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no answer from the broker within {timeout:?}");
            }
            self.stream.set_read_timeout(Some(left))?;
            let read = self.stream.read(&mut chunk).context("cannot read from the broker")?;
            if read == 0 {
                bail!("the broker closed the connection");
            }
            self.incoming.extend_from_slice(&chunk[..read]);
        }
    }
}

/// A packet's name for error messages (its `Debug` text may hold a payload).
fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> MqttConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_fill_in_and_the_password_stays_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        fs::write(&secret, "s3cret\n").unwrap();
        let mut table = config("broker = \"127.0.0.1:1883\"\nusername = \"cam\"");
        table.password_file = Some(secret);
        let settings = table.settings().unwrap();

        let host = hostname();
        assert_eq!(settings.topic, format!("qualm/{host}/summary"));
        assert_eq!(settings.client_id, format!("qualmd-{host}"));
        assert_eq!(
            (settings.qos, settings.keep_alive_seconds, settings.queue),
            (QoS::AtLeastOnce, 60, 64)
        );
        let login = settings.login.clone().unwrap();
        assert_eq!((login.username.as_str(), login.password.0.as_str()), ("cam", "s3cret"));
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret") && debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("broker = \"localhost\"", "broker as \"host:port\", found \"localhost\""),
            ("broker = \"h:1\"\ntopic = \"a/+/b\"", "topic without wildcards"),
            ("broker = \"h:1\"\nqos = 2", "qos 0 or 1, found 2"),
            (
                "broker = \"h:1\"\nkeep_alive = \"0s\"",
                "keep_alive from \"1s\" to \"18h\", found \"0s\"",
            ),
            ("broker = \"h:1\"\nqueue = 0", "queue of at least 1 summary"),
            ("broker = \"h:1\"\nretry_initial_ms = 9\nretry_max_ms = 8", "found 9 and 8"),
            (
                "broker = \"h:1\"\npassword_env = \"QUALM_TEST_UNSET_VARIABLE\"",
                "environment variable QUALM_TEST_UNSET_VARIABLE",
            ),
            (
                "broker = \"h:1\"\npassword_file = \"/nonexistent/pw\"",
                "cannot read password_file /nonexistent/pw",
            ),
        ];
        for (text, expected) in cases {
            let message = format!("{:#}", config(text).settings().unwrap_err());
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn mqtt_needs_a_summary_interval() {
        let text = "model = \"m.toml\"\nspool = \"s\"\nledger = \"l\"\n[source]\nframes = \"f\"\n\
                    [mqtt]\nbroker = \"127.0.0.1:1883\"\n";
        let config: crate::config::Config = toml::from_str(text).unwrap();
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("expected [device] summary_interval, found none"), "{message}");

        let text = format!("{text}[device]\nsummary_interval = \"1s\"\n");
        // TOML tables may come in any order.
        let text = text.replace("[mqtt]\nbroker = \"127.0.0.1:1883\"\n", "")
            + "[mqtt]\nbroker = \"h:1\"\n";
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_hands_back_the_oldest() {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            capacity: 2,
            status: Arc::new(MqttStatus::default()),
        });
        let sender = MqttSender { shared: Arc::clone(&shared) };
        assert_eq!(sender.send(b"a".to_vec()), None);
        assert_eq!(sender.send(b"b".to_vec()), None);
        assert_eq!(sender.send(b"c".to_vec()), Some(b"a".to_vec()));
        assert_eq!(shared.status.dropped(), 1);

        // The publisher had taken "b" (sequence 1) when "d" pushed it out: "c" stays queued.
        let Work::Publish(sequence, payload) = shared.next(Instant::now()) else { panic!() };
        assert_eq!((sequence, payload.as_slice()), (1, &b"b"[..]));
        assert_eq!(sender.send(b"d".to_vec()), Some(b"b".to_vec()));
        shared.done(sequence);
        let left: Vec<_> = shared.lock().items.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(left, [b"c".to_vec(), b"d".to_vec()]);
    }
}
