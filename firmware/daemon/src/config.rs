//! qualmd's configuration file (TOML), merged with command-line overrides.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use qualm_core::policy::{Budget, PolicyConfig};
use serde::Deserialize;

use crate::uplink::UplinkConfig;

/// Most records a budget window holds (the policy's fixed candidate capacity).
pub const BUDGET_CAPACITY: usize = 64;

/// The `[policy]` table: which of the frames that pass the calibration's rules are kept.
/// Every key is optional; without the table every passing frame is kept.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Most records per budget window (1 to [`BUDGET_CAPACITY`]); no budget when absent.
    #[serde(default)]
    pub budget_records: Option<usize>,
    /// Length of a budget window, e.g. `"10m"`; needed with `budget_records`.
    #[serde(default)]
    pub budget_window: Option<String>,
    /// Share of all frames kept at random whatever their score, e.g. `0.01`.
    #[serde(default)]
    pub baseline_rate: f32,
    /// Seed of the baseline draws.
    #[serde(default)]
    pub seed: u64,
    /// A frame whose 64-bit perceptual hash is within this Hamming distance of one of the last
    /// kept frames' is skipped as a near-duplicate; no check when absent.
    #[serde(default)]
    pub duplicate_distance: Option<u32>,
    /// Least frame time between two kept frames, e.g. `"2s"`.
    #[serde(default)]
    pub cooldown: Option<String>,
    /// Frame time step of a recorded source, e.g. `"40ms"`: frame `i` is at `i` steps. When
    /// absent, a frame's time is when it was read (monotonic clock).
    #[serde(default)]
    pub frame_interval: Option<String>,
}

impl PolicySettings {
    /// The settings as the core policy takes them.
    ///
    /// # Errors
    /// When a duration does not parse, or the budget is half given or out of range.
    pub fn policy_config(&self) -> anyhow::Result<PolicyConfig> {
        // A window that does not parse is reported first, whatever else is missing: the
        // value the user wrote is the more useful thing to fix.
        let window_ms =
            self.budget_window.as_deref().map(|w| millis("budget_window", w)).transpose()?;
        let budget = match (self.budget_records, window_ms) {
            (None, None) => None,
            (Some(records), Some(window_ms)) => Some(Budget { records, window_ms }),
            (Some(_), None) => bail!("policy: expected budget_window with budget_records"),
            (None, Some(_)) => bail!("policy: expected budget_records with budget_window"),
        };
        let cooldown_ms = self.cooldown.as_deref().map_or(Ok(0), |c| millis("cooldown", c))?;
        let config = PolicyConfig {
            budget,
            baseline_rate: self.baseline_rate,
            seed: self.seed,
            duplicate_distance: self.duplicate_distance,
            cooldown_ms,
        };

        // The ranges are the core policy's own, checked once there.
        config.check(BUDGET_CAPACITY).map_err(|error| anyhow::anyhow!("policy: {error}"))?;
        Ok(config)
    }

    /// The frame interval in milliseconds, when set.
    ///
    /// # Errors
    /// When it does not parse as a duration.
    pub fn frame_interval_ms(&self) -> anyhow::Result<Option<u64>> {
        self.frame_interval.as_deref().map(|i| millis("frame_interval", i)).transpose()
    }
}

