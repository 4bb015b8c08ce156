//! `ember checkpoint inspect DIR`: what a restart from a checkpoint directory would do,
//! without doing it (nothing in DIR is changed, no lock is taken).
//!
//! Prints the checkpoints present (which one a restart uses, which it would skip and why),
//! then the restart plan: the grid, each input stream's durability mode, the state restored,
//! every batch to recompute with where its data comes from (WAL Lsns, replica executors,
//! replay of a direct input, or memory only: lost), the blocks acknowledged but not yet in
//! a batch, and where sources resume. Exits non-zero, naming the file, when the directory
//! cannot be used for a restart (every checkpoint damaged, a metadata log that does not
//! reach the checkpoint, a record that does not decode).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

/// Inspect a checkpoint directory (`StreamingContext::get_or_create`'s).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a restart from DIR would do, without doing it.
    Inspect {
        /// The checkpoint directory (holds `checkpoints/` and `metadata/`).
        dir: PathBuf,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Inspect { dir } => inspect(dir),
    }
}

fn inspect(dir: PathBuf) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let ckpt_dir = engine::durability::checkpoints_dir(&dir);
    if ckpt_dir.is_dir() {
        let backend = checkpoint::DirBackend::local_existing(&ckpt_dir)
            .with_context(|| format!("open {}", ckpt_dir.display()))?;
        let store =
            checkpoint::CheckpointStore::open_read_only(Arc::new(backend), Default::default())
                .with_context(|| format!("open {}", ckpt_dir.display()))?;
        let description = store
            .describe()
            .with_context(|| format!("read {}", ckpt_dir.display()))?;
        println!("{description}");
    } else {
        println!(
            "no checkpoints in {} (none written yet)",
            ckpt_dir.display()
        );
    }
    let plan = engine::RestartPlan::inspect(&dir)
        .with_context(|| format!("a restart from {} would fail", dir.display()))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    println!("restart plan:");
    print!("{}", plan.describe(now_ms));
    Ok(ExitCode::SUCCESS)
}
