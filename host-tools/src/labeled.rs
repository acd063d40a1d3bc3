//! Labeled data on disk, and the class logits of its frames, computed in parallel.
//!
//! A labeled folder holds `images/` and `labels/` with the same file stems; a label is an 8-bit
//! grayscale PNG of class ids, [`IGNORE_LABEL`] (255) for pixels without a class. Logits come
//! either from running a model card on the images (one model instance per thread) or from
//! `.npy` files written by another runtime.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use qualm_core::{Layout, OutputMap};
use qualm_daemon::decode::{DecodeLimits, decode_frame, decode_image};
use qualm_daemon::model::SegmentationModel;

use crate::metrics::IGNORE_LABEL;
use crate::stats::{LayoutArg, Values, frame_shape, read_npy};

/// Image file extensions read as frames.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Where the frames and their logits come from, as given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Model card (TOML) to run on the images of --data.
    #[arg(long, value_name = "CARD", requires = "data", conflicts_with_all = ["logits", "labels"])]
    pub model: Option<PathBuf>,

    /// Labeled folder for --model: images/ (PNG or JPEG) and labels/ (8-bit grayscale PNG of
    /// class ids, 255 = ignore) with the same file stems; every image needs its label.
    #[arg(long, value_name = "DIR", requires = "model")]
    pub data: Option<PathBuf>,

    /// Folder of model outputs instead of --model: one .npy of float32 or float16 logits
    /// [C, H, W] (or [1, C, H, W]) per frame; its stems choose the frames.
    #[arg(long, value_name = "DIR", requires = "labels")]
    pub logits: Option<PathBuf>,

    /// Folder of label PNGs for --logits: one `<stem>.png` per .npy, of the logits' H x W.
    #[arg(long, value_name = "DIR", requires = "logits")]
    pub labels: Option<PathBuf>,

    /// Worker threads, each with its own model instance [default: one per core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// One frame: its stem, the file its logits come from (image or .npy), and its label file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// File name without extension, shared by the frame's image (or .npy) and label.
    pub stem: String,
    /// The image to run the model on, or the .npy of logits.
    pub input: PathBuf,
    /// The label PNG, when the frame is labeled.
    pub label: Option<PathBuf>,
}

impl Frame {
    /// Reads the frame's label, checked against the frame's logits.
    ///
    /// # Errors
    /// When the frame has no label, or it cannot be read or does not fit (see [`read_label`]).
    pub fn read_label(&self, logits: &Logits) -> Result<Vec<u8>> {
        let Some(path) = &self.label else {
            bail!("{}: expected a labeled frame, found no label file", self.input.display());
        };
        read_label(path, logits.classes, logits.height, logits.width)
    }
}

/// A validated data source: frames and how to get their logits.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The model card to run, or `None` for .npy logits.
    pub model: Option<PathBuf>,
    /// The frames, in stem order.
    pub frames: Vec<Frame>,
    /// Worker threads to use.
    pub threads: usize,
    /// Words on where the data came from, for reports.
    pub description: String,
}

