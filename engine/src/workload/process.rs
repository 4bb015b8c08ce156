//! Running the line server as a child process (`ember gen`), as a benchmark does, so that
//! the generator's memory and CPU are not counted as the pipeline's.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//! use engine::workload::WorkloadSpec;
//! use engine::workload::process::GeneratorProcess;
//!
//! let spec = WorkloadSpec::new(2_000_000, 10);
//! let mut command = Command::new(std::env::current_exe()?);
//! command.arg("gen").args(spec.to_gen_args()).args(["--port", "0"]);
//! let generator = GeneratorProcess::spawn(command, Duration::from_secs(600))?; // once it listens
//! let addr = generator.ready().addr;
//! // ... connect to `addr`, read until end of stream, close ...
//! let stats = generator.wait()?; // GENSTATS, once the process has exited
//! println!("accepted at {} ms", stats.gen_accept_epoch_ms);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{self, BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::serve::{READY_PREFIX, Ready, STATS_PREFIX, ServeStats};
use super::{Error, Result};

/// A running `ember gen` child that has announced `READY`. Dropping it kills the process if
/// it is still running.
#[derive(Debug)]
pub struct GeneratorProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
    ready: Ready,
    reaped: bool,
}

impl GeneratorProcess {
    /// Starts `command` (an `ember gen ...` invocation; its stdout is captured, stdin is
    /// closed, stderr is inherited) and waits until it prints its `READY` line. If it exits
    /// first, or `ready_timeout` passes (pre-generating 50 M lines takes about 10 s here),
    /// the process is killed and the error says which.
    pub fn spawn(mut command: Command, ready_timeout: Duration) -> Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn().map_err(|e| Error::Process {
            reason: format!("cannot start {:?}", command.get_program()),
            source: Some(e),
        })?;
        let Some(stdout) = child.stdout.take() else {
            kill_and_reap(&mut child);
            return Err(process_error("stdout was not captured".into(), None));
        };
        // Read on a helper thread, so that the wait can time out. Killing the child closes
        // its stdout, which ends the helper's read.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let line = read_line_starting_with(&mut stdout, READY_PREFIX);
            // The receiver is gone only if the wait timed out; then nobody needs this.
            let _ = tx.send((stdout, line));
        });
        let outcome = rx.recv_timeout(ready_timeout);
        if outcome.is_err() {
            kill_and_reap(&mut child);
        }
        // The helper has sent, or ends at end of file now that the child is dead.
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
        match outcome {
            Ok((stdout, Ok(line))) => {
                let mut process = Self {
                    child,
                    stdout,
                    ready: Ready {
                        addr: ([127, 0, 0, 1], 0).into(),
                        lines: 0,
                        words: 0,
                        bytes: None,
                        precompute_s: 0.0,
                    },
                    reaped: false,
                };
                process.ready = line.parse().map_err(|reason| process_error(reason, None))?;
                Ok(process)
            }
            Ok((_, Err(end))) => Err(stream_end_error(&mut child, READY_PREFIX, end)),
            Err(_) => Err(process_error(
                format!("no READY line within {ready_timeout:?}; killed it"),
                None,
            )),
        }
    }

    /// What the generator announced: its address, lines, bytes.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `GENSTATS` line and for the process to exit, successfully. The
    /// generator prints it once its client has closed the connection (or after its
    /// `--close-timeout-s`).
    pub fn wait(mut self) -> Result<ServeStats> {
        let line = match read_line_starting_with(&mut self.stdout, STATS_PREFIX) {
            Ok(line) => line,
            Err(end) => {
                self.reaped = true;
                return Err(stream_end_error(&mut self.child, STATS_PREFIX, end));
            }
        };
        let stats = ServeStats::from_line(&line).map_err(|reason| process_error(reason, None))?;
        let status = self.child.wait().map_err(|e| Error::Process {
            reason: "waiting for exit".into(),
            source: Some(e),
        })?;
        self.reaped = true;
        if !status.success() {
            return Err(process_error(format!("exited with {status}"), None));
        }
        Ok(stats)
    }
}

/// Why no line with the wanted prefix came: end of output, or a read error.
type StreamEnd = Option<io::Error>;

/// Reads stdout lines until one starts with `prefix`. `ember gen` prints nothing else on
/// stdout (its messages go to stderr); anything else is logged, not lost.
fn read_line_starting_with(
    stdout: &mut BufReader<ChildStdout>,
    prefix: &str,
) -> std::result::Result<String, StreamEnd> {
    let mut line = String::new();
    loop {
        line.clear();
        match stdout.read_line(&mut line) {
            Ok(0) => return Err(None),
            Ok(_) if line.starts_with(prefix) => return Ok(line.trim_end().to_owned()),
            Ok(_) => {
                tracing::warn!(target: "ember::gen", line = line.trim_end(), "unexpected generator output");
            }
            Err(e) => return Err(Some(e)),
        }
    }
}

/// The error for a generator whose stdout ended (or failed) before the `prefix` line; the
/// child is killed if still running and reaped, and its exit status reported.
fn stream_end_error(child: &mut Child, prefix: &str, end: StreamEnd) -> Error {
    let wanted = prefix.trim();
    if end.is_some() {
        kill_and_reap(child);
        return process_error(format!("reading stdout while waiting for {wanted}"), end);
    }
    let status = child
        .wait()
        .map_or_else(|e| format!("status unknown: {e}"), |s| s.to_string());
    process_error(format!("exited before printing {wanted} ({status})"), None)
}

fn kill_and_reap(child: &mut Child) {
    // Either may fail only because the child has already exited and been reaped.
    let _ = child.kill();
    let _ = child.wait();
}

fn process_error(reason: String, source: Option<io::Error>) -> Error {
    Error::Process { reason, source }
}

impl Drop for GeneratorProcess {
    fn drop(&mut self) {
        if !self.reaped {
            kill_and_reap(&mut self.child);
        }
    }
}
