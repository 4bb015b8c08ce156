//! The word-count workload: a deterministic stream of lines of Zipf-distributed words.
//!
//! This reproduces, bit for bit, the data Apache Spark Streaming was measured on
//! (`../shared/workload/README.md` in the project's shared folder; the Java reference is the
//! anchor's `LineGen.java`), so that Ember's figures compare with Spark's on identical input.
//!
//! # Definition
//!
//! ```text
//! PRNG    splitmix64, state initialised to the seed; all arithmetic mod 2^64:
//!           next():  state += 0x9E3779B97F4A7C15; z = state
//!                    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//!                    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//!                    return z ^ (z >> 31)
//!           below(b) = next() mod b;   unit() = (next() >> 11) * 2^-53
//! words   V words drawn first, rank r = 0..V-1: len = 3 + below(8), then len letters
//!         'a' + below(26); a word drawn before is drawn again for the same rank
//! Zipf    w[r] = 1 / (r+1)^s with fdlibm's pow (Java's StrictMath.pow); cdf[r] = running
//!         sum in rank order (f64); total = cdf[V-1]
//! a word  u = unit() * total; rank = the smallest r with cdf[r] > u, clamped to V-1
//! a line  K words joined by single spaces, then '\n'
//! counts  "word\tcount\n" for every word with count > 0, sorted by word in byte order
//! ```
//!
//! After the vocabulary, every word consumes exactly one draw, and splitmix64 is
//! counter-based (the k-th draw is a function of `seed + k * gamma`). So word `i` of the
//! stream (line `i / K`, position `i % K`) can be computed without the words before it:
//! [`Workload`] generates any range of lines directly, in parallel chunks, and counts words
//! without producing text. The definition is an infinite stream; a [`WorkloadSpec`]'s
//! `lines` says where a run of it ends.
//!
//! # Using it
//!
//! ```
//! use engine::workload::{StreamConfig, Workload, WorkloadSpec};
//!
//! let workload = Workload::new(WorkloadSpec::new(1_000, 10))?;
//! // The text of lines 0..3, and the expected word counts of the whole run.
//! let mut text = Vec::new();
//! workload.write_lines(0..3, &mut text);
//! assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 3);
//! let expected = workload.expected_counts(2);
//! assert_eq!(expected.total_words(), 10_000);
//! // All lines, generated ahead by background threads into a bounded number of chunks.
//! let bytes: usize = workload
//!     .stream(0..1_000, StreamConfig::default())
//!     .map(|chunk| chunk.bytes().len())
//!     .sum();
//! assert_eq!(bytes as u64, expected.text_bytes());
//! # Ok::<(), engine::workload::Error>(())
//! ```
//!
//! [`serve`] puts the lines on a TCP connection the way the baseline's generator does, and
//! [`process`] runs that server as a child process (`ember gen`).

pub mod acked;
mod counts;
pub mod process;
mod rng;
pub mod serve;
mod stream;
mod vocabulary;
mod zipf;

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::counts::{CountsMismatch, ExpectedCounts};
use self::rng::{GAMMA, SplitMix64, mix};
pub use self::stream::{LineChunk, LineStream, Pregenerated, StreamConfig};
use self::vocabulary::Vocabulary;
use self::zipf::ZipfSampler;

/// The default seed (the baseline's).
pub const DEFAULT_SEED: u64 = 42;
/// The default number of distinct words.
pub const DEFAULT_VOCAB_SIZE: u32 = 10_000;
/// The default Zipf exponent.
pub const DEFAULT_ZIPF_S: f64 = 1.0;
/// The default number of words per line.
pub const DEFAULT_WORDS_PER_LINE: u32 = 10;
/// The largest vocabulary accepted. Drawing it takes about a second and a few hundred MB.
pub const VOCAB_SIZE_MAX: u32 = 10_000_000;

