//! The spool: one folder per kept frame, each written completely or not at all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// temporary file in the same folder, fsync, rename, fsync of the folder.
///
/// # Errors
/// When any step fails; the temporary file is then removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let folder = parent_of(path);
    let mut file = tempfile::NamedTempFile::new_in(folder)
        .with_context(|| format!("cannot create a temporary file in {}", folder.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    file.as_file().sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    file.persist(path).with_context(|| format!("cannot rename into {}", path.display()))?;
    sync_folder(folder)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn sync_folder(folder: &Path) -> anyhow::Result<()> {
    fs::File::open(folder)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync folder {}", folder.display()))
}

/// Prefix of folders still being written; a crash can leave them behind.
const PARTIAL_PREFIX: &str = ".partial-";

/// Prefix of complete records of the open budget window; renamed to their key when the window
/// closes. Names starting with `.` are never taken by the uplink.
pub const PENDING_PREFIX: &str = ".pending-";

/// Empty file the uplink writes into a record folder once the server confirmed the record.
pub const UPLOADED_MARKER: &str = ".uploaded";

/// One file of a record.
#[derive(Debug)]
pub struct RecordFile<'a> {
    /// File name inside the record folder.
    pub name: &'static str,
    /// Content.
    pub bytes: &'a [u8],
}

/// How far the spool may grow; the lowest-priority records make room beyond it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Most records, pending ones included.
    pub max_records: Option<u64>,
    /// Most bytes of record files, pending ones included.
    pub max_bytes: Option<u64>,
}

/// What ranks a record for eviction; stored in its `meta.json` as `priority` and `baseline`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct RecordRank {
    /// Larger is more uncertain (the first rule's statistic, oriented).
    pub priority: f32,
    /// Kept for the random baseline.
    #[serde(default)]
    pub baseline: bool,
}

/// A record the spool chose to evict.
#[derive(Clone, Debug, PartialEq)]
pub struct Victim {
    /// The record's key.
    pub key: String,
    /// Its frame's name, from `meta.json`.
    pub frame: String,
    /// Whether the uplink had confirmed it.
    pub uploaded: bool,
}

/// What the start-up scan found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Records found, pending ones finalized included.
    pub records: u64,
    /// Partial folders removed.
    pub removed_partial: u64,
    /// Pending records of a window a crash left open, finalized.
    pub finalized: u64,
    /// Entries that are not records (junk, unreadable `meta.json`); left alone.
    pub ignored: u64,
}

#[derive(Debug)]
struct Entry {
    key: String,
    frame: String,
    bytes: u64,
    rank: RecordRank,
    pending: bool,
}

/// A folder of complete records with an index of their size and rank.
#[derive(Debug)]
pub struct Spool {
    folder: PathBuf,
    limits: SpoolLimits,
    records: Vec<Entry>,
    bytes: u64,
    scan: ScanReport,
}

impl Spool {
    /// Opens (creating it if needed) a spool folder. Partial records a crash left are removed;
    /// pending records of a window a crash left open are finalized: they were the best of
    /// their window so far, and a crash must not lose what the ledger says was kept.
    /// Everything else that is not a record is left alone and not counted.
    ///
    /// # Errors
    /// When the folder cannot be created or listed. A single bad entry is logged and skipped.
    pub fn open(folder: &Path, limits: SpoolLimits) -> anyhow::Result<Self> {
        fs::create_dir_all(folder)
            .with_context(|| format!("cannot create spool folder {}", folder.display()))?;
        let mut names: Vec<String> = fs::read_dir(folder)
            .with_context(|| format!("cannot list spool folder {}", folder.display()))?
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();

        let mut spool = Self {
            folder: folder.to_path_buf(),
            limits,
            records: Vec::new(),
            bytes: 0,
            scan: ScanReport::default(),
        };
        for name in names {
            spool.scan_entry(&name);
        }
        if (spool.scan.finalized > 0 || spool.scan.removed_partial > 0)
            && let Err(error) = sync_folder(folder)
        {
            tracing::warn!("{error:#}");
        }
        Ok(spool)
    }

