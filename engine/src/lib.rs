//! Ember's engine: the `DStream` API, the micro-batch scheduler, sources and sinks.
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
pub mod error;
pub(crate) mod graph;
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
pub use error::{Error, Result};
pub use handler::{MemoryBlockHandler, ReceivedBlockHandler};
pub use metrics::{BatchInfo, OutputOperationInfo, ReceiverInfo, ReceiverState, StreamingListener};
pub use sink::TextRecord;
pub use source::{Receiver, ReceiverContext, SocketOptions};
pub use text::Str;
pub use time::BatchTime;
