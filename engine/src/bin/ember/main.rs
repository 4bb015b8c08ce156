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

mod executor;
mod r#gen;
mod wal;

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
    /// The main demo. For now: write a WAL in a child process, kill -9 it, recover, and
    /// check that nothing acknowledged was lost (same as `ember wal demo`).
    Demo(wal::DemoArgs),
    Executor(executor::Args),
}

fn main() -> ExitCode {
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
        Command::Demo(args) => wal::demo(args),
        Command::Executor(args) => executor::run(args),
    }
}
