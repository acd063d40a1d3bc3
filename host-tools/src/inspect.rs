//! `qualm inspect`: what a model card says, checked against the model, and one timed run.

use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use qualm_core::{OwnedFrameMaps, StatsConfig};
use qualm_daemon::model::SegmentationModel;

/// Arguments of `qualm inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model card (TOML) beside the ONNX file.
    card: PathBuf,

    /// Image to run the test inference on [default: a mid-gray frame].
    #[arg(long)]
    frame: Option<PathBuf>,

    /// Timed inferences after the first (warm-up) one.
    #[arg(long, default_value_t = 5)]
    runs: u32,
}

/// Runs the command.
///
/// # Errors
/// When the card, model or frame cannot be loaded, or inference fails.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let mut model = SegmentationModel::load(&args.card)?;
    let card = model.card().clone();
    println!("model      {} ({})", card.name, card.precision);
    println!("file       {} sha256 {}", card.model_path().display(), model.sha256());
    let input = &card.input;
    println!(
        "input      {:?} {:?} {:?}, resize {:?}, (pixel/255 - {:?}) / {:?}",
        input.shape, input.layout, input.color, input.resize, input.mean, input.std
    );
    let output = &card.output;
    println!("output     {:?} {:?} {:?}", output.shape, output.layout, output.kind);
    println!("classes    {}", output.classes.join(", "));
    if let Some(licence) = &card.licence {
        println!("licence    {licence}");
    }

    let frame = match &args.frame {
        Some(path) => qualm_daemon::decode::decode_frame(path, Default::default())?,
        None => {
            let (height, width) = model.input_size();
            RgbImage::from_pixel(width as u32, height as u32, image::Rgb([128, 128, 128]))
        }
    };

    let (height, width) = model.output_size();
    let mut maps = OwnedFrameMaps::new(height * width);
    let mut times = Vec::new();
    let mut stats = None;
    for _ in 0..=args.runs {
        let started = Instant::now();
        model.prepare(&frame)?;
        let output = model.infer()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        stats = Some(model.analyze(&output, &StatsConfig::default(), maps.as_maps())?);
    }

    let first = times.remove(0);
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(first);
    println!("inference  first {first:.1} ms, median of next {} {median:.1} ms", times.len());
    if let Some(stats) = stats {
        println!(
            "frame      mean max-softmax {:.4}, mean entropy {:.4}, uncertain {:.3}",
            stats.mean_max_softmax, stats.mean_entropy, stats.uncertain_fraction
        );
    }
    Ok(())
}
