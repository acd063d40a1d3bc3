//! `qualm stats`: the uncertainty statistics of one frame's model output, read from a `.npy`
//! file, computed by the same `qualm_core::analyze_with` the daemon runs.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use half::f16;
use npyz::{DType, NpyFile, Order, TypeChar};
use qualm_core::{
    Element, FrameStats, Layout, OutputKind, OutputMap, OwnedFrameMaps, Quantization, StatsConfig,
    Temperature, analyze_with,
};

/// Arguments of `qualm stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The model output of one frame as a .npy array of float32, float16, int8 or uint8:
    /// [C, H, W] or [H, W, C] (see --layout), optionally with a leading batch axis of 1, or
    /// [H, W] for a one-channel output.
    #[arg(long, value_name = "FILE.npy")]
    pub logits: PathBuf,

    /// Axis order of a 3-D (or 4-D, batch first) array.
    #[arg(long, value_enum, default_value_t = LayoutArg::Chw)]
    pub layout: LayoutArg,

    /// What the values are [default: logits for more than one channel, sigmoid-logit for one].
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,

    /// Softmax temperature T > 0; logits are divided by it before every score.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,

    /// Half-width k of the boundary band in pixels (Chebyshev distance to another predicted
    /// class); 0 turns the band off.
    #[arg(long, default_value_t = 2)]
    pub boundary_width: u8,

    /// Normalized-entropy level above which a pixel counts as uncertain.
    #[arg(long, default_value_t = 0.5)]
    pub uncertain_level: f32,

    /// Smallest segment, in pixels, that may be reported as the worst segment.
    #[arg(long, default_value_t = 32)]
    pub min_segment_pixels: u32,

    /// Region-of-interest mask: a grayscale PNG of H x W pixels, nonzero = keep, 0 = ignore
    /// [default: keep every pixel].
    #[arg(long, value_name = "MASK.png")]
    pub roi: Option<PathBuf>,

    /// Quantization scale of int8 / uint8 logits (required for them): real = S * (q - Z).
    #[arg(long, value_name = "S")]
    pub scale: Option<f32>,

    /// Quantization zero point of int8 / uint8 logits [default: 0].
    #[arg(long, value_name = "Z", allow_hyphen_values = true)]
    pub zero_point: Option<i32>,

    /// Print the statistics as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--layout` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    /// [C, H, W]: one plane per class.
    Chw,
    /// [H, W, C]: classes interleaved per pixel.
    Hwc,
}

/// `--kind` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    /// Unnormalized class logits.
    Logits,
    /// Softmax probabilities.
    Probabilities,
    /// One channel: the logit z of the positive class (classes [0, z]).
    SigmoidLogit,
    /// One channel: sigmoid(z), the probability of the positive class.
    SigmoidProbability,
}

impl From<KindArg> for OutputKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Logits => Self::Logits,
            KindArg::Probabilities => Self::Probabilities,
            KindArg::SigmoidLogit => Self::SigmoidLogit,
            KindArg::SigmoidProbability => Self::SigmoidProbability,
        }
    }
}

/// The array of a .npy file in one of the element types the core reads in place.
pub(crate) enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl Values {
    fn is_quantized(&self) -> bool {
        matches!(self, Self::I8(_) | Self::U8(_))
    }

    /// Element `index` as a real number.
    fn real(&self, index: usize, quantization: Quantization) -> f64 {
        let step = |q: i32| f64::from(quantization.scale) * f64::from(q - quantization.zero_point);
        match self {
            Self::F32(data) => f64::from(data[index]),
            Self::F16(data) => f64::from(data[index].to_f32()),
            Self::I8(data) => step(i32::from(data[index])),
            Self::U8(data) => step(i32::from(data[index])),
        }
    }
}

/// How far a probability may stray from [0, 1], and a pixel's sum from 1, before the values
/// are taken for something else (rounding in float16 and int8 stays well inside).
const PROBABILITY_TOLERANCE: f64 = 0.01;