    fn scan_entry(&mut self, name: &str) {
        let path = self.folder.join(name);
        if name.starts_with(PARTIAL_PREFIX) {
            tracing::warn!(path = %path.display(), "removing a partial record left by a crash");
            match fs::remove_dir_all(&path) {
                Ok(()) => self.scan.removed_partial += 1,
                Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
            }
            return;
        }

        let key = match name.strip_prefix(PENDING_PREFIX) {
            Some(key) if !key.is_empty() && !key.starts_with('.') => {
                // Pending folders are renamed into place complete, so one that is not a
                // record was being removed when the daemon died (spools of older versions
                // removed in place): finish the removal rather than publish it.
                if let Err(error) = read_record(&path) {
                    tracing::warn!("removing {}: not a record: {error:#}", path.display());
                    match fs::remove_dir_all(&path) {
                        Ok(()) => self.scan.removed_partial += 1,
                        Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
                    }
                    return;
                }
                if let Err(error) = self.rename_pending(key) {
                    tracing::warn!("{error:#}");
                    self.scan.ignored += 1;
                    return;
                }
                self.scan.finalized += 1;
                key
            }
            _ if name.starts_with('.') => return,
            _ => name,
        };

        match read_record(&self.folder.join(key)) {
            Ok((frame, rank, bytes)) => {
                self.add(Entry { key: key.to_owned(), frame, bytes, rank, pending: false });
                self.scan.records += 1;
            }
            Err(error) => {
                tracing::warn!("leaving alone {}: not a record: {error:#}", path.display());
                self.scan.ignored += 1;
            }
        }
    }

    /// Renames `.pending-<key>` to `<key>`; when `<key>` exists already the pending copy is
    /// the same record (keys derive from content) and is removed.
    fn rename_pending(&self, key: &str) -> anyhow::Result<()> {
        let pending = self.folder.join(format!("{PENDING_PREFIX}{key}"));
        let target = self.folder.join(key);
        if target.exists() {
            return fs::remove_dir_all(&pending)
                .with_context(|| format!("cannot remove duplicate {}", pending.display()));
        }
        fs::rename(&pending, &target)
            .with_context(|| format!("cannot rename {} to {}", pending.display(), target.display()))
    }

    /// The spool folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// What the start-up scan found.
    pub fn scan_report(&self) -> ScanReport {
        self.scan
    }

