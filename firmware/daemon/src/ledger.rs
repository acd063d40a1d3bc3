//! The ledger: one JSON line per frame seen, kept or not, appended and flushed line by line.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, LineWriter, Read, Seek, SeekFrom, Write};
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
    /// `observe_only` (no calibration), `non_finite` (more than 1% of its pixels have NaN or
    /// infinite logits: passed to the policy as most uncertain; `kept` says whether a record
    /// was stored) or `error` (unreadable frame). A line with `evicted`
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
    /// The frame's 64-bit perceptual (difference) hash as 16 hex digits, so that a replay can
    /// suppress near-duplicates as qualmd does; absent in ledgers written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perceptual_hash: Option<String>,
    /// The record's folder name in the spool, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// What went wrong, for a frame that failed or whose logits were non-finite.
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
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open ledger {}", path.display()))?;
        cut_torn_tail(&mut file)
            .with_context(|| format!("cannot repair the last line of ledger {}", path.display()))?;
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

/// Cuts a last line that a crash left without its newline. Appending after it would glue the
/// next entry onto the fragment and spoil a good line too; the fragment itself was never
/// complete, so nothing that was accounted for is lost.
fn cut_torn_tail(file: &mut File) -> std::io::Result<()> {
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(length - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }

    // Search backwards, one block at a time, for the newline that ends the last whole line.
    let mut block = vec![0u8; 64 * 1024];
    let (mut end, mut keep) = (length, 0);
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(index) = chunk.iter().rposition(|&byte| byte == b'\n') {
            keep = start + index as u64 + 1;
            break;
        }
        end = start;
    }

    tracing::warn!(bytes = length - keep, "cutting an unfinished last ledger line left by a crash");
    file.set_len(keep)?;
    file.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(frame: &str) -> LedgerEntry {
        let line = format!(
            r#"{{"time":"t","frame":"{frame}","origin":"o","model_sha256":"x","kept":false,"#
        ) + r#""reason":"error"}"#;
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn a_torn_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut ledger = Ledger::open(&path).unwrap();
        ledger.append(&entry("a")).unwrap();
        ledger.append(&entry("b")).unwrap();
        ledger.sync().unwrap();
        drop(ledger);
        let whole = fs::read(&path).unwrap();
        // A power cut in the middle of the third line.
        fs::write(&path, [&whole[..], br#"{"time":"t","frame":"vtest_0"#].concat()).unwrap();

        let mut ledger = Ledger::open(&path).unwrap();
        ledger.append(&entry("c")).unwrap();
        ledger.sync().unwrap();

        let frames: Vec<String> =
            read_ledger(&path).unwrap().into_iter().map(|e| e.frame).collect();
        assert_eq!(frames, ["a", "b", "c"]);
    }

    #[test]
    fn a_torn_only_line_leaves_an_empty_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        fs::write(&path, b"{\"time\":").unwrap();

        drop(Ledger::open(&path).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"");
    }
}
