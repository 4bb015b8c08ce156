//! How fast the workload generator is: `cargo bench -p engine --bench workload [-- LINES]`.
//!
//! Prints lines/s for each way of generating (one thread writing directly, pre-generation
//! and the bounded stream on 1 and 2 threads, expected counts on 1 and 2 threads) for the
//! baseline's workload (K = 10, seed 42, V = 10,000, s = 1.0); default 2,000,000 lines.
//! Each figure is the best of three, to keep a shared machine's noise out.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Instant;

use engine::workload::{StreamConfig, Workload, WorkloadSpec};

fn best_of_three(mut run: impl FnMut() -> u64) -> (f64, u64) {
    let mut best = f64::INFINITY;
    let mut result = 0;
    for _ in 0..3 {
        let start = Instant::now();
        result = std::hint::black_box(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, result)
}

fn report(what: &str, lines: u64, (seconds, result): (f64, u64)) {
    println!(
        "{what:<32} {seconds:>8.3} s {:>14.0} lines/s   ({result})",
        lines as f64 / seconds
    );
}

fn main() {
    // `cargo bench` passes `--bench`; the first other argument is the number of lines.
    let lines: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(2_000_000, |a| a.parse().unwrap());
    let start = Instant::now();
    let workload = Workload::new(WorkloadSpec::new(lines, 10)).unwrap();
    println!(
        "vocabulary and tables: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    report(
        "write_lines, 1 thread",
        lines,
        best_of_three(|| {
            let mut out = Vec::new();
            workload.write_lines(0..lines, &mut out);
            out.len() as u64
        }),
    );
    for threads in [1, 2] {
        let config = StreamConfig {
            threads,
            ..StreamConfig::default()
        };
        report(
            &format!("pregenerate, {threads} thread(s)"),
            lines,
            best_of_three(|| workload.pregenerate(config).bytes()),
        );
        report(
            &format!("stream, {threads} thread(s)"),
            lines,
            best_of_three(|| {
                workload
                    .stream(0..lines, config)
                    .map(|c| c.bytes().len() as u64)
                    .sum()
            }),
        );
    }
    for threads in [1, 2] {
        report(
            &format!("expected counts, {threads} thread(s)"),
            lines,
            best_of_three(|| workload.expected_counts(threads).total_words()),
        );
    }
}
