//! The segmentation model under tract: fixed input shape, one reusable state.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use qualm_core::{FrameMaps, FrameStats, OutputMap, Quantization, StatsConfig, analyze_with};
use tract_onnx::prelude::*;

use crate::card::{ColorOrder, InputSpec, ModelCard, TensorLayout, sha256_file};

type Plan = Arc<TypedRunnableModel>;

/// Turns decoded frames into model input as the card says: stretched to the input size with
/// a triangle (bilinear) filter whose support widens with the scale factor, then
/// `(pixel / 255 - mean) / std` in the card's layout and channel order.
///
/// The resize runs on `fast_image_resize` (SIMD chosen at run time); the resized image is kept
/// and reused, so a frame of an unchanged size needs no new pixel buffer.
pub struct InputPreparer {
    spec: InputSpec,
    resizer: Resizer,
    /// The frame at input size, RGB, reused per frame.
    resized: Image<'static>,
}

impl std::fmt::Debug for InputPreparer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputPreparer").field("shape", &self.spec.shape).finish_non_exhaustive()
    }
}

impl InputPreparer {
    /// A preparer for inputs of `spec`.
    pub fn new(spec: &InputSpec) -> Self {
        let (_, height, width) = spec.layout.split(spec.shape);
        Self {
            spec: spec.clone(),
            resizer: Resizer::new(),
            resized: Image::new(width as u32, height as u32, PixelType::U8x3),
        }
    }

    /// The input shape, batch first, in the card's layout.
    pub fn shape(&self) -> [usize; 4] {
        self.spec.shape
    }

