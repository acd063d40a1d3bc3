//! The spool: one folder per kept frame, each written completely or not at all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

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

/// One file of a record.
#[derive(Debug)]
pub struct RecordFile<'a> {
    /// File name inside the record folder.
    pub name: &'static str,
    /// Content.
    pub bytes: &'a [u8],
}

/// A folder of complete records.
#[derive(Debug)]
pub struct Spool {
    folder: PathBuf,
}

impl Spool {
    /// Opens (creating it if needed) a spool folder and removes partial records a crash left.
    ///
    /// # Errors
    /// When the folder cannot be created or listed.
    pub fn open(folder: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(folder)
            .with_context(|| format!("cannot create spool folder {}", folder.display()))?;
        let entries = fs::read_dir(folder)
            .with_context(|| format!("cannot list spool folder {}", folder.display()))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX) {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing a partial record left by a crash");
                fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove partial record {}", path.display()))?;
            }
        }
        Ok(Self { folder: folder.to_path_buf() })
    }

    /// The spool folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Stores a record under `key` unless one is already there (keys derive from content, so
    /// an existing record is the same one). Returns the record's folder.
    ///
    /// # Errors
    /// When a file cannot be written; nothing partial stays visible under `key`.
    pub fn store(&self, key: &str, files: &[RecordFile<'_>]) -> anyhow::Result<PathBuf> {
        let target = self.folder.join(key);
        if target.is_dir() {
            return Ok(target);
        }

        let partial = self.folder.join(format!("{PARTIAL_PREFIX}{key}"));
        let written = Self::write_files(&partial, files)
            .and_then(|()| {
                fs::rename(&partial, &target)
                    .with_context(|| format!("cannot rename record into {}", target.display()))
            })
            .and_then(|()| sync_folder(&self.folder));
        if written.is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
        written.map(|()| target)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_records_are_cleaned_and_complete_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let files = [RecordFile { name: "meta.json", bytes: b"{}" }];
        let record = spool.store("frame-1", &files).unwrap();
        fs::create_dir(dir.path().join(".partial-frame-2")).unwrap();

        let _ = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join(".partial-frame-2").exists());
        assert_eq!(fs::read(record.join("meta.json")).unwrap(), b"{}");
    }

    #[test]
    fn storing_the_same_key_twice_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.store("k", &[RecordFile { name: "a", bytes: b"1" }]).unwrap();
        spool.store("k", &[RecordFile { name: "a", bytes: b"2" }]).unwrap();
        assert_eq!(fs::read(dir.path().join("k/a")).unwrap(), b"1");
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
