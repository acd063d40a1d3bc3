//! Summary lines through a real MQTT broker: a mosquitto of its own on a free loopback port,
//! with a persistent subscriber session (registered before anything is published, read after),
//! so no message depends on when the subscriber happened to connect.
//!
//! Skipped with a loud message when mosquitto is not installed, unless `QUALM_REQUIRE_SERVERS`
//! is set (as `.ci/run` does): then a missing broker fails the test.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use qualm_daemon::metrics::Metrics;
use qualm_daemon::mqtt::{MqttConfig, MqttPublisher, MqttSettings};
use qualm_daemon::summary::SUMMARY_KIND;
use serde_json::Value;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const TOPIC: &str = "qualm/test/summary";
const SUBSCRIBER: &str = "qualm-test-subscriber";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether the broker and its clients are here; panics when they must be.
fn servers_available(test: &str) -> bool {
    let found = Path::new(MOSQUITTO).exists()
        && Command::new("mosquitto_sub").arg("--help").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("QUALM_REQUIRE_SERVERS").is_none(),
            "{test}: QUALM_REQUIRE_SERVERS is set but {MOSQUITTO} or mosquitto_sub is missing"
        );
        eprintln!(
            "\n*** SKIPPED {test}: mosquitto is not installed \
             (apt-get install mosquitto mosquitto-clients) ***\n"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A mosquitto process on 127.0.0.1, stopped (SIGTERM, so it saves its sessions) on drop.
struct Broker {
    child: Child,
}

impl Broker {
    /// Starts mosquitto on `port`, keeping its sessions in `dir` across restarts.
    fn start(dir: &Path, port: u16) -> Self {
        let user = Command::new("id").arg("-un").output().unwrap().stdout;
        let config = dir.join("mosquitto.conf");
        fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nuser {}\n",
                dir.display(),
                String::from_utf8_lossy(&user).trim()
            ),
        )
        .unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut broker = Self { child };

        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
            assert!(broker.child.try_wait().unwrap().is_none(), "mosquitto exited:\n{log}");
            assert!(started.elapsed() < Duration::from_secs(10), "mosquitto not up:\n{log}");
            thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Registers the persistent session `subscriber`: QoS 1 messages to `TOPIC` wait for it.
fn register_subscriber(port: u16, subscriber: &str) {
    let status = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", TOPIC, "-q", "1"])
        .args(["-c", "-i", subscriber, "-E"])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_sub could not subscribe");
}

/// The next `count` payloads queued for the session `subscriber`, one per line. A message whose
/// acknowledgement was cut off by the exit comes again on the session's next connect: read each
/// session once.
fn receive(port: u16, subscriber: &str, count: usize) -> Vec<String> {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", TOPIC, "-q", "1"])
        .args(["-c", "-i", subscriber, "-C", &count.to_string(), "-W", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "expected {count} messages, found:\n{text}");
    text.lines().map(str::to_owned).collect()
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The complete summary lines of the ledger at `path`, in order.
fn summary_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .filter(|line| serde_json::from_str::<Value>(line).unwrap()["kind"] == SUMMARY_KIND)
        .map(str::to_owned)
        .collect()
}

#[test]
fn qualmd_publishes_every_ledger_summary_byte_for_byte() {
    if !servers_available("qualmd_publishes_every_ledger_summary_byte_for_byte") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(dir.path(), port);
    register_subscriber(port, SUBSCRIBER);

    // Observe-only (no calibration) on the committed frames: summaries come all the same.
    let card = repo().join("models/selfie/selfie_int8.toml");
    let frames = repo().join("models/frames/vtest");
    // The broker ignores credentials here; they are sent, and must never reach the log.
    let config = format!(
        "model = {card:?}\nspool = \"spool\"\nledger = \"ledger.jsonl\"\n\
         [source]\nframes = {frames:?}\n[device]\nrestart = true\nsummary_interval = \"100ms\"\n\
         [mqtt]\nbroker = \"127.0.0.1:{port}\"\ntopic = \"{TOPIC}\"\nclient_id = \"qualmd-test\"\n\
         username = \"camera\"\npassword_env = \"QUALM_TEST_MQTT_PASSWORD\"\n"
    );
    fs::write(dir.path().join("qualmd.toml"), config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--config")
        .arg(dir.path().join("qualmd.toml"))
        .env("QUALM_TEST_MQTT_PASSWORD", "hunter2-secret")
        .env("QUALMD_LOG", "qualm_daemon=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A looping source runs until SIGTERM: the drain writes the last summary, then publishes it.
    let ledger = dir.path().join("ledger.jsonl");
    wait_until("three summaries are in the ledger", || summary_lines(&ledger).len() >= 3);
    let status = Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status();
    assert!(status.unwrap().success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert!(log.contains("mqtt: connected to 127.0.0.1"), "{log}");
    assert!(!log.contains("hunter2"), "the password reached the log:\n{log}");

    let summaries = summary_lines(&ledger);
    assert!(summaries.len() >= 4, "three before the stop and the last: {}", summaries.len());
    assert_eq!(
        receive(port, SUBSCRIBER, summaries.len()),
        summaries,
        "broker payloads vs ledger lines"
    );
}

#[test]
fn summaries_queued_while_the_broker_is_down_arrive_after_it_starts() {
    if !servers_available("summaries_queued_while_the_broker_is_down_arrive_after_it_starts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The subscriber session is registered, then the broker goes down (keeping the session).
    let mut broker = Broker::start(dir.path(), port);
    register_subscriber(port, SUBSCRIBER);
    broker.stop();

    let config: MqttConfig = toml::from_str(&format!(
        "broker = \"127.0.0.1:{port}\"\ntopic = \"{TOPIC}\"\nclient_id = \"qualmd-down-test\"\n\
         queue = 4\nretry_initial_ms = 50\nretry_max_ms = 400\nkeep_alive = \"1s\"\n"
    ))
    .unwrap();
    let settings = config.settings().unwrap();
    let publisher = MqttPublisher::start(settings.clone()).unwrap();
    let status = publisher.status();
    let sender = publisher.sender();
    let payloads: Vec<String> =
        (0..6).map(|i| format!("{{\"kind\":\"summary\",\"n\":{i}}}")).collect();
    for payload in &payloads {
        sender.send(payload.clone().into_bytes());
    }
    wait_until("two connects failed", || status.failures() >= 2);
    assert_eq!((status.published(), status.connected()), (0, false));
    // A queue of 4 kept the newest four of six.
    assert_eq!(status.dropped(), 2);

    let mut broker = Broker::start(dir.path(), port);
    wait_until("the queue went out", || status.published() == 4);
    assert!(status.connected());
    // Idle for longer than the broker allows (1.5 keep-alives): pings keep the session open.
    let failures = status.failures();
    thread::sleep(Duration::from_millis(2_500));
    assert_eq!((status.published(), status.connected()), (4, true));
    assert_eq!(status.failures(), failures, "the session was lost while idle");
    assert_eq!(receive(port, SUBSCRIBER, 4), payloads[2..]);

    // The metrics endpoint reports the same counters.
    let metrics = Metrics::new().unwrap();
    metrics.watch_mqtt(publisher.status());
    let text = metrics.render(dir.path()).unwrap();
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(value("qualmd_mqtt_published_total"), 4.0);
    assert_eq!(value("qualmd_mqtt_dropped_total"), 2.0);
    assert_eq!(value("qualmd_mqtt_connected"), 1.0);
    assert_eq!(value("qualmd_mqtt_failures_total"), failures as f64);

    // A stop right after a send: the drain connects and publishes it before the thread ends.
    register_subscriber(port, "qualm-test-late");
    let late =
        MqttPublisher::start(MqttSettings { client_id: "qualmd-late".into(), ..settings }).unwrap();
    late.sender().send(b"{\"stop\":true}".to_vec());
    assert_eq!(late.finish(Duration::from_secs(2)), 0);
    assert_eq!(receive(port, "qualm-test-late", 1), ["{\"stop\":true}"]);

    // Broker gone at the stop: the drain gives up after its bound and says what is left.
    broker.stop();
    sender.send(b"{\"last\":true}".to_vec());
    let started = Instant::now();
    assert_eq!(publisher.finish(Duration::from_millis(500)), 1);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_500), "the drain took {took:?}");
}