/// Errors of the workload generator and its server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter of the workload is out of range.
    #[error("invalid workload parameter --{parameter}: {reason}")]
    InvalidSpec {
        /// The parameter's command-line name (`lines`, `words`, `vocab`, `zipf-s`).
        parameter: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not listen on its address.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Accepting the client's connection failed.
    #[error("accepting a connection on {addr}")]
    Accept {
        /// The listening address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Sending to the client failed (it closed the connection early, or the network did).
    #[error("sending to {peer} failed after {bytes_sent} bytes ({lines_sent} whole lines)")]
    Send {
        /// The client.
        peer: SocketAddr,
        /// Bytes handed to the socket before the failure.
        bytes_sent: u64,
        /// Lines whose last byte was handed to the socket before the failure.
        lines_sent: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing a file (expected counts, a dump of the lines) failed.
    #[error("writing {}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A receiver asked to resume before a line it had acknowledged: acknowledged data was
    /// lost (see [`acked`]).
    #[error(
        "acknowledged lines were lost: receiver {peer} asked to resume at line {resume_from}, \
         but it had acknowledged every line before {acked}"
    )]
    AckedLinesLost {
        /// The receiver.
        peer: SocketAddr,
        /// Where it asked to resume.
        resume_from: u64,
        /// Where its acknowledgements had reached.
        acked: u64,
    },
    /// A receiver broke the acknowledged protocol in a way that makes its acknowledgements
    /// untrustworthy (see [`acked`]).
    #[error("acknowledged protocol violated by receiver {peer}: {message}")]
    AckProtocol {
        /// The receiver.
        peer: SocketAddr,
        /// What it did.
        message: String,
    },
    /// A generator child process misbehaved (see [`process`]).
    #[error("generator process: {reason}")]
    Process {
        /// What went wrong, with the process's exit status when it has exited.
        reason: String,
        /// The I/O error behind it, if any.
        #[source]
        source: Option<io::Error>,
    },
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The parameters of a workload: which lines, and how many of them a run serves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Lines in a run (`N`).
    pub lines: u64,
    /// Words per line (`K`), at least 1.
    pub words_per_line: u32,
    /// The PRNG seed.
    pub seed: u64,
    /// Distinct words (`V`), 1 to [`VOCAB_SIZE_MAX`].
    pub vocab_size: u32,
    /// The Zipf exponent `s` (finite; weights `1 / (r+1)^s`).
    pub zipf_s: f64,
}

impl WorkloadSpec {
    /// `lines` lines of `words_per_line` words, with the default seed, vocabulary and
    /// exponent.
    pub fn new(lines: u64, words_per_line: u32) -> Self {
        Self {
            lines,
            words_per_line,
            seed: DEFAULT_SEED,
            vocab_size: DEFAULT_VOCAB_SIZE,
            zipf_s: DEFAULT_ZIPF_S,
        }
    }

    /// The same spec with another seed.
    pub fn with_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// The same spec with another vocabulary size.
    pub fn with_vocab_size(self, vocab_size: u32) -> Self {
        Self { vocab_size, ..self }
    }

    /// The same spec with another Zipf exponent.
    pub fn with_zipf_s(self, zipf_s: f64) -> Self {
        Self { zipf_s, ..self }
    }

    /// Total words in a run, `lines * words_per_line`, if it fits in a `u64`.
    pub fn total_words(&self) -> Option<u64> {
        self.lines.checked_mul(u64::from(self.words_per_line))
    }

    /// The `ember gen` flags that select this workload (`--lines N --words K --seed S
    /// --vocab V --zipf-s X`), for starting a generator process.
    pub fn to_gen_args(&self) -> Vec<String> {
        vec![
            "--lines".into(),
            self.lines.to_string(),
            "--words".into(),
            self.words_per_line.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--vocab".into(),
            self.vocab_size.to_string(),
            // `{:?}` prints the shortest representation that parses back to the same f64.
            "--zipf-s".into(),
            format!("{:?}", self.zipf_s),
        ]
    }

    fn validate(&self) -> Result<()> {
        let invalid = |parameter, reason: String| Err(Error::InvalidSpec { parameter, reason });
        if self.words_per_line == 0 {
            return invalid("words", "a line needs at least one word".into());
        }
        if self.vocab_size == 0 || self.vocab_size > VOCAB_SIZE_MAX {
            return invalid(
                "vocab",
                format!(
                    "{} words is out of range (1 to {VOCAB_SIZE_MAX})",
                    self.vocab_size
                ),
            );
        }
        if !self.zipf_s.is_finite() {
            return invalid("zipf-s", format!("{} is not a finite number", self.zipf_s));
        }
        if self.total_words().is_none() {
            return invalid(
                "lines",
                format!(
                    "{} lines of {} words overflow a 64-bit word count",
                    self.lines, self.words_per_line
                ),
            );
        }
        Ok(())
    }
}

