//! `ember executor`: a block server that holds replicas of received blocks for drivers in
//! hot-replication mode (see the `blockstore` crate docs for the protocol and guarantees).
//!
//! Prints `READY <addr>` on stdout once it listens (with the real port when `--listen`
//! asked for port 0), logs connections and errors on stderr, and exits 0 on SIGTERM or
//! SIGINT after closing its connections. Blocks held in memory are gone when it exits;
//! blocks spilled to `--data-dir` are served again by the next executor started on it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use blockstore::{BlockServer, Config};

/// Hold replicas of received blocks for drivers in hot-replication mode.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on, `host:port`; port 0 picks a free port (see the READY line).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Directory for blocks that do not fit in memory. Without it nothing spills to disk.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Memory for block data. Accepts a plain byte count or a KiB/MiB/GiB suffix.
    #[arg(long, value_name = "N", default_value = "1GiB", value_parser = parse_bytes)]
    memory_max_bytes: u64,
    /// Disk for spilled blocks in --data-dir [default: 8GiB with --data-dir, else 0].
    #[arg(long, value_name = "N", value_parser = parse_bytes)]
    disk_max_bytes: Option<u64>,
    /// Name in handshakes and logs [default: executor@<listen address>].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Connections served at once; more are refused with an error frame.
    #[arg(long, value_name = "N")]
    connections_max: Option<usize>,
    /// Largest frame body accepted, which bounds the block size.
    #[arg(long, value_name = "N", value_parser = parse_bytes)]
    frame_body_max_bytes: Option<u64>,
}

/// Parses `123`, `64KiB`, `512MiB`, `2GiB` (binary units; `K`, `M`, `G` alone too).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` (use KiB, MiB or GiB)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logging();
    let config = config_from(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ember-executor")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve(args.listen, config))
}

fn config_from(args: &Args) -> anyhow::Result<Config> {
    let disk_max_bytes = match (&args.data_dir, args.disk_max_bytes) {
        (None, Some(n)) if n > 0 => bail!("--disk-max-bytes {n} needs --data-dir"),
        (None, _) => 0,
        (Some(_), Some(n)) => n,
        (Some(_), None) => 8 << 30,
    };
    let defaults = Config::default();
    let frame_body_max_bytes = match args.frame_body_max_bytes {
        Some(n) => u32::try_from(n)
            .map_err(|_| anyhow::anyhow!("--frame-body-max-bytes {n} exceeds 1GiB"))?,
        None => defaults.frame_body_max_bytes,
    };
    let config = Config {
        node_name: args
            .node_name
            .clone()
            .unwrap_or_else(|| format!("executor@{}", args.listen)),
        memory_max_bytes: args.memory_max_bytes,
        disk_max_bytes,
        data_dir: args.data_dir.clone(),
        frame_body_max_bytes,
        server_connections_max: args
            .connections_max
            .unwrap_or(defaults.server_connections_max),
        // Room for at least one frame of the size allowed.
        server_frame_bytes_in_flight_max: defaults
            .server_frame_bytes_in_flight_max
            .max(u64::from(frame_body_max_bytes)),
        ..defaults
    };
    if let Err(err) = config.validate() {
        // Name the flag, not the config field, for the operator.
        match err {
            blockstore::Error::InvalidConfig { setting, reason } => {
                bail!("invalid --{}: {reason}", setting.replace('_', "-"))
            }
            other => return Err(other.into()),
        }
    }
    Ok(config)
}

async fn serve(listen: String, config: Config) -> anyhow::Result<ExitCode> {
    // Handlers first: a signal sent right after the READY line must be handled, not kill
    // the process with the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let data_dir = config.data_dir.clone();
    let server = BlockServer::bind(&listen, config)
        .await
        .with_context(|| match &data_dir {
            Some(dir) => format!(
                "start the executor (listen {listen}, data dir {})",
                dir.display()
            ),
            None => format!("start the executor (listen {listen})"),
        })?;
    // The READY line is the contract with whoever started us (tests, scripts): one line,
    // flushed, with the address actually bound.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "READY {}", server.local_addr()).context("write the READY line")?;
        stdout.flush().context("write the READY line")?;
    }
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    let stats = server.stats();
    let usage = server.manager().usage();
    server.shutdown().await;
    tracing::info!(
        blocks_received = stats.blocks_received,
        bytes_received = stats.bytes_received,
        corrupt_frames = stats.corrupt_frames,
        connections_accepted = stats.connections_accepted,
        blocks_held = usage.memory_blocks + usage.disk_blocks,
        "executor stopped"
    );
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    // Logs go to stderr (stdout carries the READY line); `RUST_LOG` overrides the level.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_parse_with_binary_units() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert!(parse_bytes("12TB").unwrap_err().contains("unknown unit"));
        assert!(
            parse_bytes("lots")
                .unwrap_err()
                .contains("not a byte count")
        );
        assert!(parse_bytes("99999999999999999999G").is_err());
    }
}
