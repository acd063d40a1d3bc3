//! Helpers shared by the CLI tests.
#![allow(dead_code, reason = "each test binary uses its own part of these helpers")]

use std::path::Path;

use npyz::WriterBuilder;
use qualm_core::FrameStats;
use qualm_daemon::ledger::LedgerEntry;

/// Writes `data` as a C-order .npy array of `shape` at `path`.
pub fn write_npy<T: npyz::AutoSerialize + Clone>(path: &Path, shape: &[u64], data: &[T]) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    writer.extend(data.iter().cloned()).unwrap();
    writer.finish().unwrap();
}

/// A small deterministic generator (xorshift64*), uniform in [0, 1).
pub struct Random(pub u64);

impl Random {
    /// The next draw.
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize % n
    }

    /// Standard normal by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        let u = self.next().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.next()).cos()
    }
}

/// A scored ledger entry of model `ab..ab` at temperature 1.5, level 0.5, without a gate.
pub fn ledger_entry(frame: String, time: &str, stats: FrameStats) -> LedgerEntry {
    LedgerEntry {
        time: time.into(),
        frame,
        origin: String::new(),
        model_sha256: "ab".repeat(32),
        kept: false,
        reason: "observe_only".into(),
        temperature: Some(1.5),
        uncertain_level: Some(0.5),
        statistic: None,
        threshold: None,
        stats: Some(stats),
        perceptual_hash: None,
        record: None,
        error: None,
    }
}

/// Writes `entries` as a ledger (one JSON line each).
pub fn write_ledger(path: &Path, entries: &[LedgerEntry]) {
    let lines: Vec<String> = entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}
