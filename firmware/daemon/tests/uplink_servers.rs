//! The uplink against real servers on 127.0.0.1: nginx with WebDAV `PUT` (plain HTTP sink) and
//! `s3s-fs`, an S3 server that checks every SigV4 signature (S3 sink). Each test starts its own
//! server on a free port with a temporary
//! configuration. Records must arrive exactly once and byte-identical through outages, a
//! fault-injecting proxy (500s, hangs, connections cut mid-body, answers lost), and `kill -9`.
//!
//! A missing server binary skips a test with a loud message, unless `QUALM_REQUIRE_SERVERS` is
//! set (`.ci/run` sets it), which turns the skip into a failure. `QUALM_NGINX` and
//! `QUALM_S3S_FS` name the binaries when they are not on `PATH`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use qualm_daemon::metrics::Metrics;
use qualm_daemon::uplink::{Credentials, Secret, SinkKind, Uplink, UplinkConfig};
use rusty_s3::S3Action;
use sha2::{Digest, Sha256};

/// Object key (`<record>/<file>`) to content.
type Objects = BTreeMap<String, Vec<u8>>;

const ACCESS_KEY: &str = "qualm-test-key";
const SECRET_KEY: &str = "qualm-test-secret";
const BUCKET: &str = "qualm-records";

// ---------------------------------------------------------------------------------------------
// Finding and starting servers

/// The server binary, or `None` after a loud message when it is missing and not required.
fn server_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    let from_env = std::env::var_os(env).map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut folders: Vec<PathBuf> = std::env::split_paths(&path).collect();
    folders.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    let found = from_env.filter(|p| p.is_file()).or_else(|| {
        names
            .iter()
            .flat_map(|name| folders.iter().map(move |f| f.join(name)))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let message = format!("server binary {names:?} not found (set {env} or install it)");
        assert!(std::env::var_os("QUALM_REQUIRE_SERVERS").is_none(), "{message}");
        eprintln!("\n!!!!! SKIPPED: {message}; set QUALM_REQUIRE_SERVERS to fail instead !!!!!\n");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls until something accepts connections on `port`, for at most `limit`.
fn wait_for_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < limit, "no server came up on 127.0.0.1:{port} in {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx serving `root` with WebDAV `PUT` on `port`, in the foreground, one process.
fn start_nginx(nginx: &Path, work: &Path, root: &Path, port: u16, body_limit: &str) -> Server {
    fs::create_dir_all(root).unwrap();
    let conf = work.join("nginx.conf");
    let temp = work.join("nginx-temp");
    fs::create_dir_all(&temp).unwrap();
    let text = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {work}/nginx.pid;\n\
         error_log {work}/nginx-error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n\
         proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n\
         uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
         client_max_body_size {body_limit};\n\
         location / {{ dav_methods PUT; create_full_put_path on; }}\n  }}\n}}\n",
        work = work.display(),
        temp = temp.display(),
        root = root.display(),
    );
    fs::write(&conf, text).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(work)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(work.join("nginx-error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server(child);
    wait_for_port(port, Duration::from_secs(10));
    server
}

/// `s3s-fs` storing into `root` on `port`, with the test bucket created. It accepts only
/// requests signed with the test key pair.
fn start_s3(s3s_fs: &Path, root: &Path, port: u16) -> Server {
    fs::create_dir_all(root).unwrap();
    let child = Command::new(s3s_fs)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    wait_for_port(port, Duration::from_secs(30));

    let (bucket, credentials) = s3_bucket(port);
    let url =
        rusty_s3::actions::CreateBucket::new(&bucket, &credentials).sign(Duration::from_secs(60));
    let response = ureq::put(url.as_str()).send_empty().unwrap();
    assert!(response.status().is_success(), "cannot create bucket: {}", response.status());
    server
}

fn s3_bucket(port: u16) -> (rusty_s3::Bucket, rusty_s3::Credentials) {
    let url = format!("http://127.0.0.1:{port}").parse().unwrap();
    let bucket = rusty_s3::Bucket::new(url, rusty_s3::UrlStyle::Path, BUCKET, "us-east-1").unwrap();
    (bucket, rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY))
}

/// A temporary folder with a spool and an nginx WebDAV root, and nginx serving it.
struct WebDav {
    dir: tempfile::TempDir,
    spool: PathBuf,
    root: PathBuf,
    port: u16,
    nginx: PathBuf,
    server: Option<Server>,
    /// nginx's `client_max_body_size`: "0" for no limit.
    body_limit: &'static str,
}

