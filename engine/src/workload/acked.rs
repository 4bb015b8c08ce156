//! Serving the workload reliably: the sender side of the acknowledged line protocol
//! ([`crate::source::ack`]), run as `ember gen --ack`.
//!
//! [`AckedServer`] serves one stream of `N` lines over as many successive connections as it
//! takes. Each connection starts with the receiver's `RESUME <from>`; the server checks it
//! against what it knows, sends lines `from..N`, half-closes, and reads the receiver's
//! cumulative `ACK <end>` lines until the receiver closes. Then it waits for the next
//! connection. It is the test oracle that acknowledged data was never lost: it fails
//! (and `ember gen` exits non-zero, saying why) when
//!
//! | the receiver says                          | verdict                                       |
//! |--------------------------------------------|-----------------------------------------------|
//! | `RESUME from`, `from` < lines acknowledged | [`Error::AckedLinesLost`]: acknowledged lines were lost |
//! | `RESUME from`, `from` > lines ever sent    | [`Error::AckProtocol`]: claims lines never sent |
//! | `ACK end`, `end` < an earlier ack           | [`Error::AckProtocol`]: acknowledgements went backwards |
//! | `ACK end`, `end` > lines sent so far       | [`Error::AckProtocol`]: acknowledges lines never sent |
//! | anything else malformed, or a wrong version | refusal sent, connection closed, server goes on |
//!
//! A `RESUME from` at or past the acknowledged line counts as an acknowledgement of every
//! line before `from` (the receiver says it holds them durably). Once all `N` lines are
//! acknowledged, the server keeps answering new connections (`FROM N END N`) until
//! [`AckedConfig::linger`] passes without one, so a receiver restarted at the very end
//! still completes its handshake; then it returns its [`AckedStats`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::serve::Ready;
use super::{Error, Result, StreamConfig, Workload};
use crate::source::ack::{self, ToReceiver, ToSender};

/// How an [`AckedServer`] listens and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedConfig {
    /// The address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// How lines are generated (always while sending: any range can be resent).
    pub stream: StreamConfig,
    /// How long to keep listening once every line is acknowledged.
    pub linger: Duration,
    /// How long a new connection has to send its `RESUME`.
    pub handshake_timeout: Duration,
}

/// What an acknowledged run did (printed by `ember gen --ack` as `ACKSTATS {json}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedStats {
    /// Lines in the stream (`N`).
    pub lines: u64,
    /// Lines acknowledged at the end (`N` unless the server gave up).
    pub acked_lines: u64,
    /// Lines written to sockets, resends included.
    pub sent_lines: u64,
    /// Connections that completed a handshake.
    pub connections: u64,
    /// The line each handshake resumed from, in order.
    pub resumed_from: Vec<u64>,
}

/// The prefix of the final statistics line of `ember gen --ack`.
pub const ACK_STATS_PREFIX: &str = "ACKSTATS ";