fn millis(key: &str, text: &str) -> anyhow::Result<u64> {
    let duration: Duration = humantime::parse_duration(text).with_context(|| {
        format!("policy: expected {key} as a duration like \"10s\", found {text:?}")
    })?;
    u64::try_from(duration.as_millis())
        .with_context(|| format!("policy: {key} {text:?} is too long"))
}
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
    /// Region-of-interest mask: a grayscale PNG, scaled to the model output; pixels where it is
    /// 0 take no part in any statistic.
    #[serde(default)]
    pub roi: Option<PathBuf>,
    /// Most records the spool holds; the lowest-priority record makes room beyond it.
    #[serde(default)]
    pub spool_max_records: Option<u64>,
    /// Most bytes the spool's records hold; the lowest-priority records make room beyond it.
    #[serde(default)]
    pub spool_max_bytes: Option<u64>,
    /// Which of the passing frames are kept.
    #[serde(default)]
    pub policy: PolicySettings,
    /// How qualmd runs on the camera: capture queue, source restarts, metrics endpoint.
    #[serde(default)]
    pub device: crate::service::DeviceConfig,
    /// Publish the summary lines to an MQTT broker too; none when absent.
    #[serde(default)]
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// The largest frame file a folder source decodes (`[decode]`); larger ones are ledgered
    /// as errors.
    #[serde(default)]
    pub decode: crate::decode::DecodeLimits,
    /// Where kept records are sent (the `[uplink]` table); without it they stay in the spool.
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
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
        config.roi.as_mut().map(resolve);
        config.mqtt.as_mut().and_then(|mqtt| mqtt.password_file.as_mut()).map(resolve);

        // The file's own tables, named with the file: flags cannot change them.
        let in_file = || format!("{}: invalid setting", path.display());
        config.policy.policy_config().with_context(in_file)?;
        config.policy.frame_interval_ms().with_context(in_file)?;
        config.decode.validate().with_context(in_file)?;
        if let Some(uplink) = &mut config.uplink {
            uplink.credentials_file.as_mut().map(resolve);
        }
        Ok(config)
    }

    /// Checks the input paths that are cheap to check, so that a wrong path is reported at
    /// once rather than after the model has loaded: the frame folder lists images, a video
    /// file (not a stream or camera) exists, the calibration and region-of-interest files
    /// exist.
    ///
    /// # Errors
    /// When one of them is missing, naming it.
    pub fn check_inputs(&self) -> anyhow::Result<()> {
        if let Some(folder) = &self.source.frames {
            crate::source::FolderSource::open(folder)?;
        }
        if let Some(video) = &self.source.video
            && !crate::source::is_stream_url(video)
            && !crate::source::is_camera_device(video)
            && !video.is_file()
        {
            bail!("expected a video file at {}, found none", video.display());
        }
        for (what, path) in [("calibration", &self.calibration), ("roi", &self.roi)] {
            if let Some(path) = path
                && !path.is_file()
            {
                bail!("expected the {what} file {}, found none", path.display());
            }
        }
        Ok(())
    }

    /// Checks the values that the file format cannot.
    ///
    /// # Errors
    /// When the source is not exactly one of `frames` and `video`, a `[policy]` value is
    /// invalid, a spool limit is 0, an `[mqtt]` value is invalid or comes without a summary
    /// interval, or another value is out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.source.frames, &self.source.video) {
            (Some(_), None) | (None, Some(_)) => {}
            (Some(_), Some(_)) => bail!("expected one frame source, found both frames and video"),
            (None, None) => bail!("expected a frame source (frames folder or video), found none"),
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            bail!("expected jpeg_quality from 1 to 100, found {}", self.jpeg_quality);
        }
        if self.spool_max_records == Some(0) || self.spool_max_bytes == Some(0) {
            bail!("expected spool_max_records and spool_max_bytes above 0, found 0");
        }
        self.policy.policy_config()?;
        self.policy.frame_interval_ms()?;
        if let Some(mqtt) = &self.mqtt {
            mqtt.settings()?;
            if self.device.summary_interval.is_none() {
                bail!("[mqtt] publishes summaries: expected [device] summary_interval, found none");
            }
        }
        self.decode.validate()?;
        if let Some(uplink) = &self.uplink {
            uplink.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> PolicySettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn policy_durations_become_milliseconds() {
        let policy = settings(
            "budget_records = 5\nbudget_window = \"10m\"\ncooldown = \"1s 500ms\"\n\
             baseline_rate = 0.01\nframe_interval = \"40ms\"",
        );
        let config = policy.policy_config().unwrap();
        assert_eq!(config.budget, Some(Budget { records: 5, window_ms: 600_000 }));
        assert_eq!((config.cooldown_ms, config.baseline_rate), (1_500, 0.01));
        assert_eq!(policy.frame_interval_ms().unwrap(), Some(40));
        assert_eq!(PolicySettings::default().policy_config().unwrap(), PolicyConfig::default());
    }

    #[test]
    fn bad_policy_values_name_the_key() {
        let cases = [
            ("budget_records = 5", "expected budget_window with budget_records"),
            (
                "budget_records = 65\nbudget_window = \"1s\"",
                "budget_records from 1 to 64, found 65",
            ),
            ("budget_records = 1\nbudget_window = \"soon\"", "budget_window as a duration"),
            ("budget_window = \"ten minutes\"", "budget_window as a duration"),
            ("budget_window = \"10m\"", "expected budget_records with budget_window"),
            ("budget_records = 1\nbudget_window = \"0s\"", "budget_window of at least 1ms"),
            ("baseline_rate = 2.0", "baseline_rate in [0, 1], found 2"),
            ("cooldown = \"-1s\"", "cooldown as a duration"),
        ];
        for (text, expected) in cases {
            let message = format!("{:#}", settings(text).policy_config().unwrap_err());
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