impl WebDav {
    /// Starts nginx on a free port, or `None` when the test is skipped.
    fn start() -> Option<Self> {
        let nginx = server_binary("QUALM_NGINX", &["nginx"])?;
        let dir = tempfile::tempdir().unwrap();
        let (spool, root) = (dir.path().join("spool"), dir.path().join("www"));
        let port = free_port();
        let mut webdav = Self { dir, spool, root, port, nginx, server: None, body_limit: "0" };
        webdav.restart();
        Some(webdav)
    }

    fn restart(&mut self) {
        let (work, root) = (self.dir.path(), &self.root);
        let server = start_nginx(&self.nginx, work, root, self.port, self.body_limit);
        self.server = Some(server);
    }

    fn stop(&mut self) {
        self.server = None;
    }
}

// ---------------------------------------------------------------------------------------------
// Records and what the servers hold

/// Writes `count` complete records into `spool` the way the spool does (hidden partial
/// folder renamed into place) and returns the objects they must become.
fn make_records(spool: &Path, first: usize, count: usize, frame_bytes: usize) -> Objects {
    fs::create_dir_all(spool).unwrap();
    let mut objects = Objects::new();
    for index in first..first + count {
        let mut random = fastrand::Rng::with_seed(index as u64);
        let frame: Vec<u8> = (0..frame_bytes).map(|_| random.u8(..)).collect();
        let digest = hex::encode(Sha256::digest(&frame));
        let key = format!("frame-{index:06}-{}", &digest[..12]);
        let files = [
            ("frame.jpg", frame),
            ("mask.png", (0..frame_bytes / 8).map(|_| random.u8(..4)).collect()),
            ("uncertainty.png", (0..frame_bytes / 4).map(|_| random.u8(..)).collect()),
            ("meta.json", format!("{{\"frame\": \"{key}\"}}").into_bytes()),
        ];
        let partial = spool.join(format!(".partial-{key}"));
        fs::create_dir(&partial).unwrap();
        for (name, bytes) in files {
            fs::write(partial.join(name), &bytes).unwrap();
            objects.insert(format!("{key}/{name}"), bytes);
        }
        fs::rename(&partial, spool.join(&key)).unwrap();
    }
    objects
}

/// Record folders still in the spool.
fn records_left(spool: &Path) -> usize {
    fs::read_dir(spool)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// Every file under `root`, by path relative to it.
fn files_under(root: &Path) -> Objects {
    fn walk(root: &Path, folder: &Path, objects: &mut Objects) {
        for entry in fs::read_dir(folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, objects);
            } else {
                let key = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                objects.insert(key, fs::read(&path).unwrap());
            }
        }
    }
    let mut objects = Objects::new();
    if root.is_dir() {
        walk(root, root, &mut objects);
    }
    objects
}

/// Every object in the test bucket, listed and fetched through signed requests.
fn s3_objects(port: u16) -> Objects {
    let (bucket, credentials) = s3_bucket(port);
    let url = bucket.list_objects_v2(Some(&credentials)).sign(Duration::from_secs(60));
    let listing = ureq::get(url.as_str()).call().unwrap().into_body().read_to_string().unwrap();
    let listing = rusty_s3::actions::ListObjectsV2::parse_response(&listing).unwrap();
    assert!(listing.next_continuation_token.is_none(), "test bucket holds over one page");

    let mut objects = Objects::new();
    for object in listing.contents {
        let url = bucket.get_object(Some(&credentials), &object.key).sign(Duration::from_secs(60));
        let mut body = ureq::get(url.as_str()).call().unwrap().into_body();
        let bytes = body.with_config().limit(64 << 20).read_to_vec().unwrap();
        objects.insert(object.key, bytes);
    }
    objects
}

/// Asserts that the server holds exactly the expected objects, byte for byte.
fn assert_same_objects(found: &Objects, expected: &Objects) {
    let missing: Vec<_> = expected.keys().filter(|k| !found.contains_key(*k)).collect();
    let extra: Vec<_> = found.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (key, bytes) in expected {
        assert!(found[key] == *bytes, "object {key} differs from its record file");
    }
}

