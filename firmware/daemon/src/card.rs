//! Model cards: the TOML file beside each ONNX model that says how to feed and read it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use qualm_core::{Layout, OutputKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Axis order of a 4-D tensor with batch 1.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TensorLayout {
    /// `[batch, channels, height, width]`.
    Nchw,
    /// `[batch, height, width, channels]`.
    Nhwc,
}

impl TensorLayout {
    /// The matching per-frame layout once the batch axis is dropped.
    pub fn frame_layout(self) -> Layout {
        match self {
            Self::Nchw => Layout::Chw,
            Self::Nhwc => Layout::Hwc,
        }
    }

    /// `(channels, height, width)` of a shape in this layout.
    pub fn split(self, shape: [usize; 4]) -> (usize, usize, usize) {
        match self {
            Self::Nchw => (shape[1], shape[2], shape[3]),
            Self::Nhwc => (shape[3], shape[1], shape[2]),
        }
    }
}

/// Channel order of the image fed to the model.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// How a frame is brought to the model's input size.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Stretched to the input size; the aspect ratio is not kept.
    Stretch,
}

/// What the model's output holds, as written in a card.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CardOutputKind {
    /// Class logits.
    Logits,
    /// Softmax probabilities.
    Probabilities,
    /// One pre-sigmoid logit channel.
    SigmoidLogit,
    /// One sigmoid probability channel.
    SigmoidProbability,
}

impl From<CardOutputKind> for OutputKind {
    fn from(kind: CardOutputKind) -> Self {
        match kind {
            CardOutputKind::Logits => Self::Logits,
            CardOutputKind::Probabilities => Self::Probabilities,
            CardOutputKind::SigmoidLogit => Self::SigmoidLogit,
            CardOutputKind::SigmoidProbability => Self::SigmoidProbability,
        }
    }
}

/// The `[input]` table of a card.
#[derive(Clone, Debug, Deserialize)]
pub struct InputSpec {
    /// Name of the ONNX input, for the record.
    #[serde(default)]
    pub name: Option<String>,
    /// Fixed input shape, batch first.
    pub shape: [usize; 4],
    /// Axis order of `shape`.
    pub layout: TensorLayout,
    /// Channel order.
    pub color: ColorOrder,
    /// How frames are resized.
    pub resize: ResizeMode,
    /// Per-channel mean subtracted from `pixel / 255`.
    pub mean: [f32; 3],
    /// Per-channel divisor applied after the mean.
    pub std: [f32; 3],
}

/// The `[output]` table of a card.
#[derive(Clone, Debug, Deserialize)]
pub struct OutputSpec {
    /// Name of the ONNX output, for the record.
    #[serde(default)]
    pub name: Option<String>,
    /// Output shape, batch first.
    pub shape: [usize; 4],
    /// Axis order of `shape`.
    pub layout: TensorLayout,
    /// What the numbers mean.
    pub kind: CardOutputKind,
    /// Class names, index = class id.
    pub classes: Vec<String>,
}

/// A parsed model card.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelCard {
    /// Short model name.
    pub name: String,
    /// ONNX file, relative to the card.
    pub file: PathBuf,
    /// Expected sha256 of the ONNX file, lowercase hex.
    pub sha256: String,
    /// `fp32` or `int8`.
    pub precision: String,
    /// Licence of the weights.
    #[serde(default)]
    pub licence: Option<String>,
    /// Where the weights come from.
    #[serde(default)]
    pub source: Option<String>,
    /// Input description.
    pub input: InputSpec,
    /// Output description.
    pub output: OutputSpec,
    /// Directory of the card file, to resolve `file` (set on load).
    #[serde(skip)]
    pub directory: PathBuf,
}

impl ModelCard {
    /// Reads and checks a card.
    ///
    /// # Errors
    /// When the file cannot be read, is not a valid card, or its shapes contradict each other.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read model card {}", path.display()))?;
        let mut card: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid model card", path.display()))?;
        card.directory = path.parent().map(Path::to_path_buf).unwrap_or_default();

        let (channels, _, _) = card.input.layout.split(card.input.shape);
        if channels != 3 || card.input.shape[0] != 1 {
            bail!(
                "{}: expected an input of batch 1 with 3 channels, found shape {:?}",
                path.display(),
                card.input.shape
            );
        }
        let (channels, _, _) = card.output.layout.split(card.output.shape);
        let classes = OutputKind::from(card.output.kind).classes(channels);
        if classes != card.output.classes.len() || card.output.shape[0] != 1 {
            bail!(
                "{}: expected {} class names for output shape {:?}, found {}",
                path.display(),
                classes,
                card.output.shape,
                card.output.classes.len()
            );
        }
        Ok(card)
    }

    /// Path of the ONNX file.
    pub fn model_path(&self) -> PathBuf {
        self.directory.join(&self.file)
    }
}

/// Lowercase hex sha256 of a file's content.
///
/// # Errors
/// When the file cannot be read.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let read =
            file.read(&mut buffer).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}
