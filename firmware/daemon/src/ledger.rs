//! The ledger: one JSON line per frame seen, kept or not, appended and flushed line by line.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, LineWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use qualm_core::{FrameStats, Statistic};
use serde::{Deserialize, Serialize};

/// What happened to one frame.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct LedgerEntry {
    /// Wall-clock time the frame was processed (RFC 3339, UTC).
    pub time: String,
    /// Frame name.
    pub frame: String,
    /// File or video position it came from.
    pub origin: String,
    /// sha256 of the model that scored it.
    pub model_sha256: String,
    /// Whether a record was stored.
    pub kept: bool,
    /// Why the frame was or was not kept: `kept`, `baseline` (random share, kept whatever its
    /// score), `below_threshold`, `duplicate`, `cooldown`, `budget` (its window was full of more
    /// uncertain frames), `spool_error` (to keep, but the spool could not store it),
    /// `observe_only` (no calibration) or `error` (unreadable frame). A line with `evicted`
    /// says that the record named in `record`, kept on an earlier line, was removed: pushed out
    /// of its budget window by a more uncertain frame, or evicted to make room in the spool.
    pub reason: String,
    /// Softmax temperature the statistics were computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Normalized-entropy level behind `uncertain_fraction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertain_level: Option<f32>,
    /// The gate's statistic, when a gate ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<Statistic>,
    /// The gate's threshold, when a gate ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// The frame statistics (absent for a frame that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<FrameStats>,
    /// The record's folder name in the spool, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// What went wrong, for a frame that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An open ledger file.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    writer: LineWriter<File>,
}

impl Ledger {
    /// Opens `path` for appending, creating it and its folder if needed.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create ledger folder {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open ledger {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), writer: LineWriter::new(file) })
    }

    /// Appends one entry as one line.
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn append(&mut self, entry: &LedgerEntry) -> anyhow::Result<()> {
        self.append_line(entry)
    }

    /// Appends any serializable line, e.g. a [`SummaryLine`](crate::summary::SummaryLine).
    ///
    /// # Errors
    /// When the line cannot be encoded or written.
    pub fn append_line<T: Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(value).context("cannot encode ledger line")?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .with_context(|| format!("cannot append to ledger {}", self.path.display()))
    }

    /// Flushes and fsyncs the file.
    ///
    /// # Errors
    /// When the data cannot be written out.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.writer.flush()?;
        self.writer
            .get_ref()
            .sync_all()
            .with_context(|| format!("cannot sync ledger {}", self.path.display()))
    }
}

/// The `kind` of a ledger line: frame lines have none, other lines (summaries) name theirs.
#[derive(Deserialize)]
struct LineKind {
    #[serde(default)]
    kind: Option<String>,
}

/// Whether `line` is a frame line rather than a summary or another kind of line.
fn is_frame_line(line: &str) -> bool {
    // Only a line with a `kind` key pays for the second parse; a line that does not parse
    // counts as a frame line, so its error names what a frame line needs.
    !line.contains("\"kind\"")
        || serde_json::from_str::<LineKind>(line).map_or(true, |probe| probe.kind.is_none())
}

/// Reads every frame entry of a ledger, skipping summary lines (those with a `kind`).
///
/// # Errors
/// When the file cannot be read or a line is not a ledger entry (the line number is named).
pub fn read_ledger(path: &Path) -> anyhow::Result<Vec<LedgerEntry>> {
    let file =
        File::open(path).with_context(|| format!("cannot open ledger {}", path.display()))?;
    let mut entries = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read ledger {}", path.display()))?;
        if line.trim().is_empty() || !is_frame_line(&line) {
            continue;
        }
        let entry = serde_json::from_str(&line).with_context(|| {
            format!("{} line {}: expected a ledger entry (JSON object)", path.display(), number + 1)
        })?;
        entries.push(entry);
    }
    Ok(entries)
}
