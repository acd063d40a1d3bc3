//! The segmentation model under tract: fixed input shape, one reusable state.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use image::RgbImage;
use image::imageops::{self, FilterType};
use qualm_core::{FrameMaps, FrameStats, OutputMap, Quantization, StatsConfig, analyze_with};
use tract_onnx::prelude::*;

use crate::card::{ColorOrder, ModelCard, TensorLayout, sha256_file};

type Plan = Arc<TypedRunnableModel>;

/// A loaded model with its card, ready to run frame after frame.
pub struct SegmentationModel {
    card: ModelCard,
    sha256: String,
    state: TypedSimpleState,
    /// Input values in the card's layout, `[1, 3, H, W]` or `[1, H, W, 3]`, reused per frame.
    input: Vec<f32>,
}

impl std::fmt::Debug for SegmentationModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentationModel").field("card", &self.card.name).finish_non_exhaustive()
    }
}

impl SegmentationModel {
    /// Loads the card at `card_path` and its ONNX file, checks the file's sha256 against the
    /// card, and prepares tract with the card's fixed input shape.
    ///
    /// # Errors
    /// When the card or model cannot be read, the hash differs, or tract refuses the model.
    pub fn load(card_path: &Path) -> anyhow::Result<Self> {
        let card = ModelCard::load(card_path)?;
        let model_path = card.model_path();
        let sha256 = sha256_file(&model_path)?;
        if sha256 != card.sha256 {
            bail!(
                "model file {} has sha256 {sha256}, but its card {} expects {}",
                model_path.display(),
                card_path.display(),
                card.sha256
            );
        }

        let plan = Self::plan(&model_path, &card)
            .with_context(|| format!("cannot prepare model {}", model_path.display()))?;
        let state = plan.spawn().context("cannot create the model's run state")?;
        let input = vec![0.0; card.input.shape.iter().product()];
        tracing::info!(model = %model_path.display(), sha256 = %sha256, "model loaded");
        Ok(Self { card, sha256, state, input })
    }

    fn plan(path: &Path, card: &ModelCard) -> TractResult<Plan> {
        let shape = card.input.shape;
        tract_onnx::onnx()
            .model_for_path(path)?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()?
            .into_runnable()
    }

    /// The model's card.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// sha256 of the ONNX file, as checked at load.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// `(height, width)` of the model's input.
    pub fn input_size(&self) -> (usize, usize) {
        let (_, height, width) = self.card.input.layout.split(self.card.input.shape);
        (height, width)
    }

    /// `(height, width)` of the output map.
    pub fn output_size(&self) -> (usize, usize) {
        let (_, height, width) = self.card.output.layout.split(self.card.output.shape);
        (height, width)
    }

    /// Resizes `frame` to the input size and writes `(pixel / 255 - mean) / std` into the
    /// input buffer in the card's layout and channel order.
    pub fn prepare(&mut self, frame: &RgbImage) {
        let (height, width) = self.input_size();
        let resized = imageops::resize(frame, width as u32, height as u32, FilterType::Triangle);
        let spec = &self.card.input;
        let order = match spec.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };

        let plane = height * width;
        for (pixel, rgb) in resized.pixels().enumerate() {
            for (channel, &source) in order.iter().enumerate() {
                let value =
                    (f32::from(rgb[source]) / 255.0 - spec.mean[channel]) / spec.std[channel];
                let index = match spec.layout {
                    TensorLayout::Nchw => channel * plane + pixel,
                    TensorLayout::Nhwc => pixel * 3 + channel,
                };
                self.input[index] = value;
            }
        }
    }

    /// Runs the model on the prepared input and returns its first output.
    ///
    /// # Errors
    /// When tract fails to run.
    pub fn infer(&mut self) -> anyhow::Result<TValue> {
        let tensor = Tensor::from_shape(&self.card.input.shape, &self.input)?;
        let mut outputs = self.state.run(tvec!(tensor.into())).context("inference failed")?;
        if outputs.is_empty() {
            bail!("the model returned no output");
        }
        Ok(outputs.swap_remove(0))
    }

    /// Reduces a model output to frame statistics with `qualm-core`, reading it in place.
    ///
    /// # Errors
    /// When the output's shape or element type does not match the card.
    pub fn analyze(
        &self,
        output: &Tensor,
        config: &StatsConfig,
        maps: FrameMaps<'_>,
    ) -> anyhow::Result<FrameStats> {
        self.analyze_in_region(output, config, maps, None)
    }

    /// [`SegmentationModel::analyze`] with a region-of-interest mask `[height, width]` of the
    /// output's size: pixels where it is 0 take no part in any statistic.
    ///
    /// # Errors
    /// When the output's shape or element type does not match the card, or the mask's size
    /// does not match the output.
    pub fn analyze_in_region(
        &self,
        output: &Tensor,
        config: &StatsConfig,
        maps: FrameMaps<'_>,
        roi: Option<&[u8]>,
    ) -> anyhow::Result<FrameStats> {
        let spec = &self.card.output;
        if output.shape() != spec.shape {
            bail!("expected output shape {:?}, found {:?}", spec.shape, output.shape());
        }

        let (channels, height, width) = spec.layout.split(spec.shape);
        let layout = spec.layout.frame_layout();
        let kind = spec.kind.into();
        let view = output.try_as_plain_ram()?;
        let stats = match output.datum_type() {
            DatumType::F32 => {
                let data = view.as_slice::<f32>()?;
                let map = OutputMap::try_new(data, channels, height, width, layout, kind)?;
                analyze_with(&map, config, maps, roi)?
            }
            dt if dt.unquantized() == DatumType::I8 => {
                let (zero_point, scale) = dt.zp_scale();
                let data = view.as_slice::<i8>()?;
                let map = OutputMap::try_new(data, channels, height, width, layout, kind)?
                    .with_quantization(Quantization { scale, zero_point });
                analyze_with(&map, config, maps, roi)?
            }
            dt if dt.unquantized() == DatumType::U8 => {
                let (zero_point, scale) = dt.zp_scale();
                let data = view.as_slice::<u8>()?;
                let map = OutputMap::try_new(data, channels, height, width, layout, kind)?
                    .with_quantization(Quantization { scale, zero_point });
                analyze_with(&map, config, maps, roi)?
            }
            other => bail!("expected an f32, i8 or u8 model output, found {other:?}"),
        };
        Ok(stats)
    }
}
