//! Per-batch and per-receiver metrics, and the listener trait.
//!
//! The definitions are Spark's (`BatchInfo`): a batch is *submitted* when it is generated
//! at its batch time (its allocation recorded); its *scheduling delay* is the time from
//! submission to the start of its processing (the wait behind earlier batches); its
//! *processing delay* is the time from the start of its first job to the end of its last;
//! the *total delay* is their sum. Every completed batch also logs one line.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::block::StreamId;
use crate::time::BatchTime;

/// What happened to one batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchInfo {
    /// The batch.
    pub batch_time: BatchTime,
    /// Records per input stream.
    pub stream_records: BTreeMap<StreamId, u64>,
    /// When the batch was generated (epoch ms).
    pub submission_time_ms: u64,
    /// When its first job started.
    pub processing_start_ms: Option<u64>,
    /// When its last job ended.
    pub processing_end_ms: Option<u64>,
    /// The output operations, in the order they ran.
    pub output_operations: Vec<OutputOperationInfo>,
    /// Blocks allocated to the batch that could not be read (ignore mode: counted, skipped).
    pub lost_blocks: u64,
    /// The records of those blocks.
    pub lost_records: u64,
    /// Why the batch failed, if it did.
    pub failure: Option<String>,
}

impl BatchInfo {
    /// The number of input records (Spark's `numRecords`).
    pub fn records(&self) -> u64 {
        self.stream_records.values().sum()
    }

    /// Processing start minus submission.
    pub fn scheduling_delay_ms(&self) -> Option<u64> {
        self.processing_start_ms
            .map(|s| s.saturating_sub(self.submission_time_ms))
    }

    /// Processing end minus processing start.
    pub fn processing_delay_ms(&self) -> Option<u64> {
        Some(
            self.processing_end_ms?
                .saturating_sub(self.processing_start_ms?),
        )
    }

    /// Scheduling delay plus processing delay.
    pub fn total_delay_ms(&self) -> Option<u64> {
        Some(self.scheduling_delay_ms()? + self.processing_delay_ms()?)
    }
}

/// One output operation's job in one batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputOperationInfo {
    /// Its index in definition order.
    pub id: usize,
    /// `kind#operator id`.
    pub name: String,
    /// Start (epoch ms).
    pub start_ms: u64,
    /// End (epoch ms).
    pub end_ms: u64,
    /// The error, if it failed.
    pub failure: Option<String>,
}

/// What a receiver is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiverState {
    /// Not started yet.
    Starting,
    /// Connecting (attempt counts from 1).
    Connecting {
        /// The address.
        address: String,
        /// Which attempt in a row.
        attempt: u32,
    },
    /// Connected and receiving.
    Receiving {
        /// The source (address, directory, ...).
        source: String,
    },
    /// Lost its source, or its source ended; retries after a back-off.
    Backoff {
        /// The failed attempts in a row.
        attempt: u32,
        /// When it retries.
        retry_in_ms: u64,
        /// Why the last attempt or connection ended.
        reason: String,
        /// The source ended its stream cleanly (the sender closed the connection) and no
        /// connection succeeded since: the receiver is reconnecting in case the source comes
        /// back. Neither that end nor these attempts are errors (see
        /// [`ReceiverInfo::errors`]); a receiver that gives up (`reconnect_attempts_max`)
        /// still fails.
        #[serde(default)]
        after_end_of_stream: bool,
    },
    /// Stopped (normally).
    Stopped,
    /// Stopped with an error.
    Failed {
        /// The error.
        error: String,
    },
}

impl fmt::Display for ReceiverState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiverState::Starting => write!(f, "starting"),
            ReceiverState::Connecting { address, attempt } => {
                write!(f, "connecting to {address} (attempt {attempt})")
            }
            ReceiverState::Receiving { source } => write!(f, "receiving from {source}"),
            ReceiverState::Backoff {
                attempt,
                retry_in_ms,
                reason,
                after_end_of_stream: false,
            } => {
                write!(
                    f,
                    "{reason}; retrying in {retry_in_ms} ms (failed attempts: {attempt})"
                )
            }
            ReceiverState::Backoff {
                attempt,
                retry_in_ms,
                reason,
                after_end_of_stream: true,
            } => {
                write!(
                    f,
                    "{reason}; the source ended its stream, reconnecting in {retry_in_ms} ms \
                     (attempts since: {attempt})"
                )
            }
            ReceiverState::Stopped => write!(f, "stopped"),
            ReceiverState::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// A receiver's counters and state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverInfo {
    /// Its stream.
    pub stream: StreamId,
    /// The stream's name.
    pub name: String,
    /// What it is doing.
    pub state: ReceiverState,
    /// Records stored.
    pub records: u64,
    /// Blocks stored.
    pub blocks: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Records dropped as invalid (e.g. lines that are not UTF-8, with the Skip policy).
    pub invalid_records: u64,
    /// The current rate limit, records per second (`None`: unlimited).
    pub rate_limit_records_per_sec: Option<u64>,
    /// Errors: connections lost or refused, failed attempts, and a failure of the receiver
    /// (each [`ReceiverState::Backoff`] not `after_end_of_stream`, and [`ReceiverState::Failed`]).
    /// A clean end of stream and the reconnect attempts after it are not errors.
    #[serde(default)]
    pub errors: u64,
    /// Times the source ended its stream cleanly (a socket source: the sender closed the
    /// connection).
    #[serde(default)]
    pub ends_of_stream: u64,
}

/// Receives the context's events (Spark's `StreamingListener`). Batch events are delivered
/// on the job thread, after the batch and before the next one starts; receiver events on
/// the receiver's task. Keep the work short.
pub trait StreamingListener: Send + Sync + 'static {
    /// A batch was generated (its allocation recorded).
    fn on_batch_submitted(&self, _batch: &BatchInfo) {}
    /// A batch's first job is about to start.
    fn on_batch_started(&self, _batch: &BatchInfo) {}
    /// A batch finished (or failed: see [`BatchInfo::failure`]).
    fn on_batch_completed(&self, _batch: &BatchInfo) {}
    /// An output operation's job finished.
    fn on_output_operation_completed(&self, _batch_time: BatchTime, _op: &OutputOperationInfo) {}
    /// A receiver changed state.
    fn on_receiver_state(&self, _receiver: &ReceiverInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_sparks() {
        let b = BatchInfo {
            batch_time: BatchTime::from_millis(1_000),
            stream_records: [(StreamId(0), 7), (StreamId(1), 3)].into(),
            submission_time_ms: 1_002,
            processing_start_ms: Some(1_010),
            processing_end_ms: Some(1_110),
            output_operations: vec![],
            lost_blocks: 0,
            lost_records: 0,
            failure: None,
        };
        assert_eq!(b.records(), 10);
        assert_eq!(b.scheduling_delay_ms(), Some(8));
        assert_eq!(b.processing_delay_ms(), Some(100));
        assert_eq!(b.total_delay_ms(), Some(108));
    }
}