/// Checks that values read as probabilities are: each in [0, 1] and, for softmax outputs,
/// each pixel's channels summing to 1. Logits passed with `--kind probabilities` would
/// otherwise be read as `ln p` of values above 1 and counted as non-finite.
fn check_probabilities(
    values: &Values,
    shape: Shape,
    kind: OutputKind,
    quantization: Quantization,
) -> Result<()> {
    let plane = shape.height * shape.width;
    let at = |pixel: usize, channel: usize| match shape.layout {
        Layout::Chw => channel * plane + pixel,
        Layout::Hwc => pixel * shape.channels + channel,
    };
    for pixel in 0..plane {
        let (y, x) = (pixel / shape.width, pixel % shape.width);
        let mut sum = 0.0;
        for channel in 0..shape.channels {
            let value = values.real(at(pixel, channel), quantization);
            if !(-PROBABILITY_TOLERANCE..=1.0 + PROBABILITY_TOLERANCE).contains(&value) {
                bail!(
                    "expected probabilities in [0, 1], found {value} at channel {channel}, \
                     y {y}, x {x}: these look like logits (--kind logits)"
                );
            }
            sum += value;
        }
        if kind == OutputKind::Probabilities && (sum - 1.0).abs() > PROBABILITY_TOLERANCE {
            bail!(
                "expected probabilities whose channels sum to 1 at every pixel, found a sum of \
                 {sum} at y {y}, x {x}: these are not probabilities (--kind logits?)"
            );
        }
    }
    Ok(())
}

/// The frame's shape as the core sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) channels: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) layout: Layout,
}

/// Runs `qualm stats`.
///
/// # Errors
/// When an argument is invalid, a file cannot be read, or its content does not fit.
pub fn run(args: &StatsArgs) -> Result<()> {
    let temperature = Temperature::try_new(args.temperature).map_err(|found| {
        anyhow::anyhow!("expected --temperature to be a finite number above 0, found {found}")
    })?;
    let config = StatsConfig {
        temperature,
        uncertain_level: args.uncertain_level,
        boundary_width: args.boundary_width,
        min_segment_pixels: args.min_segment_pixels,
        ..StatsConfig::default()
    };

    let path = &args.logits;
    let (values, dims) = read_npy(path)?;
    let shape = frame_shape(&dims, args.layout)
        .with_context(|| format!("{}: unusable array shape", path.display()))?;
    let quantization = quantization(&values, args.scale, args.zero_point)
        .with_context(|| format!("{}: cannot read the values", path.display()))?;
    let kind = args.kind.map_or(
        if shape.channels == 1 { OutputKind::SigmoidLogit } else { OutputKind::Logits },
        OutputKind::from,
    );
    let roi = args.roi.as_deref().map(|roi| read_roi(roi, shape)).transpose()?;
    if matches!(kind, OutputKind::Probabilities | OutputKind::SigmoidProbability) {
        check_probabilities(&values, shape, kind, quantization).with_context(|| {
            format!("{}: cannot read the values as probabilities", path.display())
        })?;
    }

    let stats = match &values {
        Values::F32(data) => compute(data, shape, kind, quantization, &config, roi.as_deref()),
        Values::F16(data) => compute(data, shape, kind, quantization, &config, roi.as_deref()),
        Values::I8(data) => compute(data, shape, kind, quantization, &config, roi.as_deref()),
        Values::U8(data) => compute(data, shape, kind, quantization, &config, roi.as_deref()),
    }
    .with_context(|| format!("{}: cannot analyze", path.display()))?;

    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        print_table(&stats, shape, kind);
    }
    Ok(())
}

