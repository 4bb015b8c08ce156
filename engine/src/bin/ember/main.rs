//! `ember`: the operator's command-line tool.
//!
//! Each subcommand lives in its own module next to this file and exposes an `Args` type
//! and a `run(args) -> anyhow::Result<ExitCode>` function; this file only dispatches.
//! This is the only place in the workspace that uses `anyhow`: library crates return
//! their own typed errors, and the CLI adds the context an operator needs (which file,
//! which flag) and turns any error into one line on stderr and a non-zero exit code.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod bench;
mod bench_kafka;
mod bench_recovery;
mod checkpoint;
mod demo;
mod executor;
mod r#gen;
mod kafka;
mod malloc;
mod run;
mod wal;
mod wordcount;

/// Ember: a stream-processing engine that does not lose data.
#[derive(Debug, Parser)]
#[command(name = "ember", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    Gen(r#gen::Args),
    /// Inspect, verify or dump a write-ahead log, or run its crash-and-recover demo.
    Wal(wal::Args),
    /// The main demo: the word count with a running total over TCP against the workload
    /// generator, live per-batch metrics, the top words and a check of every count.
    /// (The WAL's crash-and-recover demo is `ember wal demo`.)
    Demo(demo::Args),
    Executor(executor::Args),
    // Boxed: its flags (sources, sinks, durability, storage URLs, Kafka) make it several
    // times the size of the other variants.
    Run(Box<run::Args>),
    Bench(bench::Args),
    /// Inspect a checkpoint directory: what a restart would do, without doing it.
    Checkpoint(checkpoint::Args),
}

fn main() -> ExitCode {
    malloc::configure();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One clear line (with its causes), never a panic or a backtrace.
            eprintln!("ember: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Some(command) = cli.command else {
        Cli::command().print_help()?;
        return Ok(ExitCode::from(2));
    };
    match command {
        Command::Gen(args) => r#gen::run(args),
        Command::Wal(args) => wal::run(args),
        Command::Demo(args) => {
            init_logging("warn");
            demo::run(args)
        }
        Command::Executor(args) => executor::run(args),
        Command::Run(args) => {
            init_logging("info");
            run::run(*args)
        }
        Command::Bench(args) => {
            init_logging("warn");
            bench::run(args)
        }
        Command::Checkpoint(args) => {
            init_logging("warn");
            checkpoint::run(args)
        }
    }
}

/// Logs to stderr, at `default` unless RUST_LOG says otherwise.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
