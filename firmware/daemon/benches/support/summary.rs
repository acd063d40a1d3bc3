//! Pure helpers of the benchmarks: order statistics of timings and Markdown tables.
//!
//! Shared by the bench binaries (`#[path]` module) and checked against hand values by
//! `tests/bench_support.rs`, so the numbers the benches print rest on tested code.

/// Median, 10th and 90th percentile of a set of timings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median: the middle value, or the mean of the two middle values.
    pub median: f64,
    /// Nearest-rank 10th percentile: the `ceil(0.1 n)`-th smallest value.
    pub p10: f64,
    /// Nearest-rank 90th percentile: the `ceil(0.9 n)`-th smallest value.
    pub p90: f64,
}

impl Spread {
    /// The spread of `values` (sorted in place), or `None` when there are none or one is NaN.
    pub fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median =
            if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        // Nearest rank: the smallest value with at least q * n values at or below it.
        let rank = |q: f64| ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        Some(Self { median, p10: values[rank(0.1)], p90: values[rank(0.9)] })
    }
}

/// A Markdown table: a header row, the separator, then one line per row. Cells are written as
/// given; a `|` inside a cell is escaped so it cannot split the cell.
///
/// # Panics
/// When a row has another number of cells than the header.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<String> = cells.map(|cell| cell.replace('|', "\\|")).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut table = line(&mut header.iter().copied());
    table.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for row in rows {
        assert_eq!(row.len(), header.len(), "a table row needs one cell per column");
        table.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    table
}
