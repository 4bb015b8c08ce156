//! `ember demo`: the main job on an embedded default, self-contained.
//!
//! Starts the workload generator (`ember gen`, a child process, lines generated before
//! it listens), runs the network word count with a running total in this process, prints one
//! line per batch as it completes, then the top words and the check of every count against
//! the counts the generator computed.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::StreamingContext;
use engine::workload::process::GeneratorProcess;
use engine::workload::{Workload, WorkloadSpec};

use crate::wordcount::{self, Monitor, Observed, Settings};

/// Run the main demo: the word count with a running total over a socket, against the
/// workload generator, with live per-batch metrics and a check of the counts.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lines to send.
    #[arg(long, default_value_t = 5_000_000)]
    lines: u64,
    /// Words per line.
    #[arg(long, default_value_t = 10)]
    words: u32,
    /// Batch interval in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    batch_ms: u64,
    /// How many of the most frequent words to show.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let spec = WorkloadSpec::new(args.lines, args.words);
    println!("ember demo: word count over TCP with a running total");
    println!(
        "  {} lines of {} Zipf-distributed words (seed {}, {} distinct), {} ms batches",
        group(args.lines),
        args.words,
        spec.seed,
        group(u64::from(spec.vocab_size)),
        args.batch_ms
    );
    println!(
        "  pipeline: socket_text_stream -> flat_map(split) -> map((w, 1)) -> reduce_by_key(+) -> update_state_by_key(+)"
    );

    let exe = std::env::current_exe().context("locating the ember binary")?;
    let mut gen_cmd = Command::new(exe);
    gen_cmd
        .arg("gen")
        .args(spec.to_gen_args())
        .args(["--port", "0"]);
    let generator = GeneratorProcess::spawn(gen_cmd, Duration::from_secs(120))
        .context("starting the generator")?;
    let address = generator.ready().addr.to_string();
    println!(
        "  generator: `ember gen` (pid {}) serving on {address}\n",
        generator.id()
    );

    let settings = Settings {
        address: address.clone(),
        batch_ms: args.batch_ms,
        partitions: None,
        workers: None,
        block_interval_ms: None,
        block_size_max_bytes: Some(crate::wordcount::IN_MEMORY_BLOCK_SIZE_MAX_BYTES),
        receiver_queue_blocks_max: None,
        graceful_stop_timeout_ms: None,
    };
    let ctx = StreamingContext::new(settings.config())?;
    // The generator serves one connection: when it ends, the source is exhausted.
    let mut options = engine::SocketOptions::default();
    options.stop_at_end_of_stream = true;
    let totals = wordcount::build(&ctx, &address, options)?;
    let observed = Arc::new(Observed::default());
    let t0 = Instant::now();
    println!(
        "{:>8} {:>11} {:>12} {:>11} {:>11} {:>11}",
        "batch", "records", "total", "proc ms", "sched ms", "lines/s"
    );
    ctx.add_listener(Arc::new(Monitor {
        lines: args.lines,
        observed: Arc::clone(&observed),
        stop: ctx.stop_handle(),
        on_batch: Some(Box::new(move |b, total| {
            let elapsed = t0.elapsed().as_secs_f64();
            println!(
                "{:>7.1}s {:>11} {:>12} {:>11} {:>11} {:>11}",
                elapsed,
                group(b.records()),
                group(total),
                b.processing_delay_ms().unwrap_or(0),
                b.scheduling_delay_ms().unwrap_or(0),
                if elapsed > 0.0 {
                    group((total as f64 / elapsed) as u64)
                } else {
                    "-".into()
                },
            );
        })),
    }));
    // The last batch runs as soon as the generator's stream has ended, not at its grid time.
    ctx.add_listener(Arc::new(wordcount::StopAtEndOfStream {
        stop: ctx.stop_handle(),
    }));
    ctx.stop_on_signals()?;
    ctx.start()?;
    ctx.await_termination().context("the pipeline failed")?;
    let elapsed = t0.elapsed();
    generator.wait().context("waiting for the generator")?;

    let rows = wordcount::sorted_counts(&totals.lock().unwrap_or_else(|e| e.into_inner()));
    let mut top: Vec<_> = rows.iter().collect();
    top.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    });
    println!("\ntop {} words:", args.top);
    for (i, (w, c)) in top.iter().take(args.top).enumerate() {
        println!("  {:>2}. {:<12} {:>12}", i + 1, w.as_str(), group(*c));
    }
    let expected = Workload::new(spec)?.expected_counts(engine::workload::default_threads());
    let actual = wordcount::tsv(&rows);
    let verdict = expected.verify_tsv(&actual);
    let words: u64 = rows.iter().map(|(_, c)| c).sum();
    println!(
        "\n{} lines, {} words in {:.2} s ({} lines/s from start to the last batch); {} distinct words",
        group(args.lines),
        group(words),
        elapsed.as_secs_f64(),
        group((args.lines as f64 / elapsed.as_secs_f64()) as u64),
        group(rows.len() as u64)
    );
    match verdict {
        Ok(()) => {
            println!(
                "check: every count equals the generator's expected count ({} words, {} occurrences). OK",
                group(expected.len() as u64),
                group(expected.total_words())
            );
            println!("(whole demo: {:.1} s)", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Err(mismatch) => {
            println!("check: FAILED: {mismatch}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