impl DataArgs {
    /// Lists the frames and checks that every one has its label.
    ///
    /// # Errors
    /// When neither or both of --model/--data and --logits/--labels are given, a folder cannot
    /// be read or holds no frame, or a frame has no label file.
    pub fn to_dataset(&self) -> Result<Dataset> {
        let threads = match self.threads {
            Some(0) => bail!("expected --threads of at least 1, found 0"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        match (&self.model, &self.data, &self.logits, &self.labels) {
            (Some(model), Some(data), None, None) => {
                let frames = list_files(&data.join("images"), &IMAGE_EXTENSIONS)?;
                let frames = attach_labels(frames, &data.join("labels"))?;
                let description = format!("{} on {}", model.display(), data.display());
                Ok(Dataset { model: Some(model.clone()), frames, threads, description })
            }
            (None, None, Some(logits), Some(labels)) => {
                let frames = attach_labels(list_files(logits, &["npy"])?, labels)?;
                let description = format!("{} with labels {}", logits.display(), labels.display());
                Ok(Dataset { model: None, frames, threads, description })
            }
            _ => bail!("expected either --model and --data, or --logits and --labels"),
        }
    }
}

impl Dataset {
    /// The unlabeled frames of an out-of-distribution folder read the same way as this
    /// dataset: images (in `dir/images` when it exists, else in `dir`) for a model, `.npy`
    /// files for logits.
    ///
    /// # Errors
    /// When the folder cannot be read or holds no frame.
    pub fn unlabeled(&self, dir: &Path) -> Result<Vec<Frame>> {
        if self.model.is_none() {
            return list_files(dir, &["npy"]);
        }
        let images = dir.join("images");
        list_files(if images.is_dir() { &images } else { dir }, &IMAGE_EXTENSIONS)
    }

    /// Computes `work(logits, frame)` for every frame on [`Dataset::threads`] threads, each
    /// with its own model instance, and returns the results in frame order.
    ///
    /// # Errors
    /// The first error of any frame (loading the model, reading or running a frame, or
    /// `work`), with the frame's file named.
    pub fn map_frames<T: Send>(
        &self,
        frames: &[Frame],
        message: &'static str,
        work: impl Fn(Logits, &Frame) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let model = self.model.as_deref();
        self.map_with(
            frames,
            message,
            || LogitsSource::new(model),
            |source, frame| work(source.logits(&frame.input)?, frame),
        )
    }

    /// Computes `work(model, image, frame)` for every frame on [`Dataset::threads`] threads,
    /// with the frame's decoded RGB image and a model instance per thread to run on it (or on
    /// images made from it), and returns the results in frame order.
    ///
    /// # Errors
    /// When the dataset has no model card (its frames are logits, not images), or the first
    /// error of any frame (loading the model, decoding an image, or `work`).
    pub fn map_images<T: Send>(
        &self,
        frames: &[Frame],
        message: &'static str,
        work: impl Fn(&mut ImageModel, RgbImage, &Frame) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let Some(card) = self.model.as_deref() else {
            bail!("expected --model and --data: images are needed, found {}", self.description);
        };
        let load = || Ok(ImageModel(Box::new(SegmentationModel::load(card)?)));
        self.map_with(frames, message, load, |model, frame| {
            let image = decode_frame(&frame.input, DecodeLimits::default())?;
            work(model, image, frame)
        })
    }

    /// The thread pool behind [`Dataset::map_frames`] and [`Dataset::map_images`]: each thread
    /// makes its state once with `make`, then takes frames in turn until none is left or one
    /// failed.
    fn map_with<S, T: Send>(
        &self,
        frames: &[Frame],
        message: &'static str,
        make: impl Fn() -> Result<S> + Sync,
        work: impl Fn(&mut S, &Frame) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let progress = progress_bar(frames.len() as u64, message);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error = Mutex::new(None);
        let threads = self.threads.clamp(1, frames.len().max(1));

        let parts: Vec<Vec<(usize, T)>> = std::thread::scope(|scope| {
            let worker = || {
                let mut done = Vec::new();
                let outcome = (|| -> Result<()> {
                    let mut state = make()?;
                    while !failed.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(frame) = frames.get(index) else { break };
                        done.push((index, work(&mut state, frame)?));
                        progress.inc(1);
                    }
                    Ok(())
                })();
                if let Err(error) = outcome {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().expect("error slot poisoned").get_or_insert(error);
                }
                done
            };
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
            handles.into_iter().map(|h| h.join().expect("frame worker panicked")).collect()
        });
        progress.finish_and_clear();

        if let Some(error) = first_error.into_inner().expect("error slot poisoned") {
            return Err(error);
        }
        let mut results: Vec<(usize, T)> = parts.into_iter().flatten().collect();
        results.sort_by_key(|(index, _)| *index);
        Ok(results.into_iter().map(|(_, result)| result).collect())
    }
}

/// A model instance that turns RGB images into class logits, for work on images made in
/// memory (see [`Dataset::map_images`]).
pub struct ImageModel(Box<SegmentationModel>);

impl ImageModel {
    /// Runs the model on `image` (made from the file `path`, named in errors) and returns its
    /// CHW class logits.
    ///
    /// # Errors
    /// When inference fails, the output does not fit the card, or a logit is NaN or `+inf`.
    pub fn logits(&mut self, image: &RgbImage, path: &Path) -> Result<Logits> {
        let logits = model_logits(&mut self.0, image, path)?;
        check_finite(&logits, path)?;
        Ok(logits)
    }
}

/// A progress bar on stderr when it is a terminal, a hidden one otherwise.
pub fn progress_bar(len: u64, message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{msg:>10} {wide_bar} {pos}/{len} frames {elapsed}")
        .expect("the progress template is valid");
    ProgressBar::new(len).with_style(style).with_message(message)
}

/// The class logits of one frame, `[classes, height, width]` row-major (CHW), as `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    /// The values; class `c` of pixel `p` (row-major) at `c * height * width + p`.
    pub values: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl Logits {
    /// Pixels per class plane, `height * width`.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
}

/// Turns a frame's file into logits: a model of its own, or a .npy reader.
enum LogitsSource {
    Model(Box<SegmentationModel>),
    Npy,
}

impl LogitsSource {
    fn new(model: Option<&Path>) -> Result<Self> {
        Ok(match model {
            Some(card) => Self::Model(Box::new(SegmentationModel::load(card)?)),
            None => Self::Npy,
        })
    }

