//! Serving the workload over TCP, the way the baseline's generator does.
//!
//! [`LineServer`] prepares the lines (all of them in memory, like the baseline, or generated
//! while sending, with bounded memory), listens, accepts **one** connection, writes every
//! line as fast as the reader takes them, half-closes, and waits for the client to close its
//! side, which it does once it has read everything. [`ServeStats`] reports when the client
//! was accepted (wall clock, so a benchmark can measure from connect to its own end) and what
//! was sent.
//!
//! The text protocol of `ember gen`, which [`super::process`] reads:
//!
//! ```text
//! READY port=40123 host=127.0.0.1 lines=2000000 words=10 bytes=152350068 precompute_s=0.262
//! GENSTATS {"gen_lines":2000000,"gen_bytes":152350068,...}
//! ```
//!
//! `READY` is printed once the server listens (`bytes=` only when known in advance);
//! `GENSTATS` and a JSON object of [`ServeStats`] once the client has closed. Both keep the
//! format and key names of the baseline's `LineGen`, so tools written for one read the other.
//!
//! One connection, no acknowledgements: this is the baseline's unreliable source. An
//! acknowledged, resumable delivery belongs next to [`LineServer::serve_one`] and can start
//! at any line (`Workload::stream` takes a line range).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Error, LineChunk, Pregenerated, Result, StreamConfig, Workload};

/// The prefix of the final statistics line of `ember gen`.
pub const STATS_PREFIX: &str = "GENSTATS ";
/// The prefix of the line `ember gen` prints once it listens.
pub const READY_PREFIX: &str = "READY ";

/// Where the served lines come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    /// Generate every line into memory before listening, as the baseline does: the generator
    /// then only copies bytes while the client reads. Memory: the whole text.
    Pregenerate(StreamConfig),
    /// Generate while sending, on background threads, a bounded number of chunks ahead.
    /// Memory: [`StreamConfig::chunks_in_memory_max`] chunks, whatever the number of lines.
    Stream(StreamConfig),
}

/// How a [`LineServer`] listens and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The address to listen on; port 0 picks a free port. Default `127.0.0.1:0`.
    pub addr: SocketAddr,
    /// Where the lines come from. Default: pre-generated, on all cores.
    pub mode: DataMode,
    /// How long to wait, after the last byte, for the client to close. Default 900 s.
    pub client_close_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            mode: DataMode::Pregenerate(StreamConfig::default()),
            client_close_timeout: Duration::from_secs(900),
        }
    }
}

/// What `ember gen` announces once it listens.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Lines it will serve.
    pub lines: u64,
    /// Words per line.
    pub words: u32,
    /// Bytes it will serve, when known in advance (pre-generated data).
    pub bytes: Option<u64>,
    /// Seconds spent preparing (vocabulary, tables, pre-generation) before listening.
    pub precompute_s: f64,
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{READY_PREFIX}port={} host={} lines={} words={}",
            self.addr.port(),
            self.addr.ip(),
            self.lines,
            self.words
        )?;
        if let Some(bytes) = self.bytes {
            write!(f, " bytes={bytes}")?;
        }
        write!(f, " precompute_s={:.3}", self.precompute_s)
    }
}

impl FromStr for Ready {
    type Err = String;

    /// Parses a `READY key=value ...` line; unknown keys are ignored.
    fn from_str(line: &str) -> std::result::Result<Self, String> {
        let rest = line
            .trim_end()
            .strip_prefix(READY_PREFIX)
            .ok_or_else(|| format!("not a READY line: {line:?}"))?;
        let mut port = None;
        let mut host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut ready = Ready {
            addr: SocketAddr::new(host, 0),
            lines: 0,
            words: 0,
            bytes: None,
            precompute_s: 0.0,
        };
        for field in rest.split_whitespace() {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| format!("READY field without '=': {field:?}"))?;
            let bad = |e: &dyn fmt::Display| format!("READY field {key}={value:?}: {e}");
            match key {
                "port" => port = Some(value.parse::<u16>().map_err(|e| bad(&e))?),
                "host" => host = value.parse().map_err(|e| bad(&e))?,
                "lines" => ready.lines = value.parse().map_err(|e| bad(&e))?,
                "words" => ready.words = value.parse().map_err(|e| bad(&e))?,
                "bytes" => ready.bytes = Some(value.parse().map_err(|e| bad(&e))?),
                "precompute_s" => ready.precompute_s = value.parse().map_err(|e| bad(&e))?,
                _ => {}
            }
        }
        let port = port.ok_or_else(|| format!("READY line without port=: {line:?}"))?;
        ready.addr = SocketAddr::new(host, port);
        Ok(ready)
    }
}

