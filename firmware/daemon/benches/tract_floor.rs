//! The floor: a bare loop of tract inference, input prepared once, and the daemon's per-frame
//! stages on the same model, with heap allocations counted per frame.
//!
//! For each model card given:
//! - `floor`: tract's optimized plan run again and again on one prepared frame (one thread, or
//!   1, 2, 4 threads of tract's `multithread-mm` executor when built with the
//!   `multithread-mm` feature and asked for with `--threads`);
//! - `stages`: the daemon's own code on rotating real frames: decode (JPEG), `prepare`
//!   (resize, normalize), `infer` (tract and the input copy), `analyze` + gate;
//! - `allocations`: heap allocations per frame in each of those steps (all threads counted).
//!
//! Run: `cargo bench -p qualm-daemon --bench tract_floor -- [--rounds N] [--json FILE] CARD...`
//! (`bench/run.sh` drives it). Medians and percentiles come from `support/summary.rs`.

#[path = "support/summary.rs"]
mod summary;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use qualm_core::{Gate, OwnedFrameMaps, StatsConfig};
use qualm_daemon::calibration::Calibration;
use qualm_daemon::card::{ModelCard, TensorLayout};
use qualm_daemon::model::SegmentationModel;
use serde_json::{Value, json};
use summary::{Spread, markdown_table};
use tract_onnx::prelude::*;

/// Counts every allocation and reallocation of the process (tract's worker threads included).
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: each call goes unchanged to the system allocator; the counter is a plain atomic, so
// counting neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `step`, returning its result, its wall time in ms and the allocations it made.
fn measured<T>(step: impl FnOnce() -> T) -> (T, f64, u64) {
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    let result = step();
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    (result, elapsed, ALLOCATIONS.load(Ordering::Relaxed) - allocations)
}

/// The floor of tract inference and the daemon's per-frame stages, per model card.
#[derive(Debug, Parser)]
struct Args {
    /// Timed rounds per measurement, after 3 warm-up rounds.
    #[arg(long, default_value_t = 60)]
    rounds: usize,

    /// tract thread counts for the floor (more than 1 needs the `multithread-mm` feature).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,

    /// Folder of frames (.jpg) for the stages; the floor uses the first one.
    #[arg(long, default_value = "models/frames/vtest")]
    frames: PathBuf,

    /// Calibration whose gate is applied in the stages (its statistic and threshold).
    #[arg(long, default_value = "models/selfie/calibration.toml")]
    calibration: PathBuf,

