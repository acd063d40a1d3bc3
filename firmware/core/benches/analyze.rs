//! `analyze` (every score and statistic) against the plain path: per pixel, gather the `C`
//! logits, score them with [`score_logits`] (the platform `exp` / `ln`), add to four sums.
//!
//! Throughput is reported in pixel-classes (`H * W * C` elements): ns per pixel-class is
//! `1000 / (Melem/s)`. For CHW f32 logits, C = 2, 21, 150, at 256 x 256 and 512 x 512, and
//! for one sigmoid logit per pixel (two classes, the selfie model's output).
//! The numbers are of the statistics alone; relative to an inference they must be measured
//! right after one on the same thread (AVX-SSE transition), which the daemon's bench does.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qualm_core::{
    Layout, OutputKind, OutputMap, OwnedFrameMaps, StatsConfig, Temperature, analyze, score_logits,
};

/// Deterministic logits with structure: one class lifted per 32 x 32 block, plus noise.
fn logits(c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
    };
    let mut data: Vec<f32> = (0..c * h * w).map(|_| noise()).collect();
    for y in 0..h {
        for x in 0..w {
            let class = ((y / 32) * 7 + (x / 32) * 3) % c;
            data[(class * h + y) * w + x] += 6.0;
        }
    }
    data
}

/// The plain path: means of the four scores, nothing else.
fn naive(map: &OutputMap<'_, f32>, temperature: Temperature) -> [f64; 4] {
    let mut logits = [0.0f32; 256];
    let mut sums = [0.0f64; 4];
    for pixel in 0..map.pixels() {
        map.pixel_logits(pixel, &mut logits);
        if let Some(s) = score_logits(&logits[..map.classes()], temperature) {
            for (sum, v) in sums.iter_mut().zip([s.max_softmax, s.entropy, s.margin, s.energy]) {
                *sum += f64::from(v);
            }
        }
    }
    sums
}

fn bench(criterion: &mut Criterion) {
    let config = StatsConfig::default();
    for size in [256usize, 512] {
        let mut group = criterion.benchmark_group(format!("{size}x{size}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for c in [2usize, 21, 150] {
            let data = logits(c, size, size);
            let map =
                OutputMap::try_new(&data, c, size, size, Layout::Chw, OutputKind::Logits).unwrap();
            let mut maps = OwnedFrameMaps::new(size * size);
            group.throughput(Throughput::Elements((c * size * size) as u64));

            group.bench_function(BenchmarkId::new("naive", c), |b| {
                b.iter(|| naive(black_box(&map), config.temperature))
            });
            group.bench_function(BenchmarkId::new("analyze", c), |b| {
                b.iter(|| analyze(black_box(&map), &config, maps.as_maps()).unwrap())
            });
        }
        // The shipped selfie model's output: one sigmoid logit per pixel (two classes), here
        // the difference of a two-class map's logits.
        let pair = logits(2, size, size);
        let (background, person) = pair.split_at(size * size);
        let data: Vec<f32> = person.iter().zip(background).map(|(p, b)| p - b).collect();
        let map = OutputMap::try_new(&data, 1, size, size, Layout::Chw, OutputKind::SigmoidLogit)
            .unwrap();
        let mut maps = OwnedFrameMaps::new(size * size);
        group.throughput(Throughput::Elements((2 * size * size) as u64));
        group.bench_function(BenchmarkId::new("analyze_sigmoid", 2), |b| {
            b.iter(|| analyze(black_box(&map), &config, maps.as_maps()).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
