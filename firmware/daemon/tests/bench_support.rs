//! The benchmarks' order statistics and tables against hand-computed values.

#[path = "../benches/support/summary.rs"]
mod summary;

use summary::{Spread, markdown_table};

#[test]
fn spread_of_an_odd_count_is_the_middle_value() {
    // Sorted: 1 2 3 4 5 6 7 8 9 10 11; median 6; p10 rank ceil(1.1) = 2 -> 2;
    // p90 rank ceil(9.9) = 10 -> 10.
    let mut values = [11.0, 3.0, 7.0, 1.0, 9.0, 5.0, 2.0, 10.0, 4.0, 8.0, 6.0];
    let spread = Spread::of(&mut values).unwrap();
    assert_eq!(spread, Spread { median: 6.0, p10: 2.0, p90: 10.0 });
}

#[test]
fn spread_of_an_even_count_averages_the_two_middle_values() {
    // Sorted: 0.5 1.5 2.5 4; median (1.5 + 2.5) / 2 = 2; p10 rank ceil(0.4) = 1 -> 0.5;
    // p90 rank ceil(3.6) = 4 -> 4.
    let mut values = [4.0, 0.5, 2.5, 1.5];
    let spread = Spread::of(&mut values).unwrap();
    assert_eq!(spread, Spread { median: 2.0, p10: 0.5, p90: 4.0 });
}

#[test]
fn spread_of_one_value_is_that_value() {
    assert_eq!(Spread::of(&mut [3.25]), Some(Spread { median: 3.25, p10: 3.25, p90: 3.25 }));
}

#[test]
fn spread_refuses_empty_and_nan_input() {
    assert_eq!(Spread::of(&mut []), None);
    assert_eq!(Spread::of(&mut [1.0, f64::NAN, 2.0]), None);
}

#[test]
fn markdown_table_has_header_separator_and_escaped_cells() {
    let rows = vec![
        vec!["tract".to_string(), "4.50".to_string()],
        vec!["a|b".to_string(), "1".to_string()],
    ];
    let table = markdown_table(&["runtime", "ms"], &rows);
    assert_eq!(table, "| runtime | ms |\n|---|---|\n| tract | 4.50 |\n| a\\|b | 1 |\n");
}

#[test]
#[should_panic(expected = "one cell per column")]
fn markdown_table_rejects_a_short_row() {
    markdown_table(&["a", "b"], &[vec!["only one".to_string()]]);
}