    fn logits(&mut self, input: &Path) -> Result<Logits> {
        let logits = match self {
            Self::Model(model) => run_model(model, input)?,
            Self::Npy => read_logits(input)?,
        };
        check_finite(&logits, input)?;
        Ok(logits)
    }
}

/// Runs the model on an image file (see [`model_logits`]).
fn run_model(model: &mut SegmentationModel, path: &Path) -> Result<Logits> {
    let image = decode_frame(path, DecodeLimits::default())?;
    model_logits(model, &image, path)
}

/// Runs the model on an image and converts its output, of any layout, element type and kind
/// the card allows, to CHW class logits.
fn model_logits(model: &mut SegmentationModel, image: &RgbImage, path: &Path) -> Result<Logits> {
    model
        .prepare(image)
        .with_context(|| format!("{}: cannot prepare the frame", path.display()))?;
    let output = model.infer().with_context(|| format!("{}: inference failed", path.display()))?;

    let spec = &model.card().output;
    if output.shape() != spec.shape {
        bail!(
            "{}: expected a model output of shape {:?}, found {:?}",
            path.display(),
            spec.shape,
            output.shape()
        );
    }
    // Quantized outputs are dequantized by the cast: real = scale * (q - zero_point).
    let floats = output
        .cast_to::<f32>()
        .with_context(|| format!("{}: cannot read the model output as f32", path.display()))?;
    let view = floats.try_as_plain_ram()?;
    let data = view.as_slice::<f32>()?;
    let (channels, height, width) = spec.layout.split(spec.shape);
    let map = OutputMap::try_new(
        data,
        channels,
        height,
        width,
        spec.layout.frame_layout(),
        spec.kind.into(),
    )?;

    let (classes, pixels) = (map.classes(), map.pixels());
    let mut values = vec![0.0f32; classes * pixels];
    let mut pixel = vec![0.0f32; classes];
    for index in 0..pixels {
        map.pixel_logits(index, &mut pixel);
        for (c, &z) in pixel.iter().enumerate() {
            values[c * pixels + index] = z;
        }
    }
    Ok(Logits { values, classes, height, width })
}

/// Refuses logits with NaN or `+inf`: a metric over labeled pixels has no honest value for
/// them, and leaving them out silently would shrink the data behind the user's back. `-inf` is
/// a valid logit (a class ruled out).
///
/// # Errors
/// Names the file, the first such value, its class and pixel.
pub fn check_finite(logits: &Logits, path: &Path) -> Result<()> {
    let bad = logits.values.iter().position(|z| z.is_nan() || *z == f32::INFINITY);
    if let Some(index) = bad {
        let (class, pixel) = (index / logits.pixels(), index % logits.pixels());
        bail!(
            "{}: expected finite logits (or -inf), found {} for class {class} at x {}, y {}",
            path.display(),
            logits.values[index],
            pixel % logits.width,
            pixel / logits.width
        );
    }
    Ok(())
}

/// Reads a .npy of float32 or float16 class logits `[C, H, W]` or `[1, C, H, W]`.
///
/// # Errors
/// When the file cannot be read, is not float, or has another shape.
pub fn read_logits(path: &Path) -> Result<Logits> {
    let (values, dims) = read_npy(path)?;
    let shape = frame_shape(&dims, LayoutArg::Chw)
        .with_context(|| format!("{}: unusable array shape", path.display()))?;
    if shape.channels < 2 || shape.layout != Layout::Chw || dims.len() < 3 {
        bail!(
            "{}: expected class logits [C, H, W] with C >= 2, found shape {dims:?}",
            path.display()
        );
    }
    let values = match values {
        Values::F32(values) => values,
        Values::F16(values) => values.into_iter().map(f32::from).collect(),
        Values::I8(_) | Values::U8(_) => bail!(
            "{}: expected float32 or float16 logits, found int8 / uint8 (use qualm stats for \
             quantized outputs)",
            path.display()
        ),
    };
    Ok(Logits { values, classes: shape.channels, height: shape.height, width: shape.width })
}

/// Reads a label PNG: 8-bit grayscale, `width x height`, values below `classes` or 255.
///
/// # Errors
/// When the file cannot be decoded, is not 8-bit grayscale, has another size, or holds a value
/// that is neither a class id nor 255.
pub fn read_label(path: &Path, classes: usize, height: usize, width: usize) -> Result<Vec<u8>> {
    let image = decode_image(path, DecodeLimits::default())
        .with_context(|| format!("{}: cannot decode the label PNG", path.display()))?;
    let DynamicImage::ImageLuma8(label) = image else {
        bail!(
            "{}: expected an 8-bit grayscale label PNG of class ids, found {:?}",
            path.display(),
            image.color()
        );
    };
    let (found_width, found_height) = label.dimensions();
    if (found_width as usize, found_height as usize) != (width, height) {
        bail!(
            "{}: expected a label of {width}x{height} (width x height) to match the logits, \
             found {found_width}x{found_height}",
            path.display()
        );
    }

    let values = label.into_raw();
    if let Some(index) = values.iter().position(|&v| v != IGNORE_LABEL && usize::from(v) >= classes)
    {
        bail!(
            "{}: expected class ids 0 to {} or {IGNORE_LABEL} (ignore), found {} at x {}, y {}",
            path.display(),
            classes - 1,
            values[index],
            index % width,
            index / width
        );
    }
    Ok(values)
}

/// The files of `dir` with one of `extensions` (lowercase), as frames without labels, sorted
/// by stem.
fn list_files(dir: &Path, extensions: &[&str]) -> Result<Vec<Frame>> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("{}: cannot read the folder", dir.display()))?;
    let mut frames = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let wanted = extension.is_some_and(|e| extensions.contains(&e.as_str()));
        let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_string);
        if let (true, Some(stem)) = (wanted && path.is_file(), stem) {
            frames.push(Frame { stem, input: path, label: None });
        }
    }
    if frames.is_empty() {
        bail!(
            "{}: expected at least one .{} file, found none",
            dir.display(),
            extensions.join(" / .")
        );
    }
    frames.sort_by(|a, b| a.stem.cmp(&b.stem));
    if let Some(pair) = frames.windows(2).find(|w| w[0].stem == w[1].stem) {
        bail!(
            "{}: expected one file per stem, found {} and {}",
            dir.display(),
            pair[0].input.display(),
            pair[1].input.display()
        );
    }
    Ok(frames)
}

/// Gives every frame its `labels/<stem>.png`, which must exist.
fn attach_labels(frames: Vec<Frame>, labels: &Path) -> Result<Vec<Frame>> {
    if !labels.is_dir() {
        bail!("{}: expected a folder of label PNGs, found none", labels.display());
    }
    frames
        .into_iter()
        .map(|frame| {
            let label = labels.join(format!("{}.png", frame.stem));
            if !label.is_file() {
                bail!(
                    "{}: expected the label of frame {}, found no such file",
                    label.display(),
                    frame.input.display()
                );
            }
            Ok(Frame { label: Some(label), ..frame })
        })
        .collect()
}