impl AckedStats {
    /// The `ACKSTATS {json}` line (without a newline).
    pub fn to_line(&self) -> String {
        format!(
            "{ACK_STATS_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Parses an `ACKSTATS {json}` line.
    pub fn from_line(line: &str) -> std::result::Result<Self, String> {
        let json = line
            .trim_end()
            .strip_prefix(ACK_STATS_PREFIX)
            .ok_or_else(|| format!("not an ACKSTATS line: {line:?}"))?;
        serde_json::from_str(json).map_err(|e| format!("ACKSTATS line {json:?}: {e}"))
    }
}

/// A resumable, acknowledged line server, listening. See the [module docs](self).
#[derive(Debug)]
pub struct AckedServer {
    workload: Workload,
    listener: TcpListener,
    addr: SocketAddr,
    config: AckedConfig,
    precompute: Duration,
}

/// What the server knows across connections.
#[derive(Debug, Default)]
struct Progress {
    /// Every line before this was acknowledged.
    acked: u64,
    /// The highest line end ever handed to a socket.
    sent_max: u64,
    stats_sent: u64,
    connections: u64,
    resumed_from: Vec<u64>,
}

impl AckedServer {
    /// Listens on `config.addr`.
    pub fn bind(workload: &Workload, config: AckedConfig, precompute: Duration) -> Result<Self> {
        let bind_error = |source| Error::Bind {
            addr: config.addr,
            source,
        };
        let listener = TcpListener::bind(config.addr).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        // Accepts poll, so that the linger period can end.
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(Self {
            workload: workload.clone(),
            listener,
            addr,
            config,
            precompute,
        })
    }

    /// The `READY` announcement.
    pub fn ready(&self) -> Ready {
        Ready {
            addr: self.addr,
            lines: self.workload.spec().lines,
            words: self.workload.spec().words_per_line,
            bytes: None,
            precompute_s: self.precompute.as_secs_f64(),
        }
    }

    /// Serves until every line is acknowledged and no connection came for the linger
    /// period; or fails when the receiver lost acknowledged lines or broke the protocol.
    pub fn serve(self) -> Result<AckedStats> {
        let total = self.workload.spec().lines;
        let mut progress = Progress::default();
        loop {
            let deadline = (progress.acked >= total).then(|| Instant::now() + self.config.linger);
            let Some((socket, peer)) = self.accept(deadline)? else {
                break;
            };
            self.connection(socket, peer, &mut progress)?;
        }
        Ok(AckedStats {
            lines: total,
            acked_lines: progress.acked,
            sent_lines: progress.stats_sent,
            connections: progress.connections,
            resumed_from: progress.resumed_from,
        })
    }

    /// The next connection, or `None` once `deadline` passed.
    fn accept(&self, deadline: Option<Instant>) -> Result<Option<(TcpStream, SocketAddr)>> {
        loop {
            match self.listener.accept() {
                Ok((socket, peer)) => {
                    let setup = socket.set_nonblocking(false);
                    return setup
                        .map(|()| Some((socket, peer)))
                        .map_err(|source| Error::Accept {
                            addr: self.addr,
                            source,
                        });
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(Error::Accept {
                        addr: self.addr,
                        source,
                    });
                }
            }
        }
    }

    /// One connection: handshake, send, read acknowledgements until the receiver closes.
    fn connection(
        &self,
        mut socket: TcpStream,
        peer: SocketAddr,
        progress: &mut Progress,
    ) -> Result<()> {
        let total = self.workload.spec().lines;
        let mut buf = Vec::new();
        let from = match read_resume(&mut socket, &mut buf, self.config.handshake_timeout) {
            Ok(from) => from,
            Err(reason) => {
                // A stray or broken client is not the stream's problem: say no, go on.
                tracing::warn!(%peer, %reason, "refusing a connection");
                refuse(&mut socket, &reason);
                return Ok(());
            }
        };
        if from < progress.acked {
            let error = Error::AckedLinesLost {
                peer,
                resume_from: from,
                acked: progress.acked,
            };
            refuse(&mut socket, &error.to_string());
            return Err(error);
        }
        if from > progress.sent_max.max(progress.acked) || from > total {
            let error = Error::AckProtocol {
                peer,
                message: format!(
                    "asked to resume at line {from}, but only lines before {} were ever sent \
                     (of {total})",
                    progress.sent_max
                ),
            };
            refuse(&mut socket, &error.to_string());
            return Err(error);
        }
        progress.acked = from;
        progress.connections += 1;
        progress.resumed_from.push(from);
        tracing::info!(%peer, from, end = total, acked = progress.acked, "receiver resumes");

        let send_error = |source| Error::Send {
            peer,
            bytes_sent: 0,
            lines_sent: 0,
            source,
        };
        let mut header = Vec::new();
        ToReceiver::Header { from, end: total }.encode(&mut header);
        socket.write_all(&header).map_err(send_error)?;

        // Acknowledgements are read on their own thread while this one writes.
        let shared = Arc::new(Shared {
            acked: AtomicU64::new(from),
            sent_end: AtomicU64::new(from),
        });
        let reader = {
            let socket = socket.try_clone().map_err(send_error)?;
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || read_acks(socket, buf, peer, &shared))
        };
        let mut lines = from;
        let mut writing_failed = None;
        for chunk in self.workload.stream(from..total, self.config.stream) {
            // Announce the lines before writing them: an ack can come back before
            // `write_all` returns.
            shared.sent_end.store(chunk.lines().end, Ordering::SeqCst);
            if let Err(e) = socket.write_all(chunk.bytes()) {
                writing_failed = Some(e);
                break;
            }
            lines = chunk.lines().end;
            progress.stats_sent += chunk.line_count();
        }
        progress.sent_max = progress
            .sent_max
            .max(shared.sent_end.load(Ordering::SeqCst));
        match &writing_failed {
            // The receiver went away (killed, say): it resumes on its next connection.
            Some(e) => {
                tracing::info!(%peer, line = lines, error = %e, "connection lost while sending");
                let _ = socket.shutdown(Shutdown::Both);
            }
            None => {
                let _ = socket.shutdown(Shutdown::Write);
            }
        }
        let outcome = match reader.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        progress.acked = progress.acked.max(shared.acked.load(Ordering::SeqCst));
        tracing::info!(%peer, acked = progress.acked, "connection closed");
        outcome
    }
}

/// What the writing and the acknowledgement-reading threads share.
#[derive(Debug)]
struct Shared {
    acked: AtomicU64,
    /// One past the last line handed (or being handed) to the socket.
    sent_end: AtomicU64,
}

/// Reads the handshake: `Ok(from)`, or why the connection is refused.
fn read_resume(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> std::result::Result<u64, String> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 1024];
    loop {
        match ack::decode_to_sender(buf) {
            Ok(Some((ToSender::Resume { from }, used))) => {
                buf.drain(..used);
                return Ok(from);
            }
            Ok(Some((other, _))) => return Err(format!("expected RESUME first, got {other}")),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return Err(format!("no RESUME within {timeout:?}"));
        }
        match socket.read(&mut chunk) {
            Ok(0) => return Err("closed before the handshake".to_owned()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the handshake: {e}")),
        }
    }
}

/// Reads `ACK` lines until the receiver closes; an acknowledgement that cannot be true
/// fails the run (and closes the socket, so the writer stops).
fn read_acks(
    mut socket: TcpStream,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<()> {
    let _ = socket.set_read_timeout(None);
    let mut chunk = [0u8; 4096];
    let fail = |socket: &TcpStream, message: String| {
        let _ = socket.shutdown(Shutdown::Both);
        Err(Error::AckProtocol { peer, message })
    };
    loop {
        loop {
            match ack::decode_to_sender(&buf) {
                Ok(Some((ToSender::Ack { end }, used))) => {
                    buf.drain(..used);
                    let acked = shared.acked.load(Ordering::SeqCst);
                    let sent = shared.sent_end.load(Ordering::SeqCst);
                    if end < acked {
                        return fail(&socket, format!("acknowledged line {end} after {acked}"));
                    }
                    if end > sent {
                        return fail(
                            &socket,
                            format!("acknowledged lines up to {end}, only {sent} were sent"),
                        );
                    }
                    shared.acked.store(end, Ordering::SeqCst);
                }
                Ok(Some((other, _))) => {
                    return fail(&socket, format!("expected ACK, got {other}"));
                }
                Ok(None) => break,
                Err(e) => return fail(&socket, e.to_string()),
            }
        }
        match socket.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Closed or reset: a killed receiver looks like this; it resumes later.
            _ => return Ok(()),
        }
    }
}

fn refuse(socket: &mut TcpStream, reason: &str) {
    let mut line = Vec::new();
    ToReceiver::Refused {
        reason: reason.to_owned(),
    }
    .encode(&mut line);
    // Best effort: the refusal is also the server's error or log line.
    let _ = socket.write_all(&line);
    let _ = socket.shutdown(Shutdown::Both);
}