/// Reads a .npy file into one of the supported element types, with its shape.
pub(crate) fn read_npy(path: &Path) -> Result<(Values, Vec<u64>)> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let npy = NpyFile::new(BufReader::new(file)).with_context(|| {
        format!("{}: expected a .npy file, found no valid header", path.display())
    })?;
    if npy.order() == Order::Fortran {
        bail!("{}: expected a C-order array, found Fortran order", path.display());
    }

    let dims = npy.shape().to_vec();
    let dtype = npy.dtype();
    let found = match &dtype {
        DType::Plain(type_str) => {
            Some((type_str.type_char(), type_str.size_field(), type_str.to_string()))
        }
        _ => None,
    };
    if let Some((_, size, _)) = &found {
        check_data_length(path, &dims, *size)?;
    }
    let read_error = || format!("{}: cannot read the array data", path.display());
    let values = match found {
        Some((TypeChar::Float, 4, _)) => Values::F32(npy.into_vec().with_context(read_error)?),
        Some((TypeChar::Float, 2, _)) => Values::F16(npy.into_vec().with_context(read_error)?),
        Some((TypeChar::Int, 1, _)) => Values::I8(npy.into_vec().with_context(read_error)?),
        Some((TypeChar::Uint, 1, _)) => Values::U8(npy.into_vec().with_context(read_error)?),
        Some((_, _, name)) => bail!(
            "{}: expected float32, float16, int8 or uint8 values, found dtype {name}",
            path.display()
        ),
        None => bail!(
            "{}: expected float32, float16, int8 or uint8 values, found a structured dtype",
            path.display()
        ),
    };
    Ok((values, dims))
}

/// Compares the bytes after the .npy header with what the shape needs, so that a file cut
/// short says how short instead of failing somewhere in the reader.
fn check_data_length(path: &Path, dims: &[u64], element_bytes: u64) -> Result<()> {
    // Header layout: 6 magic bytes, major and minor version, then the header length as a u16
    // (version 1) or u32 (versions 2 and 3), little-endian, then the header itself.
    let mut start = [0u8; 12];
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let length = file.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
    if file.read_exact(&mut start).is_err() {
        return Ok(()); // The header parsed, so this cannot happen; the reader reports it.
    }
    let data_offset = if start[6] == 1 {
        10 + u64::from(u16::from_le_bytes([start[8], start[9]]))
    } else {
        12 + u64::from(u32::from_le_bytes([start[8], start[9], start[10], start[11]]))
    };
    let expected = dims.iter().try_fold(element_bytes, |bytes, &d| bytes.checked_mul(d));
    let found = length.saturating_sub(data_offset);
    match expected {
        Some(expected) if found >= expected => Ok(()),
        Some(expected) => bail!(
            "{}: expected {expected} bytes of array data for shape {dims:?}, found {found} \
             (file cut short?)",
            path.display()
        ),
        None => bail!("{}: expected a shape of addressable size, found {dims:?}", path.display()),
    }
}

/// Turns the array's dimensions into the frame's shape: [H, W] is one channel, [1, ...] drops
/// the batch axis, and a 3-D array is read in `layout`.
pub(crate) fn frame_shape(dims: &[u64], layout: LayoutArg) -> Result<Shape> {
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let dims = match dims.as_slice() {
        [1, rest @ ..] if rest.len() == 3 => rest.to_vec(),
        [batch, _, _, _] => bail!("expected a batch of 1 in a 4-D array, found {batch}"),
        _ => dims,
    };
    let shape = match (dims.as_slice(), layout) {
        (&[height, width], _) => Shape { channels: 1, height, width, layout: Layout::Chw },
        (&[channels, height, width], LayoutArg::Chw) => {
            Shape { channels, height, width, layout: Layout::Chw }
        }
        (&[height, width, channels], LayoutArg::Hwc) => {
            Shape { channels, height, width, layout: Layout::Hwc }
        }
        _ => bail!("expected a 2-D, 3-D or 4-D (batch 1) array, found shape {dims:?}"),
    };
    Ok(shape)
}

