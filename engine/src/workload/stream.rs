//! Lines in chunks: generated ahead by background threads (bounded), or all into memory.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::{Workload, default_threads};

/// A run of consecutive lines of the workload, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineChunk {
    first_line: u64,
    line_count: u64,
    bytes: Vec<u8>,
}

impl LineChunk {
    /// The number of the chunk's first line (lines count from 0).
    pub fn first_line(&self) -> u64 {
        self.first_line
    }

    /// How many lines the chunk holds.
    pub fn line_count(&self) -> u64 {
        self.line_count
    }

    /// The line numbers the chunk holds.
    pub fn lines(&self) -> Range<u64> {
        self.first_line..self.first_line + self.line_count
    }

    /// The text: `line_count` lines, each ending in `\n`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The text, by value (no copy).
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// How lines are generated in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Lines per chunk (at least 1). The default, 16,384, is about 1.2 MB at 10 words a line.
    pub lines_per_chunk: u64,
    /// Generating threads (at least 1). Default: the machine's parallelism.
    pub threads: usize,
    /// Finished chunks each thread may hold before the consumer takes them (at least 1).
    pub chunks_ahead_per_thread: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            lines_per_chunk: 16_384,
            threads: default_threads(),
            chunks_ahead_per_thread: 2,
        }
    }
}

impl StreamConfig {
    /// The most chunks a [`LineStream`] holds at once: each thread's queue, the chunk each
    /// thread is writing, and the one the consumer has. Memory is this many times the chunk
    /// size, whatever the number of lines.
    pub fn chunks_in_memory_max(&self) -> usize {
        self.threads() * (self.chunks_ahead() + 1) + 1
    }

    fn threads(&self) -> usize {
        self.threads.max(1)
    }

    fn chunks_ahead(&self) -> usize {
        self.chunks_ahead_per_thread.max(1)
    }

    fn lines_per_chunk(&self) -> u64 {
        self.lines_per_chunk.max(1)
    }
}

/// An iterator over the chunks of a range of lines, in order, generated ahead by background
/// threads with bounded memory (see [`StreamConfig::chunks_in_memory_max`]).
///
/// Thread `t` of `T` generates chunks `t, t + T, t + 2T, ...` into its own bounded queue,
/// and the iterator takes from the queues in turn, so order needs no reordering buffer.
/// Dropping the iterator early stops the threads.
#[derive(Debug)]
pub struct LineStream {
    /// One queue per worker; `None` once the stream is finished or dropped.
    queues: Vec<Receiver<LineChunk>>,
    workers: Vec<Option<JoinHandle<()>>>,
    next_chunk: u64,
    chunks: u64,
}

impl LineStream {
    pub(crate) fn new(workload: Workload, lines: Range<u64>, config: StreamConfig) -> Self {
        let per_chunk = config.lines_per_chunk();
        let line_count = lines.end.saturating_sub(lines.start);
        let chunks = line_count.div_ceil(per_chunk);
        let threads = (config.threads() as u64).min(chunks).max(1);
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for t in 0..threads {
            let (tx, rx) = mpsc::sync_channel(config.chunks_ahead());
            let workload = workload.clone();
            let lines = lines.clone();
            workers.push(Some(std::thread::spawn(move || {
                generate_every_nth(&workload, lines, per_chunk, t, threads, &tx);
            })));
            queues.push(rx);
        }
        Self {
            queues,
            workers,
            next_chunk: 0,
            chunks,
        }
    }
}

/// Worker `t` of `threads`: chunks `t`, `t + threads`, ... of `lines`, until done or the
/// consumer is gone.
fn generate_every_nth(
    workload: &Workload,
    lines: Range<u64>,
    per_chunk: u64,
    t: u64,
    threads: u64,
    tx: &SyncSender<LineChunk>,
) {
    let mut chunk = t;
    loop {
        let first = lines.start.saturating_add(chunk.saturating_mul(per_chunk));
        if first >= lines.end {
            return;
        }
        let last = first.saturating_add(per_chunk).min(lines.end);
        let mut bytes = Vec::new();
        workload.write_lines(first..last, &mut bytes);
        let chunk_data = LineChunk {
            first_line: first,
            line_count: last - first,
            bytes,
        };
        if tx.send(chunk_data).is_err() {
            return; // The stream was dropped.
        }
        chunk += threads;
    }
}

impl Iterator for LineStream {
    type Item = LineChunk;

    fn next(&mut self) -> Option<LineChunk> {
        if self.next_chunk >= self.chunks {
            return None;
        }
        let worker = (self.next_chunk % self.queues.len() as u64) as usize;
        match self.queues[worker].recv() {
            Ok(chunk) => {
                self.next_chunk += 1;
                Some(chunk)
            }
            Err(_) => {
                // The worker hung up before its last chunk: it panicked. That is a bug;
                // re-raise its panic here rather than end the stream short.
                if let Some(Err(panic)) = self.workers[worker].take().map(JoinHandle::join) {
                    std::panic::resume_unwind(panic);
                }
                unreachable!("workload stream worker {worker} stopped early without panicking")
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.chunks - self.next_chunk).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        // Closing the queues makes a worker blocked in `send` return; then wait for them.
        self.queues.clear();
        for worker in self.workers.iter_mut().filter_map(Option::take) {
            // A worker's panic was already re-raised by `next`, or is irrelevant now.
            let _ = worker.join();
        }
    }
}

/// All lines of a run, in memory, as the baseline's generator holds them before it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pregenerated {
    chunks: Vec<LineChunk>,
    lines: u64,
    bytes: u64,
}

impl Pregenerated {
    pub(crate) fn generate(workload: &Workload, config: StreamConfig) -> Self {
        let chunks: Vec<LineChunk> = workload.stream(0..workload.spec().lines, config).collect();
        let lines = chunks.iter().map(LineChunk::line_count).sum();
        let bytes = chunks.iter().map(|c| c.bytes().len() as u64).sum();
        Self {
            chunks,
            lines,
            bytes,
        }
    }

    /// The chunks, in line order.
    pub fn chunks(&self) -> &[LineChunk] {
        &self.chunks
    }

    /// The number of lines.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The size of the text in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