    /// Also write the results as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Model cards to measure.
    #[arg(required = true)]
    cards: Vec<PathBuf>,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Installs tract's matrix-product executor with `threads` threads.
#[cfg(feature = "multithread-mm")]
fn use_threads(threads: usize) -> anyhow::Result<()> {
    use tract_linalg::multithread::{Executor, set_default_executor};
    let executor =
        if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    set_default_executor(executor);
    Ok(())
}

/// Without the `multithread-mm` feature tract has one thread only.
#[cfg(not(feature = "multithread-mm"))]
fn use_threads(threads: usize) -> anyhow::Result<()> {
    if threads != 1 {
        bail!("expected --threads 1 without the multithread-mm feature, found {threads}");
    }
    Ok(())
}

/// The frame stretched to the card's NCHW input, `(pixel / 255 - mean) / std`, as one tensor.
fn prepared_input(card: &ModelCard, frame: &image::RgbImage) -> anyhow::Result<TValue> {
    if card.input.layout != TensorLayout::Nchw {
        bail!("the floor bench feeds NCHW inputs only, found {:?}", card.input.layout);
    }
    let [_, _, height, width] = card.input.shape;
    let resized = image::imageops::resize(
        frame,
        width as u32,
        height as u32,
        image::imageops::FilterType::Triangle,
    );
    let (mean, std) = (card.input.mean, card.input.std);
    let array = tract_ndarray::Array4::from_shape_fn((1, 3, height, width), |(_, c, y, x)| {
        (f32::from(resized.get_pixel(x as u32, y as u32)[c]) / 255.0 - mean[c]) / std[c]
    });
    Ok(Tensor::from(array).into())
}

/// Median time of a bare `state.run` loop on one prepared input, for each thread count.
fn floor(card_path: &Path, frame: &image::RgbImage, args: &Args) -> anyhow::Result<Vec<Value>> {
    let card = ModelCard::load(card_path)?;
    let plan = tract_onnx::onnx()
        .model_for_path(card.model_path())?
        .with_input_fact(0, f32::fact(card.input.shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let mut state = plan.spawn()?;
    let input = prepared_input(&card, frame)?;

    let mut rows = Vec::new();
    for &threads in &args.threads {
        use_threads(threads)?;
        let mut times = Vec::with_capacity(args.rounds);
        let mut allocations = 0;
        for round in 0..args.rounds + 3 {
            let (output, ms, allocated) = measured(|| state.run(tvec![input.clone()]));
            drop(output?);
            if round >= 3 {
                times.push(ms);
                allocations += allocated;
            }
        }
        let spread = Spread::of(&mut times).context("no floor timings")?;
        rows.push(json!({
            "kind": "floor", "card": card_path, "model": card.name, "threads": threads,
            "median_ms": spread.median, "p10_ms": spread.p10, "p90_ms": spread.p90,
            "rounds": args.rounds,
            "allocations_per_run": allocations as f64 / args.rounds as f64,
        }));
    }
    use_threads(1)?;
    Ok(rows)
}

/// The daemon's per-frame steps on rotating real frames: times and allocations of each.
fn stages(card_path: &Path, frames: &[PathBuf], gate: Gate, args: &Args) -> anyhow::Result<Value> {
    let mut model = SegmentationModel::load(card_path)?;
    let config = StatsConfig::default();
    let (height, width) = model.output_size();
    let mut maps = OwnedFrameMaps::new(height * width);

    let names = ["decode", "prepare", "infer", "analyze_gate"];
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut allocations = [0u64; 4];
    for round in 0..args.rounds + 3 {
        let path = &frames[round % frames.len()];
        let (frame, decode_ms, decode_allocations) = measured(|| image::open(path));
        let frame = frame.with_context(|| format!("cannot decode {}", path.display()))?.to_rgb8();
        let (prepared, prepare_ms, prepare_allocations) = measured(|| model.prepare(&frame));
        prepared?;
        let (output, infer_ms, infer_allocations) = measured(|| model.infer());
        let output = output?;
        let (decision, gate_ms, gate_allocations) = measured(|| {
            model.analyze(&output, &config, maps.as_maps()).map(|stats| gate.decide(&stats))
        });
        std::hint::black_box(decision?);

        if round >= 3 {
            let step_ms = [decode_ms, prepare_ms, infer_ms, gate_ms];
            let step_allocations =
                [decode_allocations, prepare_allocations, infer_allocations, gate_allocations];
            for step in 0..4 {
                times[step].push(step_ms[step]);
                allocations[step] += step_allocations[step];
            }
        }
    }

    let mut result = json!({ "kind": "stages", "card": card_path, "model": model.card().name });
    for (step, name) in names.iter().enumerate() {
        let spread = Spread::of(&mut times[step]).context("no stage timings")?;
        result[format!("{name}_ms")] = json!(spread.median);
        result[format!("{name}_allocations")] =
            json!(allocations[step] as f64 / args.rounds as f64);
    }
    Ok(result)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(&args.frames)
        .with_context(|| format!("cannot read frame folder {}", args.frames.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "jpg"))
        .collect();
    frames.sort();
    let first = frames.first().with_context(|| {
        format!("expected .jpg frames in {}, found none", args.frames.display())
    })?;
    let frame =
        image::open(first).with_context(|| format!("cannot decode {}", first.display()))?.to_rgb8();
    let gate = Calibration::load(&args.calibration)?.gate;

    let mut results = Vec::new();
    let mut table = Vec::new();
    for card in &args.cards {
        for row in floor(card, &frame, args)? {
            table.push(vec![
                row["model"].as_str().unwrap_or_default().to_string(),
                format!("floor, {} thread(s)", row["threads"]),
                format!("{:.3}", row["median_ms"].as_f64().unwrap_or(f64::NAN)),
                format!("{:.0}", row["allocations_per_run"].as_f64().unwrap_or(f64::NAN)),
            ]);
            results.push(row);
        }
        let row = stages(card, &frames, gate, args)?;
        for name in ["decode", "prepare", "infer", "analyze_gate"] {
            table.push(vec![
                row["model"].as_str().unwrap_or_default().to_string(),
                name.replace('_', " + "),
                format!("{:.3}", row[format!("{name}_ms")].as_f64().unwrap_or(f64::NAN)),
                format!("{:.0}", row[format!("{name}_allocations")].as_f64().unwrap_or(f64::NAN)),
            ]);
        }
        results.push(row);
    }

    println!("tract floor and daemon stages, medians of {} rounds", args.rounds);
    print!("{}", markdown_table(&["model", "step", "median ms", "allocations"], &table));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tract_floor: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
