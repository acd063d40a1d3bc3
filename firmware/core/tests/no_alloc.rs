//! The per-frame path allocates nothing once the caller's buffers exist.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use qualm_core::{
    FrameMaps, FrameStats, Layout, OutputKind, OutputMap, SCORES, SegmentScratch, StatsConfig,
    analyze, analyze_with,
};

/// Counts the allocations made by the current thread (other test threads do not disturb it).
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// thread-local `Cell` with a const initializer, so touching it never allocates or re-enters.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn analyze_allocates_nothing_after_warm_up() {
    let (c, h, w) = (21, 64, 48);
    let pixels = h * w;
    let frames: Vec<Vec<f32>> = (0..4)
        .map(|f| (0..c * pixels).map(|i| ((i * 7919 + f * 104_729) % 1000) as f32 / 50.0).collect())
        .collect();
    let roi: Vec<u8> = (0..pixels).map(|p| u8::from(p % 5 != 0)).collect();
    let mut classes = vec![0u8; pixels];
    let mut uncertainty = vec![0u8; pixels];
    let mut scores = vec![[0.0f32; SCORES]; pixels];
    let mut boundary = vec![0u8; pixels];
    let mut labels = vec![0u32; pixels];
    let mut segments = vec![SegmentScratch::default(); pixels];
    let config = StatsConfig::default();

    let mut run = |data: &[f32], roi: Option<&[u8]>| {
        let map = OutputMap::try_new(data, c, h, w, Layout::Chw, OutputKind::Logits).unwrap();
        let maps = FrameMaps {
            classes: &mut classes,
            uncertainty: &mut uncertainty,
            scores: &mut scores,
            boundary: &mut boundary,
            labels: &mut labels,
            segments: &mut segments,
        };
        match roi {
            None => analyze(&map, &config, maps).unwrap(),
            Some(roi) => analyze_with::<_, 32, 32>(&map, &config, maps, Some(roi)).unwrap(),
        }
    };

    // The counter sees this thread's allocations.
    let probe = allocations();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(allocations(), probe + 1);

    // Warm-up, then several frames with and without a ROI.
    let warm: FrameStats = run(&frames[0], None);
    let before = allocations();
    let mut total = 0.0;
    for frame in &frames {
        total += run(frame, None).mean_entropy;
        total += run(frame, Some(&roi)).mean_entropy;
    }
    let after = allocations();

    assert!(total > 0.0 && warm.segments > 0);
    assert_eq!(after - before, 0, "analyze allocated {} times", after - before);
}