    /// Records held, pending ones included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the spool holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of record files held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Stores a record under `key` unless one is already there (keys derive from content, so
    /// an existing record is the same one). A `pending` record is stored as `.pending-<key>`
    /// until [`Spool::finalize`]. Returns the record's folder. The spool may now be over its
    /// limits: take [`Spool::next_victim`] until it returns `None`.
    ///
    /// # Errors
    /// When a file cannot be written; nothing partial stays visible under `key`.
    pub fn store(
        &mut self,
        key: &str,
        frame: &str,
        files: &[RecordFile<'_>],
        rank: RecordRank,
        pending: bool,
    ) -> anyhow::Result<PathBuf> {
        let target = self.folder.join(key);
        let pending_path = self.folder.join(format!("{PENDING_PREFIX}{key}"));
        if target.is_dir() || pending_path.is_dir() {
            return Ok(if pending_path.is_dir() { pending_path } else { target });
        }

        let destination = if pending { pending_path } else { target };
        let partial = self.folder.join(format!("{PARTIAL_PREFIX}{key}"));
        let written = Self::write_files(&partial, files)
            .and_then(|()| {
                fs::rename(&partial, &destination)
                    .with_context(|| format!("cannot rename record into {}", destination.display()))
            })
            .and_then(|()| sync_folder(&self.folder));
        if written.is_err() {
            let _ = fs::remove_dir_all(&partial);
            let _ = fs::remove_dir_all(&destination);
        }
        written?;

        let bytes = files.iter().map(|f| f.bytes.len() as u64).sum();
        self.add(Entry { key: key.to_owned(), frame: frame.to_owned(), bytes, rank, pending });
        Ok(destination)
    }

    /// Makes a pending record final (renames it to its key). A record no longer there (evicted
    /// for room meanwhile) is not an error.
    ///
    /// # Errors
    /// When the rename or the folder sync fails; the record stays pending and is finalized at
    /// the next start.
    pub fn finalize(&mut self, key: &str) -> anyhow::Result<()> {
        let Some(entry) = self.records.iter_mut().find(|e| e.key == key && e.pending) else {
            return Ok(());
        };
        let pending = self.folder.join(format!("{PENDING_PREFIX}{key}"));
        let target = self.folder.join(key);
        fs::rename(&pending, &target).with_context(|| {
            format!("cannot rename {} to {}", pending.display(), target.display())
        })?;
        entry.pending = false;
        sync_folder(&self.folder)
    }

    /// Forgets records whose folder is gone, while the spool is over a limit: the uplink
    /// removes the records it sent, and they must neither count against the limits nor be
    /// ledgered as evicted. Returns how many were forgotten.
    pub fn forget_vanished(&mut self) -> usize {
        let over_records = self.limits.max_records.is_some_and(|m| self.records.len() as u64 > m);
        let over_bytes = self.limits.max_bytes.is_some_and(|m| self.bytes > m);
        if !(over_records || over_bytes) {
            return 0;
        }
        let before = self.records.len();
        let gone: Vec<bool> = self.records.iter().map(|e| !self.path_of(e).is_dir()).collect();
        let mut index = 0;
        self.records.retain(|_| {
            index += 1;
            !gone[index - 1]
        });
        self.bytes = self.records.iter().map(|e| e.bytes).sum();
        before - self.records.len()
    }

    /// The record to evict next while the spool is over a limit, or `None` within its limits.
    /// Order: records the uplink confirmed first, then the least uncertain, baseline records
    /// last; among equals the oldest.
    pub fn next_victim(&self) -> Option<Victim> {
        let over_records = self.limits.max_records.is_some_and(|m| self.records.len() as u64 > m);
        let over_bytes = self.limits.max_bytes.is_some_and(|m| self.bytes > m);
        if !(over_records || over_bytes) {
            return None;
        }

        // The marker is written by the uplink at any time, so it is looked up now.
        let uploaded: Vec<bool> =
            self.records.iter().map(|e| self.path_of(e).join(UPLOADED_MARKER).exists()).collect();
        let rank = |i: usize| {
            let entry = &self.records[i];
            (!uploaded[i], entry.rank.baseline, entry.rank.priority)
        };
        let victim = (0..self.records.len()).min_by(|&a, &b| {
            let (x, y) = (rank(a), rank(b));
            x.0.cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.total_cmp(&y.2))
        })?;
        let entry = &self.records[victim];
        Some(Victim {
            key: entry.key.clone(),
            frame: entry.frame.clone(),
            uploaded: uploaded[victim],
        })
    }