/// A workload ready to generate: the vocabulary drawn and the Zipf table built.
///
/// Cheap to clone (the tables are shared), and `Send + Sync`, so threads can each generate
/// their own range of lines.
#[derive(Debug, Clone)]
pub struct Workload {
    model: Arc<Model>,
}

#[derive(Debug)]
struct Model {
    spec: WorkloadSpec,
    vocabulary: Vocabulary,
    sampler: ZipfSampler,
    /// The PRNG state once the vocabulary is drawn: word `i` of the stream is drawn by
    /// `mix(words_base_state + (i + 1) * GAMMA)`.
    words_base_state: u64,
    /// Expected bytes per line under the Zipf distribution, for sizing buffers.
    mean_line_bytes: f64,
}

impl Workload {
    /// Draws the vocabulary and builds the tables for `spec`, after checking its parameters.
    pub fn new(spec: WorkloadSpec) -> Result<Self> {
        spec.validate()?;
        let mut rng = SplitMix64::new(spec.seed);
        let vocab_size = spec.vocab_size as usize;
        let vocabulary = Vocabulary::draw(&mut rng, vocab_size);
        let sampler = ZipfSampler::new(vocab_size, spec.zipf_s)?;
        let mean_word_bytes: f64 = (0..vocab_size)
            .map(|r| sampler.probability(r) * vocabulary.slots()[r].word_and_space().len() as f64)
            .sum();
        Ok(Self {
            model: Arc::new(Model {
                spec,
                words_base_state: rng.state(),
                mean_line_bytes: mean_word_bytes * f64::from(spec.words_per_line),
                vocabulary,
                sampler,
            }),
        })
    }

