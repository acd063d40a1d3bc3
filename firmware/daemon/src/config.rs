//! qualmd's configuration file (TOML), merged with command-line overrides.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where frames come from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A folder of `.jpg` / `.png` frames, read in name order.
    #[serde(default)]
    pub frames: Option<PathBuf>,
    /// A video file, decoded through an `ffmpeg` pipe.
    #[serde(default)]
    pub video: Option<PathBuf>,
}

/// The whole configuration. Relative paths in the file are relative to the file's folder.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model card (TOML) of the model to run.
    pub model: PathBuf,
    /// Calibration file; without one qualmd only observes: it writes the ledger, keeps nothing.
    #[serde(default)]
    pub calibration: Option<PathBuf>,
    /// Folder of kept records.
    pub spool: PathBuf,
    /// JSON Lines ledger, one line per frame, appended to.
    pub ledger: PathBuf,
    /// Frame source.
    pub source: SourceConfig,
    /// Stop after this many frames (all when absent).
    #[serde(default)]
    pub max_frames: Option<u64>,
    /// JPEG quality of kept frames, 1 to 100.
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u8,
    /// How qualmd runs on the camera: capture queue, source restarts, metrics endpoint.
    #[serde(default)]
    pub device: crate::service::DeviceConfig,
}

fn default_jpeg_quality() -> u8 {
    90
}

impl Config {
    /// Reads a configuration file, resolving its relative paths against its folder.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        let mut config: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid qualmd configuration", path.display()))?;

        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: &mut PathBuf| *p = base.join(&*p);
        resolve(&mut config.model);
        resolve(&mut config.spool);
        resolve(&mut config.ledger);
        config.calibration.as_mut().map(resolve);
        config.source.frames.as_mut().map(resolve);
        config.source.video.as_mut().map(resolve);
        Ok(config)
    }

    /// Checks the values that the file format cannot.
    ///
    /// # Errors
    /// When the source is not exactly one of `frames` and `video`, or a value is out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.source.frames, &self.source.video) {
            (Some(_), None) | (None, Some(_)) => {}
            (Some(_), Some(_)) => bail!("expected one frame source, found both frames and video"),
            (None, None) => bail!("expected a frame source (frames folder or video), found none"),
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            bail!("expected jpeg_quality from 1 to 100, found {}", self.jpeg_quality);
        }
        Ok(())
    }
}