/// The quantization to read the values with: `--scale` / `--zero-point` for int8 and uint8
/// (scale required), none for floats (where giving them is an error).
fn quantization(
    values: &Values,
    scale: Option<f32>,
    zero_point: Option<i32>,
) -> Result<Quantization> {
    if !values.is_quantized() {
        if let Some(flag) = [(scale.is_some(), "--scale"), (zero_point.is_some(), "--zero-point")]
            .into_iter()
            .find_map(|(given, flag)| given.then_some(flag))
        {
            bail!("expected no --scale or --zero-point for float values, found {flag}");
        }
        return Ok(Quantization::IDENTITY);
    }

    let Some(scale) = scale else {
        bail!("expected --scale for int8 / uint8 values, found none");
    };
    if !(scale.is_finite() && scale > 0.0) {
        bail!("expected --scale to be a finite number above 0, found {scale}");
    }
    Ok(Quantization { scale, zero_point: zero_point.unwrap_or(0) })
}

/// Reads the ROI mask: any PNG turned to 8-bit grayscale, 1 where nonzero, `[H, W]`.
fn read_roi(path: &Path, shape: Shape) -> Result<Vec<u8>> {
    let image = image::open(path)
        .with_context(|| format!("{}: cannot read the ROI mask", path.display()))?;
    let mask = image.to_luma8();
    let (width, height) = mask.dimensions();
    if (width as usize, height as usize) != (shape.width, shape.height) {
        bail!(
            "{}: expected a ROI mask of {}x{} (width x height) to match the logits, found {width}x{height}",
            path.display(),
            shape.width,
            shape.height
        );
    }
    Ok(mask.into_raw().into_iter().map(|v| u8::from(v != 0)).collect())
}

/// Views the data as an output map and runs the core's analysis.
fn compute<T: Element>(
    data: &[T],
    shape: Shape,
    kind: OutputKind,
    quantization: Quantization,
    config: &StatsConfig,
    roi: Option<&[u8]>,
) -> Result<FrameStats> {
    let Shape { channels, height, width, layout } = shape;
    let map = OutputMap::try_new(data, channels, height, width, layout, kind)?
        .with_quantization(quantization);
    let mut maps = OwnedFrameMaps::new(map.pixels());
    Ok(analyze_with(&map, config, maps.as_maps(), roi)?)
}

/// The short human-readable summary.
fn print_table(stats: &FrameStats, shape: Shape, kind: OutputKind) {
    let scored = stats.pixels - stats.ignored_pixels - stats.nonfinite_pixels;
    println!(
        "frame {}x{}, {} classes ({kind:?}): {} pixels, {} scored, {} ignored, {} non-finite",
        shape.width,
        shape.height,
        kind.classes(shape.channels),
        stats.pixels,
        scored,
        stats.ignored_pixels,
        stats.nonfinite_pixels
    );
    println!("{:<14} {:>10} {:>10} {:>10} {:>10}", "score", "mean", "p50", "p90", "p99");
    let rows = [
        (
            "max-softmax",
            stats.mean_max_softmax,
            [stats.p50_max_softmax, stats.p90_max_softmax, stats.p99_max_softmax],
        ),
        ("entropy", stats.mean_entropy, [stats.p50_entropy, stats.p90_entropy, stats.p99_entropy]),
        ("margin", stats.mean_margin, [stats.p50_margin, stats.p90_margin, stats.p99_margin]),
        ("energy", stats.mean_energy, [stats.p50_energy, stats.p90_energy, stats.p99_energy]),
    ];
    for (name, mean, [p50, p90, p99]) in rows {
        println!("{name:<14} {mean:>10.4} {p50:>10.4} {p90:>10.4} {p99:>10.4}");
    }
    println!(
        "uncertain fraction {:.4}; boundary fraction {:.4}; interior mean entropy {:.4}",
        stats.uncertain_fraction, stats.boundary_fraction, stats.interior_mean_entropy
    );
    let worst = stats.worst_segment.map_or("none".to_string(), |s| {
        format!(
            "class {} at ({}, {}), {} pixels, entropy {:.4}",
            s.class, s.x, s.y, s.pixels, s.mean_entropy
        )
    });
    println!(
        "segments {} (largest {:.1}% of scored pixels); worst segment: {worst}",
        stats.segments,
        100.0 * stats.largest_segment_fraction
    );
}