/// Polls until the spool holds no record, for at most `limit`.
fn wait_until_sent(spool: &Path, limit: Duration) {
    let start = Instant::now();
    while records_left(spool) > 0 {
        assert!(
            start.elapsed() < limit,
            "{} records still unsent after {limit:?}",
            records_left(spool)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Quick retries and a short request timeout, so faults cost little test time.
fn test_config(sink: SinkKind, url: &str) -> UplinkConfig {
    let mut config = UplinkConfig::new(sink, url);
    config.scan_interval_seconds = 0.2;
    config.backoff_initial_seconds = 0.05;
    config.backoff_max_seconds = 0.4;
    config.timeout_seconds = 1.0;
    if sink == SinkKind::S3 {
        config.bucket = Some(BUCKET.into());
    }
    config
}

fn s3_credentials() -> Credentials {
    Credentials {
        access_key_id: Some(Secret::new(ACCESS_KEY)),
        secret_access_key: Some(Secret::new(SECRET_KEY)),
        token: None,
    }
}

// ---------------------------------------------------------------------------------------------
// A fault-injecting proxy

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// Forward it and its answer.
    Pass,
    /// Answer 500 without forwarding.
    Status500,
    /// Read it and never answer (the client's timeout must fire).
    Hang,
    /// Forward the head and half the body, then close both connections.
    CutBody,
    /// Forward all of it (the server stores the object), then close without answering.
    LoseAnswer,
    /// Close the connection at once (the server is down).
    Refuse,
}

/// Faults per request, in turn; every failed request is retried, and the retry meets the
/// next entry, so uploads make progress while every fault is met.
const FAULTS: [Fault; 10] = [
    Fault::Pass,
    Fault::Status500,
    Fault::Pass,
    Fault::Hang,
    Fault::Pass,
    Fault::CutBody,
    Fault::Pass,
    Fault::LoseAnswer,
    Fault::Pass,
    Fault::Pass,
];

struct FaultProxy {
    port: u16,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<Fault, usize>>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl FaultProxy {
    /// Listens on a free port and forwards to `upstream` with the faults of [`FAULTS`].
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let requests = Arc::new(AtomicUsize::new(0));

        let (down2, stop2, seen2) = (down.clone(), stop.clone(), seen.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let fault = if down2.load(Ordering::SeqCst) {
                    Fault::Refuse
                } else {
                    FAULTS[requests.fetch_add(1, Ordering::SeqCst) % FAULTS.len()]
                };
                *seen2.lock().unwrap().entry(fault).or_insert(0) += 1;
                let stop3 = stop2.clone();
                thread::spawn(move || {
                    let _ = serve(client, upstream, fault, &stop3);
                });
            }
        });
        Self { port, down, stop, seen }
    }

    fn seen(&self, fault: Fault) -> usize {
        self.seen.lock().unwrap().get(&fault).copied().unwrap_or(0)
    }
}

/// Reads one request (head and `content-length` body) from `stream`.
fn read_request(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while data.len() < head_end + length {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buffer[..n]);
    }
    let body = data.split_off(head_end);
    Ok((data, body))
}

/// Handles one client connection (one request: the proxy closes after each).
fn serve(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    if fault == Fault::Refuse {
        return client.shutdown(Shutdown::Both);
    }
    let (head, body) = read_request(&mut client)?;

    // Ask the server to close after answering, so its answer ends at end of stream.
    let at = head.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut forwarded = head[..at].to_vec();
    forwarded.extend_from_slice(b"Connection: close\r\n");
    forwarded.extend_from_slice(&head[at..]);

    match fault {
        Fault::Status500 => {
            client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\
                  connection: close\r\n\r\nboom",
            )?;
        }
        Fault::Hang => {
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(20));
            }
        }
        Fault::CutBody => {
            let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
            server.write_all(&forwarded)?;
            server.write_all(&body[..body.len() / 2])?;
            server.shutdown(Shutdown::Both)?;
        }
        Fault::Pass | Fault::LoseAnswer => {
            let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
            server.set_read_timeout(Some(Duration::from_secs(10)))?;
            server.write_all(&forwarded)?;
            server.write_all(&body)?;
            let mut answer = Vec::new();
            server.read_to_end(&mut answer)?;
            if fault == Fault::Pass {
                client.write_all(&answer)?;
            }
        }
        Fault::Refuse => unreachable!("handled above"),
    }
    client.shutdown(Shutdown::Both)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn http_records_arrive_once_across_a_server_restart() {
    let Some(mut webdav) = WebDav::start() else { return };
    webdav.stop();
    let (spool, root, port) = (webdav.spool.clone(), webdav.root.clone(), webdav.port);
    let mut expected = make_records(&spool, 0, 6, 20_000);

    // Records made while the server is not there yet wait in the spool.
    let config = test_config(SinkKind::Http, &format!("http://127.0.0.1:{port}/ingest"));
    let uplink = Uplink::new(&spool, &config, Credentials::default()).unwrap().spawn().unwrap();
    thread::sleep(Duration::from_millis(600));
    assert_eq!(records_left(&spool), 6);

    webdav.restart();
    wait_until_sent(&spool, Duration::from_secs(30));

    // The server goes away; new records wait; it comes back and gets them.
    webdav.stop();
    expected.extend(make_records(&spool, 6, 6, 20_000));
    thread::sleep(Duration::from_millis(800));
    assert_eq!(records_left(&spool), 6);
    webdav.restart();
    wait_until_sent(&spool, Duration::from_secs(30));
    uplink.stop(true, || false).unwrap();

    assert_same_objects(&files_under(&root.join("ingest")), &expected);
}