    /// Removes a record, pending or final, and forgets it. A record already gone is not an
    /// error.
    ///
    /// # Errors
    /// When the folder exists but cannot be removed; the spool then forgets it all the same,
    /// so that one stuck folder cannot stop eviction.
    pub fn remove(&mut self, key: &str) -> anyhow::Result<()> {
        let Some(index) = self.records.iter().position(|e| e.key == key) else { return Ok(()) };
        let entry = self.records.remove(index);
        self.bytes -= entry.bytes;
        let path = self.path_of(&entry);

        // Rename before deleting: a crash in the middle then leaves a `.partial-` folder, which
        // start-up removes, never a half-emptied folder under a record's (or pending) name.
        let doomed = self.folder.join(format!("{PARTIAL_PREFIX}{}", entry.key));
        match fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot move record {} out", path.display()));
            }
        }
        sync_folder(&self.folder)?;
        fs::remove_dir_all(&doomed)
            .with_context(|| format!("cannot remove record {}", doomed.display()))
    }

    fn path_of(&self, entry: &Entry) -> PathBuf {
        if entry.pending {
            self.folder.join(format!("{PENDING_PREFIX}{}", entry.key))
        } else {
            self.folder.join(&entry.key)
        }
    }

    fn add(&mut self, entry: Entry) {
        self.bytes += entry.bytes;
        self.records.push(entry);
    }

    fn write_files(folder: &Path, files: &[RecordFile<'_>]) -> anyhow::Result<()> {
        fs::create_dir_all(folder)
            .with_context(|| format!("cannot create record folder {}", folder.display()))?;
        for file in files {
            let path = folder.join(file.name);
            let mut handle = fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            handle
                .write_all(file.bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            handle.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
        }
        sync_folder(folder)
    }
}

/// Reads what the spool needs of a record folder: its frame name, rank and size in bytes.
/// A record of the time before ranks existed ranks lowest.
fn read_record(folder: &Path) -> anyhow::Result<(String, RecordRank, u64)> {
    #[derive(Deserialize)]
    struct Meta {
        frame: String,
        #[serde(default = "lowest")]
        priority: f32,
        #[serde(default)]
        baseline: bool,
    }
    fn lowest() -> f32 {
        f32::MIN
    }

    let meta_path = folder.join("meta.json");
    let text =
        fs::read(&meta_path).with_context(|| format!("cannot read {}", meta_path.display()))?;
    let meta: Meta = serde_json::from_slice(&text).with_context(|| {
        format!("{}: expected a record's metadata (JSON with frame)", meta_path.display())
    })?;

    let mut bytes = 0;
    for entry in
        fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?
    {
        let metadata = entry.and_then(|e| e.metadata());
        bytes += metadata.map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    }
    let rank = RecordRank { priority: meta.priority, baseline: meta.baseline };
    Ok((meta.frame, rank, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(frame: &str, priority: f32, baseline: bool) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "frame": frame, "priority": priority, "baseline": baseline
        }))
        .unwrap()
    }

    fn rank(priority: f32) -> RecordRank {
        RecordRank { priority, baseline: false }
    }

    /// Stores a record of `frame` with a meta.json of `bytes` bytes and the given rank.
    fn put(spool: &mut Spool, frame: &str, priority: f32, baseline: bool, pending: bool) {
        let meta = meta(frame, priority, baseline);
        let files = [RecordFile { name: "meta.json", bytes: &meta }];
        let rank = RecordRank { priority, baseline };
        spool.store(frame, frame, &files, rank, pending).unwrap();
    }

    #[test]
    fn partial_records_are_cleaned_and_complete_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        put(&mut spool, "frame-1", 0.5, false, false);
        fs::create_dir(dir.path().join(".partial-frame-2")).unwrap();

        let spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        assert!(!dir.path().join(".partial-frame-2").exists());
        assert_eq!(
            fs::read(dir.path().join("frame-1/meta.json")).unwrap(),
            meta("frame-1", 0.5, false)
        );
        let report = spool.scan_report();
        assert_eq!((report.records, report.removed_partial, report.ignored), (1, 1, 0));
    }

    #[test]
    fn pending_records_are_finalized_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        put(&mut spool, "a", 0.5, false, true);
        put(&mut spool, "b", 0.5, false, true);
        assert!(dir.path().join(".pending-a").is_dir() && !dir.path().join("a").exists());
        spool.finalize("a").unwrap();
        assert!(dir.path().join("a").is_dir() && !dir.path().join(".pending-a").exists());
        drop(spool);

        // "b" was pending when the process ended: the next start finalizes it.
        let spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        assert!(dir.path().join("b/meta.json").is_file());
        assert_eq!((spool.len(), spool.scan_report().finalized), (2, 1));
    }

    #[test]
    fn an_emptied_pending_folder_is_removed_not_finalized() {
        // A kill -9 while an older qualmd deleted a pending record in place left it empty.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".pending-vtest_0480-9c20bcf905dc")).unwrap();

        let spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!((spool.scan_report().finalized, spool.scan_report().removed_partial), (0, 1));
    }

    #[test]
    fn removal_leaves_nothing_under_the_record_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        put(&mut spool, "a", 0.5, false, false);
        put(&mut spool, "b", 0.7, false, true);

        spool.remove("a").unwrap();
        spool.remove("b").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(spool.len(), 0);
    }

    #[test]
    fn storing_the_same_key_twice_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        spool.store("k", "k", &[RecordFile { name: "a", bytes: b"1" }], rank(0.0), false).unwrap();
        spool.store("k", "k", &[RecordFile { name: "a", bytes: b"2" }], rank(0.0), false).unwrap();
        assert_eq!(fs::read(dir.path().join("k/a")).unwrap(), b"1");
        assert_eq!((spool.len(), spool.bytes()), (1, 1));
    }

    #[test]
    fn victims_come_uploaded_first_then_least_uncertain_baseline_last() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { max_records: Some(1), max_bytes: None };
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        put(&mut spool, "sure", 0.1, false, false);
        put(&mut spool, "unsure", 0.9, false, false);
        put(&mut spool, "random", -5.0, true, false);
        put(&mut spool, "sent", 0.95, false, false);
        fs::write(dir.path().join("sent").join(UPLOADED_MARKER), b"").unwrap();

        let mut order = Vec::new();
        while let Some(victim) = spool.next_victim() {
            spool.remove(&victim.key).unwrap();
            order.push(victim.key);
        }
        assert_eq!(order, ["sent", "sure", "unsure"]);
        assert!(dir.path().join("random").is_dir() && !dir.path().join("sure").exists());
    }

    #[test]
    fn records_the_uplink_removed_are_forgotten_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { max_records: Some(2), max_bytes: None };
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        for (frame, priority) in [("a", 0.1), ("b", 0.2), ("c", 0.3)] {
            put(&mut spool, frame, priority, false, false);
        }
        // Three records over a limit of two: the folder the uplink deleted ("a") is forgotten,
        // not ledgered as evicted, and no record that is still there has to go.
        let sent = dir.path().join(&spool.records[0].key);
        fs::remove_dir_all(&sent).unwrap();
        assert_eq!(spool.forget_vanished(), 1);
        assert_eq!((spool.len(), spool.next_victim()), (2, None));
        assert_eq!(spool.forget_vanished(), 0);
    }

    #[test]
    fn byte_limit_counts_files_found_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        put(&mut spool, "a", 0.2, false, false);
        put(&mut spool, "b", 0.1, false, false);
        let total = spool.bytes();
        assert_eq!(total, (meta("a", 0.2, false).len() + meta("b", 0.1, false).len()) as u64);

        let limits = SpoolLimits { max_records: None, max_bytes: Some(total - 1) };
        let spool = Spool::open(dir.path(), limits).unwrap();
        assert_eq!(spool.bytes(), total);
        assert_eq!(spool.next_victim().map(|v| (v.key, v.frame)), Some(("b".into(), "b".into())));
    }

    #[test]
    fn junk_is_left_alone_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        fs::create_dir(dir.path().join("bad")).unwrap();
        fs::write(dir.path().join("bad/meta.json"), b"{not json").unwrap();
        fs::create_dir(dir.path().join(".pending-")).unwrap();
        let spool = Spool::open(dir.path(), SpoolLimits::default()).unwrap();
        assert_eq!((spool.len(), spool.scan_report().ignored), (0, 3));
        for name in ["notes.txt", "empty", "bad/meta.json", ".pending-"] {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