    /// The parameters.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.model.spec
    }

    /// The word of Zipf rank `rank` (0 is the most frequent), if `rank < vocab_size`.
    pub fn word(&self, rank: u32) -> Option<&str> {
        let slot = self.model.vocabulary.slots().get(rank as usize)?;
        Some(word_str(slot.word()))
    }

    /// All words, by rank.
    pub fn words(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.model
            .vocabulary
            .slots()
            .iter()
            .map(|slot| word_str(slot.word()))
    }

    /// How many candidate words were drawn again while drawing the vocabulary because they
    /// had been drawn before (the definition's "draw again for the same rank").
    pub fn vocabulary_redraws(&self) -> u64 {
        self.model.vocabulary.redraws()
    }

    /// The expected size of a line in bytes, including its `\n` (from the Zipf
    /// probabilities, not from generated data).
    pub fn mean_line_bytes(&self) -> f64 {
        self.model.mean_line_bytes
    }

    /// The rank of word `index` of the stream (word `index % K` of line `index / K`).
    pub fn rank_at(&self, index: u64) -> u32 {
        let m = &*self.model;
        m.sampler
            .rank(mix(m.draw_state_before(index).wrapping_add(GAMMA)))
    }

    /// Appends the text of `lines` (each `K` words and a `\n`) to `out`.
    ///
    /// Line numbers count from 0. Lines at or past [`WorkloadSpec::lines`] continue the
    /// same stream; nothing limits a range to a run's length.
    pub fn write_lines(&self, lines: Range<u64>, out: &mut Vec<u8>) {
        let m = &*self.model;
        let k = m.spec.words_per_line;
        let count = lines.end.saturating_sub(lines.start);
        out.reserve(m.capacity_for(count));
        let mut state = m.draw_state_before(lines.start.wrapping_mul(u64::from(k)));
        let line_bytes_max = k as usize * vocabulary::SLOT_BYTES;
        for _ in 0..count {
            // Copy whole fixed-size slots into a zeroed tail and advance by the word's real
            // length: fixed-size copies compile to a vector move each, where a variable-length
            // copy is a call to memcpy.
            let start = out.len();
            out.resize(start + line_bytes_max, 0);
            let mut pos = start;
            for _ in 0..k {
                state = state.wrapping_add(GAMMA);
                let slot = m.vocabulary.slot(m.sampler.rank(mix(state)));
                out[pos..pos + vocabulary::SLOT_BYTES].copy_from_slice(slot.padded());
                pos += slot.advance();
            }
            // K >= 1, so the line ends in the space after its last word.
            out.truncate(pos);
            out[pos - 1] = b'\n';
        }
    }

    /// Counts how often each rank occurs in `lines`, without producing text, on up to
    /// `threads` threads. The result has one entry per rank.
    pub fn rank_counts(&self, lines: Range<u64>, threads: usize) -> Vec<u64> {
        let k = u64::from(self.model.spec.words_per_line);
        let first = lines.start.wrapping_mul(k);
        let words = lines.end.saturating_sub(lines.start).saturating_mul(k);
        let vocab = self.model.vocabulary.len();
        // Below this, a thread costs more than it saves.
        const WORDS_PER_THREAD_MIN: u64 = 1 << 20;
        let threads = (threads.max(1) as u64)
            .min(words / WORDS_PER_THREAD_MIN)
            .max(1);
        if threads == 1 {
            let mut counts = vec![0; vocab];
            self.model.add_rank_counts(first, words, &mut counts);
            return counts;
        }
        let per_thread = words.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let start = t * per_thread;
                    let len = per_thread.min(words - start.min(words));
                    scope.spawn(move || {
                        let mut counts = vec![0; vocab];
                        self.model
                            .add_rank_counts(first.wrapping_add(start), len, &mut counts);
                        counts
                    })
                })
                .collect();
            let mut total = vec![0; vocab];
            for handle in handles {
                // A panic in a counting thread is a bug; re-raise it here.
                let counts = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                for (sum, c) in total.iter_mut().zip(counts) {
                    *sum += c;
                }
            }
            total
        })
    }

    /// The expected word counts of a whole run (lines `0..N`), computed on up to `threads`
    /// threads.
    pub fn expected_counts(&self, threads: usize) -> ExpectedCounts {
        let counts = self.rank_counts(0..self.model.spec.lines, threads);
        ExpectedCounts::from_rank_counts(self, &counts)
    }

    /// The lines of `lines`, generated ahead by background threads in chunks, in order; the
    /// memory held is bounded by `config` (see [`StreamConfig`]).
    pub fn stream(&self, lines: Range<u64>, config: StreamConfig) -> LineStream {
        LineStream::new(self.clone(), lines, config)
    }

    /// All lines of a run (`0..N`) generated into memory, in parallel.
    pub fn pregenerate(&self, config: StreamConfig) -> Pregenerated {
        Pregenerated::generate(self, config)
    }
}

impl Model {
    /// The PRNG state after `index` words of the stream: the next draw is word `index`'s.
    #[inline]
    fn draw_state_before(&self, index: u64) -> u64 {
        self.words_base_state
            .wrapping_add(GAMMA.wrapping_mul(index))
    }

    /// A buffer capacity for `lines` lines: the expected size plus a margin, so that a
    /// chunk rarely has to grow (and copy) while it is written.
    fn capacity_for(&self, lines: u64) -> usize {
        let bytes = lines as f64 * self.mean_line_bytes;
        (bytes * 1.02 + 1024.0).min(isize::MAX as f64) as usize
    }

    fn add_rank_counts(&self, first_word: u64, words: u64, counts: &mut [u64]) {
        let mut state = self.draw_state_before(first_word);
        for _ in 0..words {
            state = state.wrapping_add(GAMMA);
            counts[self.sampler.rank(mix(state)) as usize] += 1;
        }
    }
}

/// Words are made of the letters `a` to `z` only.
fn word_str(word: &[u8]) -> &str {
    // The vocabulary draws ASCII letters, so this never fails; an empty string would make a
    // bug visible without panicking.
    std::str::from_utf8(word).unwrap_or_default()
}

/// The number of threads to use when the caller has no opinion: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