#[test]
fn a_record_refused_for_good_does_not_hold_up_the_others() {
    let Some(mut webdav) = WebDav::start() else { return };
    webdav.body_limit = "64k";
    webdav.restart();
    let (spool, root, port) = (webdav.spool.clone(), webdav.root.clone(), webdav.port);

    // Record 2's 200 kB frame is over nginx's limit: 413. Records 0, 1, 3 and 4 fit.
    let mut expected = make_records(&spool, 0, 2, 20_000);
    let too_large = make_records(&spool, 2, 1, 200_000);
    expected.extend(make_records(&spool, 3, 2, 20_000));
    let config = test_config(SinkKind::Http, &format!("http://127.0.0.1:{port}/ingest"));
    let uplink = Uplink::new(&spool, &config, Credentials::default()).unwrap().spawn().unwrap();
    let stats = uplink.stats();

    let start = Instant::now();
    while records_left(&spool) > 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "records stuck behind the refused one");
        thread::sleep(Duration::from_millis(50));
    }
    // Later passes skip it instead of sending its body again.
    thread::sleep(Duration::from_millis(800));
    uplink.stop(true, || false).unwrap();

    assert_same_objects(&files_under(&root.join("ingest")), &expected);
    let key = too_large.keys().next().unwrap().split('/').next().unwrap().to_owned();
    assert!(spool.join(&key).join("frame.jpg").exists(), "the refused record stays in the spool");
    assert!(!spool.join(&key).join(".uploaded").exists());
    // nginx may answer 413 and close before it has read the body: the client then sees a
    // broken connection, an ordinary failed pass, until a pass reads the 413 itself.
    assert_eq!((stats.refused(), stats.records()), (1, 4));
}

#[test]
fn http_faults_are_retried_without_loss_or_duplicates() {
    let Some(webdav) = WebDav::start() else { return };
    let (spool, root, port) = (&webdav.spool, &webdav.root, webdav.port);
    let proxy = FaultProxy::start(port);
    let expected = make_records(spool, 0, 8, 30_000);

    let config = test_config(SinkKind::Http, &format!("http://127.0.0.1:{}", proxy.port));
    let uplink = Uplink::new(spool, &config, Credentials::default()).unwrap().spawn().unwrap();
    wait_until_sent(spool, Duration::from_secs(60));
    uplink.stop(true, || false).unwrap();

    for fault in [Fault::Status500, Fault::Hang, Fault::CutBody, Fault::LoseAnswer] {
        assert!(proxy.seen(fault) > 0, "the proxy never injected {fault:?}");
    }
    assert_same_objects(&files_under(root), &expected);
}

