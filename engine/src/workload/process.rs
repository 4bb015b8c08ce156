//! Running the line server as a child process (`ember gen`), as a benchmark does, so that
//! the generator's memory and CPU are not counted as the pipeline's.
//!
//! ```no_run
//! use std::process::Command;
//! use engine::workload::WorkloadSpec;
//! use engine::workload::process::GeneratorProcess;
//!
//! let spec = WorkloadSpec::new(2_000_000, 10);
//! let mut command = Command::new(std::env::current_exe()?);
//! command.arg("gen").args(spec.to_gen_args()).args(["--port", "0"]);
//! let generator = GeneratorProcess::spawn(command)?; // returns once it listens
//! let addr = generator.ready().addr;
//! // ... connect to `addr`, read until end of stream, close ...
//! let stats = generator.wait()?; // GENSTATS, once the process has exited
//! println!("accepted at {} ms", stats.gen_accept_epoch_ms);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

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
    /// closed, stderr is inherited) and waits until it prints its `READY` line.
    pub fn spawn(mut command: Command) -> Result<Self> {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn().map_err(|e| Error::Process {
            reason: format!("cannot start {:?}", command.get_program()),
            source: Some(e),
        })?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(process_error("stdout was not captured", None));
        };
        let mut process = Self {
            child,
            stdout: BufReader::new(stdout),
            ready: Ready {
                addr: ([127, 0, 0, 1], 0).into(),
                lines: 0,
                words: 0,
                bytes: None,
                precompute_s: 0.0,
            },
            reaped: false,
        };
        let line = process.read_line_starting_with(READY_PREFIX)?;
        process.ready = line
            .parse()
            .map_err(|reason: String| process_error(&reason, None))?;
        Ok(process)
    }

    /// What the generator announced: its address, lines, bytes.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `GENSTATS` line and for the process to exit, successfully.
    pub fn wait(mut self) -> Result<ServeStats> {
        let line = self.read_line_starting_with(STATS_PREFIX)?;
        let stats = ServeStats::from_line(&line).map_err(|reason| process_error(&reason, None))?;
        let status = self.child.wait().map_err(|e| Error::Process {
            reason: "waiting for exit".into(),
            source: Some(e),
        })?;
        self.reaped = true;
        if !status.success() {
            return Err(process_error(&format!("exited with {status}"), None));
        }
        Ok(stats)
    }

    /// Reads stdout lines until one starts with `prefix`. `ember gen` prints nothing else on
    /// stdout (its messages go to stderr); anything else is logged, not lost.
    fn read_line_starting_with(&mut self, prefix: &str) -> Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| Error::Process {
                    reason: format!("reading stdout while waiting for {}", prefix.trim()),
                    source: Some(e),
                })?;
            if n == 0 {
                let status = self.child.wait().map_or_else(
                    |e| format!("status unknown: {e}"),
                    |status| status.to_string(),
                );
                self.reaped = true;
                return Err(process_error(
                    &format!("exited before printing {} ({status})", prefix.trim()),
                    None,
                ));
            }
            if line.starts_with(prefix) {
                return Ok(line.trim_end().to_owned());
            }
            tracing::warn!(target: "ember::gen", line = line.trim_end(), "unexpected generator output");
        }
    }
}

fn process_error(reason: &str, source: Option<std::io::Error>) -> Error {
    Error::Process {
        reason: reason.to_owned(),
        source,
    }
}

impl Drop for GeneratorProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
