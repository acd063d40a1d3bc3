//! Statistics measured right after an inference, on the same thread, against the inference.
//!
//! On x86, code that runs after tract's AVX kernels can be much slower until the upper halves
//! of the vector registers are cleared (the AVX-SSE transition penalty), so timing
//! `qualm-core` alone would flatter it. Each round here runs one inference of the committed
//! int8 model on a real frame, then immediately the statistics of (a) that model's own output
//! and (b) a synthetic 512 x 512 x 21 logits map, timing each step. Medians over the rounds
//! and their ratios come from the same run.
//!
//! Run: `cargo bench -p qualm-daemon --bench stats_after_inference` (`ROUNDS=N` to change the
//! number of rounds, 60 by default). A last row times the large map again with no inference
//! in between, to show whether the transition penalty is there at all.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use qualm_core::{Layout, OutputKind, OutputMap, OwnedFrameMaps, StatsConfig, analyze};
use qualm_daemon::model::SegmentationModel;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Logits `[21, 512, 512]` with blocky classes and noise, deterministic.
fn synthetic_logits() -> Vec<f32> {
    let (c, h, w) = (21usize, 512usize, 512usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut data: Vec<f32> = (0..c * h * w)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 6.0 - 3.0
        })
        .collect();
    for y in 0..h {
        for x in 0..w {
            data[(((y / 40) * 5 + (x / 56) * 3) % c * h + y) * w + x] += 5.0;
        }
    }
    data
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(60);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut model = SegmentationModel::load(&root.join("models/selfie/selfie_int8.toml"))
        .expect("the committed model loads");
    let frame = image::open(root.join("models/frames/vtest/vtest_0180.jpg")).unwrap().to_rgb8();
    let config = StatsConfig::default();

    let (height, width) = model.output_size();
    let mut own_maps = OwnedFrameMaps::new(height * width);
    let big = synthetic_logits();
    let big_map = OutputMap::try_new(&big, 21, 512, 512, Layout::Chw, OutputKind::Logits).unwrap();
    let mut big_maps = OwnedFrameMaps::new(512 * 512);

    let (mut inference, mut own, mut large) = (Vec::new(), Vec::new(), Vec::new());
    let mut alone = Vec::new();
    for round in 0..rounds + 3 {
        model.prepare(&frame).unwrap();
        let started = Instant::now();
        let output = model.infer().unwrap();
        let inferred = Instant::now();
        black_box(model.analyze(&output, &config, own_maps.as_maps()).unwrap());
        let own_done = Instant::now();

        // Again right after an inference, for the large map.
        let output = model.infer().unwrap();
        black_box(&output);
        let large_started = Instant::now();
        black_box(analyze(&big_map, &config, big_maps.as_maps()).unwrap());
        let large_done = Instant::now();

        // Once more with no inference in between: the gap to the row above is the cost of
        // following tract's kernels on the same thread.
        black_box(analyze(&big_map, &config, big_maps.as_maps()).unwrap());
        let alone_done = Instant::now();

        // The first rounds warm caches and tract's scratch space.
        if round >= 3 {
            inference.push((inferred - started).as_secs_f64() * 1e3);
            own.push((own_done - inferred).as_secs_f64() * 1e3);
            large.push((large_done - large_started).as_secs_f64() * 1e3);
            alone.push((alone_done - large_done).as_secs_f64() * 1e3);
        }
    }

    let inference = median(&mut inference);
    let own = median(&mut own);
    let large = median(&mut large);
    let alone = median(&mut alone);
    println!("stats right after inference, medians of {rounds} rounds (ms)");
    println!("| step | median ms | ratio to inference |");
    println!("|---|---|---|");
    println!("| inference, selfie int8 256x256 | {inference:.3} | 1 |");
    println!(
        "| statistics of its output (256x256x1 sigmoid) | {own:.3} | {:.4} |",
        own / inference
    );
    println!("| statistics of 512x512x21 logits | {large:.3} | {:.4} |", large / inference);
    println!(
        "| statistics of 512x512x21 logits, not after inference | {alone:.3} | {:.4} |",
        alone / inference
    );
    let per_element = large * 1e6 / (512.0 * 512.0 * 21.0);
    println!("512x512x21: {per_element:.2} ns per pixel-class after an inference");
}