/// What a served connection did. Field names are the baseline's `GENSTATS` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeStats {
    /// Lines sent.
    pub gen_lines: u64,
    /// Bytes sent.
    pub gen_bytes: u64,
    /// Seconds spent preparing before listening.
    pub gen_precompute_s: f64,
    /// When the client's connection was accepted, in milliseconds since the Unix epoch.
    pub gen_accept_epoch_ms: u64,
    /// Seconds from accept to the last byte handed to the socket.
    pub gen_write_s: f64,
    /// Seconds from accept to the client closing its side (or the wait timing out).
    pub gen_client_close_s: f64,
    /// `gen_lines / gen_write_s`.
    pub gen_write_lines_per_s: f64,
}

impl ServeStats {
    /// The `GENSTATS {json}` line (without a newline).
    pub fn to_line(&self) -> String {
        // Serialising plain numbers cannot fail.
        format!(
            "{STATS_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Parses a `GENSTATS {json}` line.
    pub fn from_line(line: &str) -> std::result::Result<Self, String> {
        let json = line
            .trim_end()
            .strip_prefix(STATS_PREFIX)
            .ok_or_else(|| format!("not a GENSTATS line: {line:?}"))?;
        serde_json::from_str(json).map_err(|e| format!("GENSTATS line {json:?}: {e}"))
    }
}

/// The lines a server sends, prepared.
#[derive(Debug)]
enum Lines {
    Pregenerated(Pregenerated),
    Stream(StreamConfig),
}

/// The chunks of one connection.
enum Source<'a> {
    Memory(&'a Pregenerated),
    Stream(super::LineStream),
}

/// A one-connection line server, listening. See the [module docs](self).
#[derive(Debug)]
pub struct LineServer {
    workload: Workload,
    listener: TcpListener,
    addr: SocketAddr,
    lines: Lines,
    precompute: Duration,
    client_close_timeout: Duration,
}

impl LineServer {
    /// Listens on `config.addr`, then prepares the lines (pre-generating them if the mode
    /// says so). Listening first makes a bad or taken address fail at once, not after
    /// minutes of pre-generation; a client that connects early waits in the listen backlog
    /// and is accepted (and timed) by [`serve_one`](Self::serve_one). `precompute` is time
    /// already spent on the caller's side (building the [`Workload`], say), added to the
    /// reported preparation time.
    pub fn bind(workload: &Workload, config: ServeConfig, precompute: Duration) -> Result<Self> {
        let start = Instant::now();
        let listener = TcpListener::bind(config.addr).map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let lines = match config.mode {
            DataMode::Pregenerate(stream) => Lines::Pregenerated(workload.pregenerate(stream)),
            DataMode::Stream(stream) => Lines::Stream(stream),
        };
        Ok(Self {
            workload: workload.clone(),
            listener,
            addr,
            lines,
            precompute: precompute + start.elapsed(),
            client_close_timeout: config.client_close_timeout,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `READY` announcement.
    pub fn ready(&self) -> Ready {
        Ready {
            addr: self.addr,
            lines: self.workload.spec().lines,
            words: self.workload.spec().words_per_line,
            bytes: match &self.lines {
                Lines::Pregenerated(data) => Some(data.bytes()),
                Lines::Stream(_) => None,
            },
            precompute_s: self.precompute.as_secs_f64(),
        }
    }

    /// Accepts one connection, sends every line, half-closes, waits for the client to close
    /// (up to the configured timeout), and reports. The listener closes when this returns.
    pub fn serve_one(self) -> Result<ServeStats> {
        // In streaming mode, start generating before the client arrives, so that the first
        // chunks are ready when it does.
        let source = match &self.lines {
            Lines::Pregenerated(data) => Source::Memory(data),
            Lines::Stream(config) => {
                Source::Stream(self.workload.stream(0..self.workload.spec().lines, *config))
            }
        };
        let (mut socket, peer) = self.listener.accept().map_err(|source| Error::Accept {
            addr: self.addr,
            source,
        })?;
        let accepted = Instant::now();
        let accept_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        drop(self.listener);

        let mut progress = Progress::default();
        match source {
            Source::Memory(data) => {
                for chunk in data.chunks() {
                    progress.send(&mut socket, peer, chunk)?;
                }
            }
            Source::Stream(chunks) => {
                for chunk in chunks {
                    progress.send(&mut socket, peer, &chunk)?;
                }
            }
        }
        let written = accepted.elapsed();
        // Half-close: the client sees end of stream after the last line. A client that has
        // already gone makes this fail, which changes nothing: everything was sent.
        let _ = socket.shutdown(Shutdown::Write);
        wait_for_close(&mut socket, self.client_close_timeout);
        let closed = accepted.elapsed();

        let write_s = written.as_secs_f64();
        Ok(ServeStats {
            gen_lines: progress.lines,
            gen_bytes: progress.bytes,
            gen_precompute_s: self.precompute.as_secs_f64(),
            gen_accept_epoch_ms: accept_epoch_ms,
            gen_write_s: write_s,
            gen_client_close_s: closed.as_secs_f64(),
            gen_write_lines_per_s: if write_s > 0.0 {
                progress.lines as f64 / write_s
            } else {
                0.0
            },
        })
    }
}

/// Bytes and whole lines handed to the socket so far.
#[derive(Debug, Default)]
struct Progress {
    bytes: u64,
    lines: u64,
}

impl Progress {
    fn send(&mut self, socket: &mut TcpStream, peer: SocketAddr, chunk: &LineChunk) -> Result<()> {
        let mut rest = chunk.bytes();
        while !rest.is_empty() {
            match socket.write(rest) {
                Ok(0) => {
                    return Err(self.send_error(
                        peer,
                        chunk,
                        rest,
                        io::Error::from(io::ErrorKind::WriteZero),
                    ));
                }
                Ok(n) => {
                    self.bytes += n as u64;
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.send_error(peer, chunk, rest, e)),
            }
        }
        self.lines += chunk.line_count();
        Ok(())
    }

    fn send_error(
        &self,
        peer: SocketAddr,
        chunk: &LineChunk,
        unsent: &[u8],
        source: io::Error,
    ) -> Error {
        let sent = &chunk.bytes()[..chunk.bytes().len() - unsent.len()];
        let whole_lines = sent.iter().filter(|&&b| b == b'\n').count() as u64;
        Error::Send {
            peer,
            bytes_sent: self.bytes,
            lines_sent: self.lines + whole_lines,
            source,
        }
    }
}

/// Reads (and discards) until the client closes, an error, or the timeout.
fn wait_for_close(socket: &mut TcpStream, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout means "block forever" to the socket: stop instead.
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match socket.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Reset, timed out: either way the client is done with us.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let ready = Ready {
            addr: "127.0.0.1:40123".parse().unwrap(),
            lines: 2_000_000,
            words: 10,
            bytes: Some(152_350_068),
            precompute_s: 0.25,
        };
        let line = ready.to_string();
        assert_eq!(
            line,
            "READY port=40123 host=127.0.0.1 lines=2000000 words=10 bytes=152350068 precompute_s=0.250"
        );
        assert_eq!(line.parse::<Ready>().unwrap(), ready);
        // The baseline's LineGen line (no host) parses too.
        let java = "READY port=9999 lines=5 words=10 bytes=380 precompute_s=0.120";
        let parsed: Ready = java.parse().unwrap();
        assert_eq!((parsed.addr.port(), parsed.bytes), (9999, Some(380)));
        assert!("READY lines=5".parse::<Ready>().is_err());
        assert!("READY port=x".parse::<Ready>().is_err());
        assert!("GO port=1".parse::<Ready>().is_err());
    }

    #[test]
    fn stats_line_round_trips_and_parses_the_baselines_line() {
        let java = r#"GENSTATS {"gen_lines":2000000,"gen_bytes":152350068,"gen_precompute_s":1.937,"gen_accept_epoch_ms":1795000000000,"gen_write_s":2.600,"gen_client_close_s":2.616,"gen_write_lines_per_s":769230.8}"#;
        let stats = ServeStats::from_line(java).unwrap();
        assert_eq!(stats.gen_bytes, 152_350_068);
        assert_eq!(ServeStats::from_line(&stats.to_line()).unwrap(), stats);
        assert!(ServeStats::from_line("GENSTATS {}").is_err());
    }
}