    /// Writes `frame`, resized and normalized, into `input` (the card's input shape).
    ///
    /// # Errors
    /// When the frame has no pixels or `input` does not hold the card's input shape.
    pub fn prepare(&mut self, frame: &RgbImage, input: &mut [f32]) -> anyhow::Result<()> {
        let (frame_width, frame_height) = frame.dimensions();
        if frame_width == 0 || frame_height == 0 {
            bail!("expected a frame with pixels, found {frame_width}x{frame_height}");
        }
        let expected: usize = self.spec.shape.iter().product();
        if input.len() != expected {
            bail!("expected an input buffer of {expected} values, found {}", input.len());
        }

        stretch_rgb_into(&mut self.resizer, frame, &mut self.resized)
            .context("cannot resize the frame to the model input")?;

        let spec = &self.spec;
        let order = match spec.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        let normalize = |channel: usize, rgb: &[u8]| {
            (f32::from(rgb[order[channel]]) / 255.0 - spec.mean[channel]) / spec.std[channel]
        };
        let plane = input.len() / 3;
        let pixels = self.resized.buffer().chunks_exact(3);
        match spec.layout {
            TensorLayout::Nchw => {
                let (red, rest) = input.split_at_mut(plane);
                let (green, blue) = rest.split_at_mut(plane);
                let mut planes = [red, green, blue];
                for (index, rgb) in pixels.enumerate() {
                    for (channel, plane) in planes.iter_mut().enumerate() {
                        plane[index] = normalize(channel, rgb);
                    }
                }
            }
            TensorLayout::Nhwc => {
                for (values, rgb) in input.chunks_exact_mut(3).zip(pixels) {
                    for (channel, value) in values.iter_mut().enumerate() {
                        *value = normalize(channel, rgb);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Stretches `image` to the size of `out` with a triangle (bilinear) filter whose support
/// widens with the scale factor: the one resize of model inputs and of the records' heat maps.
///
/// # Errors
/// When `image`'s buffer does not match its size or `out` is not RGB.
pub(crate) fn stretch_rgb_into(
    resizer: &mut Resizer,
    image: &RgbImage,
    out: &mut Image<'_>,
) -> anyhow::Result<()> {
    let source = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)
        .context("image buffer does not match its size")?;
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer.resize(&source, out, &options)?;
    Ok(())
}

/// tract's run state for one model: what the inference thread owns.
pub struct Inference {
    state: TypedSimpleState,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference").finish_non_exhaustive()
    }
}

impl Inference {
    /// Runs the model on `input` and returns its first output. tract drops its own reference
    /// to the input when the run ends, so the caller can write the next frame into it.
    ///
    /// # Errors
    /// When tract fails to run or returns no output.
    pub fn run(&mut self, input: &Arc<Tensor>) -> anyhow::Result<TValue> {
        let input = TValue::from_const(Arc::clone(input));
        let outputs = self.state.run(tvec!(input));
        clear_upper_vector_state();

        let mut outputs = outputs.context("inference failed")?;
        if outputs.is_empty() {
            bail!("the model returned no output");
        }
        Ok(outputs.swap_remove(0))
    }
}

/// Clears the upper halves of the AVX registers after tract's kernels, which can leave them
/// dirty. Until they are cleared, every SSE instruction on the thread (the statistics and the
/// resize are SSE code: no target CPU is set) waits on them: measured here, the statistics of
/// the selfie model's output took 3.4 ms right after an inference against 1.5 ms alone.
#[cfg(target_arch = "x86_64")]
fn clear_upper_vector_state() {
    #[target_feature(enable = "avx")]
    fn zero_upper() {
        std::arch::x86_64::_mm256_zeroupper();
    }

    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        unsafe { zero_upper() }
    }
}

/// Only x86 has a penalty for mixing wide and narrow vector code.
#[cfg(not(target_arch = "x86_64"))]
fn clear_upper_vector_state() {}

/// A zeroed input tensor of `shape`, to be filled by [`write_input`].
///
/// # Errors
/// When tract cannot allocate it.
pub fn new_input(shape: [usize; 4]) -> anyhow::Result<Arc<Tensor>> {
    Ok(Arc::new(Tensor::zero::<f32>(&shape)?))
}

/// Prepares `frame` into `input` in place. When something still holds the tensor (it never
/// should: tract lets go after each run) a new one is made instead, so a frame is never
/// written into a tensor in use.
///
/// # Errors
/// When the frame cannot be prepared (see [`InputPreparer::prepare`]).
pub fn write_input(
    preparer: &mut InputPreparer,
    frame: &RgbImage,
    input: &mut Arc<Tensor>,
) -> anyhow::Result<()> {
    if Arc::get_mut(input).is_none() {
        tracing::debug!("input tensor still shared: making a new one");
        *input = new_input(preparer.shape())?;
    }
    let tensor = Arc::get_mut(input).context("a new input tensor is shared")?;
    let mut view = tensor.try_as_plain_ram_mut()?;
    preparer.prepare(frame, view.as_slice_mut::<f32>()?)
}

/// A loaded model with its card, ready to run frame after frame.
pub struct SegmentationModel {
    card: ModelCard,
    sha256: String,
    preparer: InputPreparer,
    /// tract's state; `None` while it runs on the inference thread of a staged frame loop.
    inference: Option<Inference>,
    /// Input values in the card's layout, `[1, 3, H, W]` or `[1, H, W, 3]`, reused per frame.
    input: Arc<Tensor>,
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
        let preparer = InputPreparer::new(&card.input);
        let input = new_input(card.input.shape)?;
        tracing::info!(model = %model_path.display(), sha256 = %sha256, "model loaded");
        Ok(Self { card, sha256, preparer, inference: Some(Inference { state }), input })
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
    /// input buffer in the card's layout and channel order (see [`InputPreparer`]).
    ///
    /// # Errors
    /// When the frame has no pixels.
    pub fn prepare(&mut self, frame: &RgbImage) -> anyhow::Result<()> {
        write_input(&mut self.preparer, frame, &mut self.input)
    }

    /// Runs the model on the prepared input and returns its first output.
    ///
    /// # Errors
    /// When tract fails to run, or its state is lent out ([`SegmentationModel::take_inference`]).
    pub fn infer(&mut self) -> anyhow::Result<TValue> {
        let inference = self.inference.as_mut().context("the model runs on another thread")?;
        inference.run(&self.input)
    }

    /// A preparer of this model's inputs, for a thread of its own.
    pub fn preparer(&self) -> InputPreparer {
        InputPreparer::new(&self.card.input)
    }

    /// Lends tract's state out, to run on an inference thread; [`SegmentationModel::infer`]
    /// refuses until it is given back with [`SegmentationModel::restore_inference`].
    pub fn take_inference(&mut self) -> Option<Inference> {
        self.inference.take()
    }

    /// Gives back tract's state lent out with [`SegmentationModel::take_inference`].
    pub fn restore_inference(&mut self, inference: Inference) {
        self.inference = Some(inference);
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
