//! Calibration files: the temperature and gate threshold chosen on the host for one model.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use qualm_core::policy::RULE_CAPACITY;
use qualm_core::{Combine, Gate, Rules, Temperature};
use serde::{Deserialize, Serialize};

/// Where a threshold came from, for the people who read the file later.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Provenance {
    /// When the file was written (RFC 3339).
    #[serde(default)]
    pub created: String,
    /// How the threshold was chosen, e.g. `keep-rate`.
    #[serde(default)]
    pub method: String,
    /// The data it was chosen on.
    #[serde(default)]
    pub data: String,
    /// Number of frames used.
    #[serde(default)]
    pub frames: u64,
    /// The guarantee the threshold comes with, in words.
    #[serde(default)]
    pub statement: String,
    /// The distribution of every frame statistic on those frames, for `qualm drift`; absent in
    /// files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// A compact distribution of each frame statistic over the calibration frames: either every
/// frame's value or equally spaced quantiles, each point standing for the same share of frames.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Reference {
    /// Frames the points summarise.
    pub frames: u64,
    /// `values` when the points are the frames' own values, `quantiles` when they are
    /// quantiles at levels `(i + 0.5) / points` of them.
    pub kind: String,
    /// Sorted points per statistic name (NaN values left out).
    pub statistics: BTreeMap<String, Vec<f32>>,
}

/// A calibration file as written by `qualm thresholds` and read by qualmd.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Calibration {
    /// sha256 of the ONNX model this calibration belongs to.
    pub model_sha256: String,
    /// Softmax temperature applied before every score.
    pub temperature: f32,
    /// Normalized-entropy level above which a pixel counts as uncertain.
    pub uncertain_level: f32,
    /// The keep rule.
    pub gate: Gate,
    /// How it was made.
    #[serde(default)]
    pub provenance: Provenance,
}

impl Calibration {
    /// Reads a calibration file and checks its values.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or holds an invalid value.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read calibration file {}", path.display()))?;
        let calibration: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid calibration file", path.display()))?;
        calibration.temperature().with_context(|| path.display().to_string())?;
        if !(0.0..=1.0).contains(&calibration.uncertain_level) {
            bail!(
                "{}: expected uncertain_level in [0, 1], found {}",
                path.display(),
                calibration.uncertain_level
            );
        }
        if !calibration.gate.threshold.is_finite() {
            bail!("{}: expected a finite gate threshold", path.display());
        }
        Ok(calibration)
    }

    /// Refuses a calibration made for another model.
    ///
    /// # Errors
    /// When `model_sha256` differs from this file's.
    pub fn check_model(&self, path: &Path, model_sha256: &str) -> anyhow::Result<()> {
        if self.model_sha256 != model_sha256 {
            bail!(
                "calibration file {} was made for model sha256 {}, but the loaded model has {}",
                path.display(),
                self.model_sha256,
                model_sha256
            );
        }
        Ok(())
    }

    /// The temperature, checked.
    ///
    /// # Errors
    /// When it is not a finite number above zero.
    pub fn temperature(&self) -> anyhow::Result<Temperature> {
        Temperature::try_new(self.temperature)
            .map_err(|found| anyhow::anyhow!("expected a temperature above 0, found {found}"))
    }

    /// Reads the keep rules of a calibration file: `[gate]`, the rule that also ranks frames
    /// for the budget, then any `[[rules]]` tables, combined by `combine` (`"any"`, the
    /// default, or `"all"`). A file with `[gate]` alone is one rule, as before rules existed.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, a threshold is not finite, or there are more
    /// rules than qualmd holds.
    pub fn load_rules(path: &Path) -> anyhow::Result<Rules> {
        #[derive(Deserialize)]
        struct RuleFile {
            gate: Gate,
            #[serde(default)]
            combine: Combine,
            #[serde(default)]
            rules: Vec<Gate>,
        }

        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read calibration file {}", path.display()))?;
        let file: RuleFile = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid calibration file", path.display()))?;
        let mut rules = vec![file.gate];
        rules.extend(file.rules);
        if let Some(bad) = rules.iter().find(|rule| !rule.threshold.is_finite()) {
            bail!("{}: expected finite rule thresholds, found {}", path.display(), bad.threshold);
        }
        Rules::try_new(file.combine, &rules).map_err(|count| {
            anyhow::anyhow!(
                "{}: expected at most {} rules ([gate] and [[rules]]), found {}",
                path.display(),
                RULE_CAPACITY,
                count.0
            )
        })
    }

    /// Writes the file as TOML, atomically (temporary file, fsync, rename).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = String::from("# qualm calibration file: read by qualmd at start-up.\n");
        text.push_str(&format!(
            "# keep a frame when {} is {} {}\n",
            self.gate.statistic,
            if self.gate.statistic.higher_is_uncertain() { "above" } else { "below" },
            self.gate.threshold
        ));
        text.push_str(&toml::to_string_pretty(self).context("cannot encode calibration")?);
        crate::spool::write_atomic(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use qualm_core::{FrameStats, Statistic};

    use super::*;

    const HEAD: &str = "model_sha256 = \"ab\"\ntemperature = 1.0\nuncertain_level = 0.5\n";

    fn rules_of(dir: &Path, text: &str) -> anyhow::Result<Rules> {
        let path = dir.join("calibration.toml");
        fs::write(&path, format!("{HEAD}{text}")).unwrap();
        Calibration::load_rules(&path)
    }

    #[test]
    fn a_file_with_only_a_gate_is_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        let rules = rules_of(dir.path(), "[gate]\nstatistic = \"mean_entropy\"\nthreshold = 0.3\n")
            .unwrap();
        let gate = Gate { statistic: Statistic::MeanEntropy, threshold: 0.3 };
        assert_eq!((rules.combine, rules.as_slice()), (Combine::Any, &[gate][..]));
    }

    #[test]
    fn extra_rules_follow_the_gate_and_combine_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let text = "combine = \"all\"\n[gate]\nstatistic = \"mean_entropy\"\nthreshold = 0.3\n\
                    [[rules]]\nstatistic = \"mean_max_softmax\"\nthreshold = 0.9\n";
        let rules = rules_of(dir.path(), text).unwrap();
        assert_eq!(rules.combine, Combine::All);
        assert_eq!(rules.as_slice()[1].statistic, Statistic::MeanMaxSoftmax);
        // Entropy 0.5 passes the gate, max-softmax 0.95 does not pass the second rule.
        let stats =
            FrameStats { mean_entropy: 0.5, mean_max_softmax: 0.95, ..FrameStats::default() };
        assert!(!rules.passes(&stats));
        assert!(Calibration::load(&dir.path().join("calibration.toml")).is_ok());
    }

    #[test]
    fn too_many_or_infinite_rules_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rule = "[[rules]]\nstatistic = \"p90_entropy\"\nthreshold = 0.1\n";
        let text =
            format!("[gate]\nstatistic = \"mean_entropy\"\nthreshold = 0.3\n{}", rule.repeat(8));
        let message = format!("{:#}", rules_of(dir.path(), &text).unwrap_err());
        assert!(message.contains("calibration.toml") && message.contains("found 9"), "{message}");

        let text = "[gate]\nstatistic = \"mean_entropy\"\nthreshold = 0.3\n\
                    [[rules]]\nstatistic = \"p90_entropy\"\nthreshold = inf\n";
        let message = format!("{:#}", rules_of(dir.path(), text).unwrap_err());
        assert!(message.contains("expected finite rule thresholds, found inf"), "{message}");
    }
}
