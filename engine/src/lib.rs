//! Ember's engine: the `DStream` API, the micro-batch scheduler, sources and sinks.
//!
//! A pipeline is a static graph of deterministic transformations, written in Rust against
//! [`DStream`]s. A [`StreamingContext`] cuts the input into batches on a fixed time grid and
//! runs one instance of the graph per batch, in parallel over partitions. If you know Spark
//! Streaming, you know the model; the names are the same, in Rust's spelling.
//!
//! # A tour
//!
//! ```no_run
//! use std::time::Duration;
//! use engine::{Config, StreamingContext};
//!
//! # fn main() -> engine::Result<()> {
//! // 1. A context: the batch interval and every limit live in one validated Config.
//! let ctx = StreamingContext::new(Config::new(Duration::from_secs(1)))?;
//!
//! // 2. Input streams: lines over TCP (also: a directory, a queue, a custom Receiver).
//! let lines = ctx.socket_text_stream("127.0.0.1:9999")?;
//!
//! // 3. Transformations build a graph; nothing runs yet.
//! let counts = lines
//!     .flat_map(|line| line.split(' '))          // Str::split: owned pieces, no allocation
//!     .map(|word| (word, 1u64))
//!     .reduce_by_key(|a, b| a + b);              // map-side combine, hash partitioned
//! let totals = counts.update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
//!     Some(total.unwrap_or(0) + new.iter().sum::<u64>())
//! });
//! let hot = counts.reduce_by_key_and_window(|a, b| a + b, Duration::from_secs(30), Duration::from_secs(10))?;
//!
//! // 4. Output operations: one job per output per batch, in definition order.
//! totals.print(10);
//! hot.save_as_text_files("/tmp/hot-words", "tsv");  // hot-words-<batch ms>.tsv/part-00000...
//! totals.foreach_batch(|data, time| {
//!     let words = data.len();
//!     eprintln!("{time}: {words} distinct words so far");
//! });
//!
//! // 5. Run: SIGINT/SIGTERM stop gracefully (everything received is processed first).
//! ctx.stop_on_signals()?;
//! ctx.start()?;
//! ctx.await_termination()
//! # }
//! ```
//!
//! Errors a graph can show when it is built (a window that is not a multiple of the batch
//! interval, streams of different slides joined) come back from the operator or from
//! [`StreamingContext::start`], with the operator named. Every error is one [`Error`] whose
//! variants carry the stream, batch time, path, address or setting involved.
//!
//! # How a batch runs
//!
//! - Receivers cut their input into [`Block`]s (every `block_interval_ms`, or at
//!   `block_size_max_bytes`) and store each through the stream's
//!   [`ReceivedBlockHandler`] before acknowledging the source.
//! - Narrow operators (`map`, `flat_map`, `filter`, `map_partitions`, `union`) are fused
//!   into one pass per unit of input. Where a chain over an input ends in a shuffle (a key
//!   operator) or an output, that pass, including the map-side combine into hash maps,
//!   runs on the worker pool *as each block arrives*. For key operators the block's map is
//!   folded at once, in block-id order, into the per-partition maps of the batch the block
//!   will be allocated to: neither a batch's raw text nor its blocks' maps wait in memory for
//!   the batch time, so memory depends on the limits, not on the input rate.
//! - At each batch time the [`scheduler`] allocates the blocks received since the last one
//!   to the batch; the batch merges the cached per-block results in block-id order (or
//!   recomputes any that are missing from the block's bytes, read back from the handler),
//!   in parallel over partitions, then runs the output operations.
//! - Everything that decides a result is deterministic: stable hashing ([`hash`]) for
//!   partitions and maps, merges in block-id order, state in insertion-ordered maps. A batch
//!   re-run over the same blocks writes byte-identical output.
//!
//! # Durability seams
//!
//! The engine keeps received data in memory (the *ignore* mode: a block lost before its
//! batch ran is counted in [`BatchInfo::lost_blocks`], never silent). The durability modes
//! plug in without changing the engine:
//! - a [`ReceivedBlockHandler`] per stream (store, read back, forget);
//! - a [`MetadataLog`] that records block additions, batch allocations (before the batch
//!   runs), completions and cleanups, in the order the [`scheduler`] decided them;
//! - [`StreamingContext::start_from`] with a [`Restore`]: the original grid, pending batches
//!   (re-run first, at their original times), unallocated blocks, block sequence numbers and
//!   [`StateSnapshot`]s (taken between batches by [`StreamingContext::state_snapshot`]);
//! - [`StreamingContext::describe_graph`]: operator ids derived from the graph's shape, to
//!   check that a checkpoint fits the code restarting from it.
//!
//! # Limits
//!
//! Memory is bounded by [`Config`], never by the input: receiver queues, blocks retained,
//! block sizes. When a limit is reached the receiver stops reading and TCP flow control
//! slows the sender; a rate limit and a PID rate estimator (backpressure) pace receivers.
//! Per-batch metrics follow Spark's definitions ([`metrics`]); a [`StreamingListener`]
//! receives them, and every batch logs one line.
#![forbid(unsafe_code)]
// DStream signatures spell out their record types, as Spark's do: a `DStream<(K, (V, Option<W>))>`
// says more than an alias would.
#![allow(clippy::type_complexity)]

pub mod block;
pub mod clock;
pub mod config;
pub mod context;
pub(crate) mod driver;
pub mod dstream;
pub mod durability;
pub mod error;
pub mod graph;
pub mod handler;
pub mod hash;
pub mod metrics;
pub mod rate;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod text;
pub mod time;
pub mod workload;

pub use block::{Block, BlockCodec, BlockId, LinesCodec, PostcardCodec, StoredBlock, StreamId};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, InvalidUtf8Policy};
pub use context::{MetadataLog, Restore, StopHandle, StreamingContext};
pub use dstream::{BatchData, DStream, Data, Key, OperatorId, State, StateSnapshot, StateSpec};
pub use durability::{Durability, DurabilityConfig, RestartPlan};
pub use error::{Error, Result};
pub use handler::{MemoryBlockHandler, ReceivedBlockHandler};
pub use metrics::{BatchInfo, OutputOperationInfo, ReceiverInfo, ReceiverState, StreamingListener};
pub use sink::TextRecord;
pub use source::{Receiver, ReceiverContext, SocketOptions};
pub use text::Str;
pub use time::BatchTime;