#[test]
fn s3_records_arrive_once_through_faults_and_an_outage() {
    let Some(s3s_fs) = server_binary("QUALM_S3S_FS", &["s3s-fs"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (spool, port) = (dir.path().join("spool"), free_port());
    let _server = start_s3(&s3s_fs, &dir.path().join("s3"), port);
    let proxy = FaultProxy::start(port);

    // The outage first: nothing gets through, nothing leaves the spool.
    proxy.down.store(true, Ordering::SeqCst);
    let mut expected = make_records(&spool, 0, 4, 30_000);
    let mut config = test_config(SinkKind::S3, &format!("http://127.0.0.1:{}", proxy.port));
    config.prefix = "camera-7".into();
    let uplink = Uplink::new(&spool, &config, s3_credentials()).unwrap().spawn().unwrap();
    thread::sleep(Duration::from_millis(800));
    assert_eq!(records_left(&spool), 4);
    assert!(proxy.seen(Fault::Refuse) > 0);

    proxy.down.store(false, Ordering::SeqCst);
    expected.extend(make_records(&spool, 4, 6, 30_000));
    wait_until_sent(&spool, Duration::from_secs(60));
    uplink.stop(true, || false).unwrap();

    for fault in [Fault::Status500, Fault::Hang, Fault::CutBody, Fault::LoseAnswer] {
        assert!(proxy.seen(fault) > 0, "the proxy never injected {fault:?}");
    }
    let expected: Objects =
        expected.into_iter().map(|(k, v)| (format!("camera-7/{k}"), v)).collect();
    assert_same_objects(&s3_objects(port), &expected);
}

#[test]
fn s3_keeps_records_marked_when_asked_not_to_delete() {
    let Some(s3s_fs) = server_binary("QUALM_S3S_FS", &["s3s-fs"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (spool, port) = (dir.path().join("spool"), free_port());
    let _server = start_s3(&s3s_fs, &dir.path().join("s3"), port);
    let expected = make_records(&spool, 0, 3, 10_000);

    let mut config = test_config(SinkKind::S3, &format!("http://127.0.0.1:{port}"));
    config.delete_after_upload = false;
    let mut uplink = Uplink::new(&spool, &config, s3_credentials()).unwrap();
    let summary = uplink.upload_pending().unwrap();
    let sent: usize = expected.values().map(Vec::len).sum();
    assert_eq!((summary.records, summary.bytes), (3, sent as u64));

    // Marked records stay and are not sent again.
    assert_eq!(records_left(&spool), 3);
    for entry in fs::read_dir(&spool).unwrap().flatten() {
        assert_eq!(fs::read(entry.path().join(".uploaded")).unwrap(), b"");
    }
    assert_eq!(uplink.upload_pending().unwrap().records, 0);
    assert_same_objects(&s3_objects(port), &expected);
}

#[test]
fn s3_refuses_a_wrong_secret_and_the_records_stay_pending() {
    let Some(s3s_fs) = server_binary("QUALM_S3S_FS", &["s3s-fs"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (spool, port) = (dir.path().join("spool"), free_port());
    let _server = start_s3(&s3s_fs, &dir.path().join("s3"), port);
    make_records(&spool, 0, 2, 5_000);

    // The right key id with a wrong secret: the signature cannot match.
    let config = test_config(SinkKind::S3, &format!("http://127.0.0.1:{port}"));
    let wrong = Credentials {
        access_key_id: Some(Secret::new(ACCESS_KEY)),
        secret_access_key: Some(Secret::new("not-the-secret")),
        token: None,
    };
    let mut uplink = Uplink::new(&spool, &config, wrong).unwrap();
    let error = uplink.upload_pending().unwrap_err().to_string();
    assert!(error.contains("403"), "expected a 403 from the server, found: {error}");

    // Nothing marked, nothing stored; with the right secret both records go.
    assert_eq!(records_left(&spool), 2);
    assert!(s3_objects(port).is_empty());
    let mut uplink = Uplink::new(&spool, &config, s3_credentials()).unwrap();
    assert_eq!(uplink.upload_pending().unwrap().records, 2);
    assert_eq!(s3_objects(port).len(), 8);
}

/// Where the child uplink of the kill test reads its spool and server.
const CHILD_SPOOL: &str = "QUALM_UPLINK_TEST_CHILD_SPOOL";
const CHILD_URL: &str = "QUALM_UPLINK_TEST_CHILD_URL";

/// Not a test on its own: the uplink process that `uplink_survives_repeated_kill_9` starts
/// (this test binary again) and kills. Returns at once without its environment variables.
#[test]
#[ignore = "run as a child process by uplink_survives_repeated_kill_9"]
fn uplink_child_process() {
    let (Some(spool), Some(url)) = (std::env::var_os(CHILD_SPOOL), std::env::var(CHILD_URL).ok())
    else {
        return;
    };
    let mut config = test_config(SinkKind::Http, &url);
    // Slow enough that the kills land in the middle of uploads.
    config.bandwidth_bytes_per_second = Some(400_000);
    let spool = PathBuf::from(spool);
    let uplink = Uplink::new(&spool, &config, Credentials::default()).unwrap().spawn().unwrap();
    wait_until_sent(&spool, Duration::from_secs(60));
    uplink.stop(true, || false).unwrap();
}

#[test]
fn uplink_survives_repeated_kill_9() {
    let Some(webdav) = WebDav::start() else { return };
    let (spool, root, port) = (&webdav.spool, &webdav.root, webdav.port);
    let expected = make_records(spool, 0, 12, 80_000);

    let child = || {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "uplink_child_process", "--ignored", "--quiet"])
            .env(CHILD_SPOOL, spool)
            .env(CHILD_URL, format!("http://127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut random = fastrand::Rng::with_seed(7);
    let mut kills = 0;
    for _ in 0..6 {
        let mut process = child();
        thread::sleep(Duration::from_millis(random.u64(200..500)));
        if process.try_wait().unwrap().is_none() {
            process.kill().unwrap();
            kills += 1;
        }
        process.wait().unwrap();
    }
    let left = records_left(spool);
    assert!(kills >= 3 && left > 0, "the kills came too late: {kills} kills, {left} records left");

    let status = child().wait().unwrap();
    assert!(status.success());
    assert_eq!(records_left(spool), 0);
    assert_same_objects(&files_under(root), &expected);
}

#[test]
fn bandwidth_cap_holds_over_a_megabyte() {
    let Some(webdav) = WebDav::start() else { return };
    let (spool, root, port) = (&webdav.spool, &webdav.root, webdav.port);
    // frame 800,000 B + mask 100,000 B + heat map 200,000 B + meta: 1.1 MB.
    let expected = make_records(spool, 0, 1, 800_000);
    let total: usize = expected.values().map(Vec::len).sum();

    let mut config = test_config(SinkKind::Http, &format!("http://127.0.0.1:{port}"));
    config.bandwidth_bytes_per_second = Some(200_000);
    config.timeout_seconds = 30.0;
    let mut uplink = Uplink::new(spool, &config, Credentials::default()).unwrap();
    let start = Instant::now();
    let summary = uplink.upload_pending().unwrap();
    let seconds = start.elapsed().as_secs_f64();

    // At 200,000 B/s with bursts of at most 50,000 B, 1.1 MB cannot take under 5.25 s; the
    // upper bound only catches a cap far too strict (a slow machine adds little here).
    assert_eq!(summary.bytes, total as u64);
    let floor = (total - 50_000) as f64 / 200_000.0;
    assert!(
        seconds >= floor,
        "{total} B took {seconds:.2} s, under the {floor:.2} s the cap allows"
    );
    assert!(seconds < 3.0 * floor, "{total} B took {seconds:.2} s at a cap of 200,000 B/s");
    assert_same_objects(&files_under(root), &expected);
}

#[test]
fn a_queue_of_records_is_not_needed_in_memory() {
    // The spool scan is the queue: a fresh uplink on a spool left by an earlier one sends what
    // is there, including a record marked but not yet removed when the earlier one died.
    let Some(webdav) = WebDav::start() else { return };
    let (spool, root, port) = (&webdav.spool, &webdav.root, webdav.port);
    let expected = make_records(spool, 0, 3, 5_000);
    let marked = make_records(spool, 3, 1, 5_000);
    let marked_key = marked.keys().next().unwrap().split('/').next().unwrap().to_string();
    fs::write(spool.join(&marked_key).join(".uploaded"), b"").unwrap();
    fs::create_dir(spool.join(".partial-frame-999999-000000000000")).unwrap();

    let config = test_config(SinkKind::Http, &format!("http://127.0.0.1:{port}"));
    let mut uplink = Uplink::new(spool, &config, Credentials::default()).unwrap();
    let metrics = Metrics::new().unwrap();
    metrics.watch_uplink(uplink.stats());
    assert_eq!(uplink.upload_pending().unwrap().records, 3);

    // The marked record was removed without being sent; the partial one was left alone.
    assert!(!spool.join(&marked_key).exists());
    assert!(spool.join(".partial-frame-999999-000000000000").is_dir());
    assert_same_objects(&files_under(root), &expected);

    // The metrics endpoint counts what went out: 3 records, their bytes, nothing pending.
    let text = metrics.render(spool).unwrap();
    let bytes: usize = expected.values().map(Vec::len).sum();
    for (name, value) in [
        ("qualmd_uplink_records_total", 3.0),
        ("qualmd_uplink_bytes_total", bytes as f64),
        ("qualmd_uplink_failures_total", 0.0),
        ("qualmd_uplink_refused_records_total", 0.0),
        ("qualmd_uplink_pending_records", 0.0),
        ("qualmd_uplink_lag_seconds", 0.0),
    ] {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        assert_eq!(line[name.len() + 1..].parse::<f64>().unwrap(), value, "{line}");
    }
}

#[test]
fn a_record_evicted_during_its_upload_is_not_marked_and_not_an_error() {
    let Some(webdav) = WebDav::start() else { return };
    let (spool, port) = (webdav.spool.clone(), webdav.port);
    // 400,000 + 50,000 + 100,000 B at 500,000 B/s: about a second in flight.
    let expected = make_records(&spool, 0, 1, 400_000);
    let key = expected.keys().next().unwrap().split('/').next().unwrap().to_string();

    let mut config = test_config(SinkKind::Http, &format!("http://127.0.0.1:{port}"));
    config.bandwidth_bytes_per_second = Some(500_000);
    config.timeout_seconds = 10.0;
    let mut uplink = Uplink::new(&spool, &config, Credentials::default()).unwrap();
    let stats = uplink.stats();
    let upload = thread::spawn(move || uplink.upload_pending());
    thread::sleep(Duration::from_millis(300));
    // What `Spool::remove` does: rename out of the record's name, then delete.
    let doomed = spool.join(format!(".partial-{key}"));
    fs::rename(spool.join(&key), &doomed).unwrap();
    let summary = upload.join().unwrap().unwrap();

    assert_eq!((summary.records, stats.records(), stats.failures()), (0, 0, 0));
    assert!(!doomed.join(".uploaded").exists() && !spool.join(&key).exists());
    // meta.json goes last, so the server holds no complete copy of the evicted record.
    assert!(!webdav.root.join(&key).join("meta.json").exists());
}

// ---------------------------------------------------------------------------------------------
// qualmd itself, killed while it uploads

/// Records whose last ledger line says kept (not evicted since); a last line cut short by a
/// kill is left out.
fn kept_records(ledger: &Path) -> BTreeMap<String, bool> {
    let text = fs::read_to_string(ledger).unwrap_or_default();
    let mut last = BTreeMap::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(record) = entry["record"].as_str() {
            last.insert(record.to_string(), entry["reason"] != "evicted");
        }
    }
    last
}

/// A qualmd configuration for the first `frames` committed real frames (or all, looped, when
/// `frames` is 0), every one kept (a gate threshold of 0), with the `[uplink]` table `uplink`.
fn qualmd_config(dir: &Path, frames: u64, uplink: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let calibration = fs::read_to_string(repo.join("models/selfie/calibration.toml")).unwrap();
    let at = calibration.find("threshold = ").unwrap();
    let end = at + calibration[at..].find('\n').unwrap();
    let calibration = format!("{}threshold = 0.0{}", &calibration[..at], &calibration[end..]);
    fs::write(dir.join("calibration.toml"), calibration).unwrap();
    let text = format!(
        "model = {model:?}\ncalibration = \"calibration.toml\"\nspool = \"spool\"\n\
         ledger = \"ledger.jsonl\"\n{frames}\n[source]\nframes = {source:?}\n\
         [uplink]\n{uplink}\n[device]\nrestart = {looped}\n",
        model = repo.join("models/selfie/selfie_int8.toml"),
        frames = if frames > 0 { format!("max_frames = {frames}") } else { String::new() },
        source = repo.join("models/frames/vtest"),
        looped = frames == 0,
    );
    let path = dir.join("qualmd.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn qualmd_killed_during_uploads_sends_every_kept_record_once() {
    let kills: usize = std::env::var("QUALMD_UPLINK_KILLS").map_or(10, |n| n.parse().unwrap());
    let Some(webdav) = WebDav::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Records stay in the spool, marked, so that the server's copies can be compared byte for
    // byte; the cap makes uploads slow enough for kills to land in them.
    let uplink = format!(
        "sink = \"http\"\nurl = \"http://127.0.0.1:{}/in\"\ndelete_after_upload = false\n\
         bandwidth_bytes_per_second = 1000000\nscan_interval_seconds = 0.1\n\
         backoff_initial_seconds = 0.05\nbackoff_max_seconds = 0.2\ntimeout_seconds = 5.0",
        webdav.port
    );
    let config = qualmd_config(dir.path(), 8, &uplink);
    let qualmd = || {
        Command::new(env!("CARGO_BIN_EXE_qualmd"))
            .arg("--config")
            .arg(&config)
            .env("QUALMD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    // How long an undisturbed run takes on this machine, on a scratch copy of the setup.
    let scratch = tempfile::tempdir().unwrap();
    let scratch_config = qualmd_config(scratch.path(), 8, &uplink.replace("/in", "/scratch"));
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--config")
        .arg(&scratch_config)
        .env("QUALMD_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let full = started.elapsed();

    let mut random = fastrand::Rng::with_seed(11);
    let mut killed = 0;
    for _ in 0..kills {
        let mut process = qualmd();
        thread::sleep(full.mul_f64(random.f64()));
        if process.try_wait().unwrap().is_none() {
            process.kill().unwrap();
            killed += 1;
        }
        process.wait().unwrap();
    }
    assert!(killed * 2 >= kills, "only {killed} of {kills} runs were killed before they ended");
    let status = qualmd().wait().unwrap();
    assert!(status.success());

    // Every record the ledger kept is on the server, byte-identical, and nothing else is;
    // every record in the spool is marked as sent.
    let kept: Vec<String> = kept_records(&dir.path().join("ledger.jsonl"))
        .into_iter()
        .filter_map(|(record, kept)| kept.then_some(record))
        .collect();
    assert_eq!(kept.len(), 8, "{kept:?}");
    let spool = dir.path().join("spool");
    let mut expected = Objects::new();
    for record in &kept {
        assert!(spool.join(record).join(".uploaded").is_file(), "{record} not marked as sent");
        for (file, bytes) in files_under(&spool.join(record)) {
            if !file.starts_with('.') {
                expected.insert(format!("{record}/{file}"), bytes);
            }
        }
    }
    assert_same_objects(&files_under(&webdav.root.join("in")), &expected);
}

#[test]
fn sigterm_abandons_the_upload_in_flight_without_marking_it() {
    let Some(webdav) = WebDav::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 40 frames kept over and over (the folder is looped) and sent at 100 kB/s: far more than
    // a few seconds of uploads, so the SIGTERM finds one in flight.
    let uplink = format!(
        "sink = \"http\"\nurl = \"http://127.0.0.1:{}/in\"\ndelete_after_upload = false\n\
         bandwidth_bytes_per_second = 100000\nscan_interval_seconds = 0.1",
        webdav.port
    );
    let config = qualmd_config(dir.path(), 0, &uplink);
    let mut process = Command::new(env!("CARGO_BIN_EXE_qualmd"))
        .arg("--config")
        .arg(&config)
        .env("QUALMD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Wait for the first object on the server, then a little into the next ones.
    let start = Instant::now();
    while files_under(&webdav.root).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing was uploaded in 60 s");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(700));
    let signalled = Instant::now();
    let status = Command::new("kill").arg("-TERM").arg(process.id().to_string()).status();
    assert!(status.unwrap().success());
    let status = process.wait().unwrap();
    let stopped = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(stopped < Duration::from_secs(5), "qualmd took {stopped:?} to stop");

    // Marked records are complete and byte-identical on the server; at least one record is
    // left unmarked for the next start; no object is a cut-off copy of its file.
    let spool = dir.path().join("spool");
    let on_server = files_under(&webdav.root.join("in"));
    let (mut marked, mut unmarked) = (0, 0);
    for entry in fs::read_dir(&spool).unwrap().flatten() {
        let record = entry.file_name().into_string().unwrap();
        if record.starts_with('.') {
            continue;
        }
        let sent = entry.path().join(".uploaded").is_file();
        for (file, bytes) in files_under(&entry.path()) {
            let object = on_server.get(&format!("{record}/{file}"));
            if sent && !file.starts_with('.') {
                assert!(object == Some(&bytes), "{record}/{file} marked but not on the server");
            } else if let Some(object) = object {
                assert!(*object == bytes, "{record}/{file} is on the server cut off");
            }
        }
        if sent { marked += 1 } else { unmarked += 1 }
    }
    assert!(marked >= 1 && unmarked >= 1, "{marked} records marked, {unmarked} not");
}
