//! Every limit of the engine, in one validated place, with units in the names.
//!
//! Memory is bounded by these limits and never by the input: a receiver holds at most
//! `receiver_queue_blocks_max` blocks awaiting their block stages and at most
//! `blocks_retained_max` blocks (or their derived results) not yet cleaned up, each at most
//! `block_size_max_bytes` long. When a limit is reached the receiver stops reading, and TCP
//! flow control pushes back on the sender.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::millis;

/// What a text source does with a line that is not valid UTF-8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvalidUtf8Policy {
    /// Drop the line, count it in the receiver's `invalid_records` and log it.
    #[default]
    Skip,
    /// Stop the receiver with [`Error::InvalidUtf8`] (naming the stream, origin and line).
    Fail,
}

/// The engine's configuration (see the module docs). Build it with [`Config::new`], change
/// fields as needed; [`Config::validate`] runs when the context is created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Config {
    /// The batch interval: batches are cut on a grid of this period.
    pub batch_interval_ms: u64,
    /// A receiver cuts the records it has received into a block at least this often
    /// (Spark's `spark.streaming.blockInterval`, 200 ms).
    pub block_interval_ms: u64,
    /// ... and whenever a block reaches this size.
    pub block_size_max_bytes: usize,
    /// The number of partitions of key operations (hash partitioning); default: cores.
    pub partitions: usize,
    /// Worker threads for block stages and per-partition work; default: cores.
    pub worker_threads: usize,
    /// Per receiver: blocks stored but not yet through their block stages, or not yet
    /// assigned to their batch by the driver (default: one per worker, at least 2). When
    /// full, the receiver waits (and stops reading its source). This bounds the block
    /// buffers in flight and the per-block results waiting to be folded into their batch.
    pub receiver_queue_blocks_max: usize,
    /// Per input stream: blocks received and not yet cleaned up (their derived results are
    /// held until then). When full, the receiver waits for batches to complete.
    pub blocks_retained_max: usize,
    /// Per receiver: the most records per second it stores; `None` for no limit
    /// (Spark's `spark.streaming.receiver.maxRate`).
    pub receiver_max_rate_records_per_sec: Option<u64>,
    /// Adapt each receiver's rate to the processing rate with a PID estimator
    /// (Spark's `spark.streaming.backpressure.enabled`; off by default, as in Spark).
    pub backpressure_enabled: bool,
    /// The rate before the estimator has seen a batch (`None`: unlimited).
    pub backpressure_initial_rate_records_per_sec: Option<u64>,
    /// The estimator never goes below this rate.
    pub backpressure_min_rate_records_per_sec: u64,
    /// PID gains (Spark's defaults: 1.0, 0.2, 0.0).
    pub backpressure_pid_proportional: f64,
    /// See `backpressure_pid_proportional`.
    pub backpressure_pid_integral: f64,
    /// See `backpressure_pid_proportional`.
    pub backpressure_pid_derivative: f64,
    /// A socket source that loses its connection waits this long before the first retry...
    pub reconnect_backoff_initial_ms: u64,
    /// ... doubling each time up to this.
    pub reconnect_backoff_max_ms: u64,
    /// Give up (and fail the receiver) after this many failed attempts in a row; `None` to
    /// retry for ever.
    pub reconnect_attempts_max: Option<u32>,
    /// What text sources do with invalid UTF-8.
    pub invalid_utf8: InvalidUtf8Policy,
    /// A graceful stop that has not finished after this long becomes an immediate one;
    /// `None`: ten batch intervals (Spark's default).
    pub graceful_stop_timeout_ms: Option<u64>,
    /// Bytes a socket receiver asks for per read.
    pub socket_read_chunk_bytes: usize,
    /// The directory source ignores files older than this (Spark's
    /// `spark.streaming.fileStream.minRememberDuration`, 60 s).
    pub file_stream_remember_ms: u64,
    /// Completed batches whose metrics the context keeps for [`crate::StreamingContext::batches`].
    pub metrics_batches_retained_max: usize,
    /// Most batches generated but not yet run. The catch-up cap: after a restart (or when
    /// processing falls behind) missed grid points are generated only as fast as batches
    /// complete, so a long outage does not queue thousands of batches at once; blocks
    /// received meanwhile go to the next batch generated. Default 8.
    pub batches_queued_max: usize,
    /// Direct inputs that can (the Kafka source): planned blocks read ahead of their batch
    /// at once, each by its own prefetch thread, which then runs the block's stages (the
    /// map-side combine) on it, so that fetching overlaps counting and earlier batches.
    /// Each prefetch holds one block's bytes until its stages have run, so this bounds the
    /// memory of read-ahead (in blocks; a Kafka block is one partition's range of a batch,
    /// bounded by the source's rate cap). 0: blocks are read only when their batch runs.
    /// Default: one per worker, at least 2.
    #[serde(default = "default_prefetch_blocks_max")]
    pub direct_prefetch_blocks_max: usize,
}

fn default_prefetch_blocks_max() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

impl Config {
    /// The defaults for `batch_interval`.
    pub fn new(batch_interval: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            batch_interval_ms: millis(batch_interval),
            block_interval_ms: 200,
            block_size_max_bytes: 4 << 20,
            partitions: cores,
            worker_threads: cores,
            // One block per worker in its stages is enough to keep the workers busy (the
            // receiver fills the next meanwhile); each is a block buffer of memory.
            receiver_queue_blocks_max: cores.max(2),
            blocks_retained_max: 256,
            batches_queued_max: 8,
            direct_prefetch_blocks_max: default_prefetch_blocks_max(),
            receiver_max_rate_records_per_sec: None,
            backpressure_enabled: false,
            backpressure_initial_rate_records_per_sec: None,
            backpressure_min_rate_records_per_sec: 100,
            backpressure_pid_proportional: 1.0,
            backpressure_pid_integral: 0.2,
            backpressure_pid_derivative: 0.0,
            reconnect_backoff_initial_ms: 100,
            reconnect_backoff_max_ms: 5_000,
            reconnect_attempts_max: None,
            invalid_utf8: InvalidUtf8Policy::Skip,
            graceful_stop_timeout_ms: None,
            socket_read_chunk_bytes: 256 << 10,
            file_stream_remember_ms: 60_000,
            metrics_batches_retained_max: 1_000,
        }
    }

    /// The graceful-stop limit in effect.
    pub fn effective_graceful_stop_timeout_ms(&self) -> u64 {
        self.graceful_stop_timeout_ms
            .unwrap_or(self.batch_interval_ms.saturating_mul(10))
    }

    /// Checks every value and their relations; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        fn positive(setting: &'static str, v: u64) -> Result<()> {
            if v == 0 {
                return Err(Error::config(setting, "must be greater than zero"));
            }
            Ok(())
        }
        positive("batch_interval_ms", self.batch_interval_ms)?;
        positive("block_interval_ms", self.block_interval_ms)?;
        positive("block_size_max_bytes", self.block_size_max_bytes as u64)?;
        positive("partitions", self.partitions as u64)?;
        positive("worker_threads", self.worker_threads as u64)?;
        positive(
            "receiver_queue_blocks_max",
            self.receiver_queue_blocks_max as u64,
        )?;
        positive("blocks_retained_max", self.blocks_retained_max as u64)?;
        positive("batches_queued_max", self.batches_queued_max as u64)?;
        positive(
            "reconnect_backoff_initial_ms",
            self.reconnect_backoff_initial_ms,
        )?;
        positive(
            "socket_read_chunk_bytes",
            self.socket_read_chunk_bytes as u64,
        )?;
        positive(
            "metrics_batches_retained_max",
            self.metrics_batches_retained_max as u64,
        )?;
        if self.block_interval_ms > self.batch_interval_ms {
            return Err(Error::config(
                "block_interval_ms",
                format!(
                    "{} ms is longer than batch_interval_ms ({} ms); a block must fit in a batch",
                    self.block_interval_ms, self.batch_interval_ms
                ),
            ));
        }
        if self.partitions > 1 << 16 {
            return Err(Error::config(
                "partitions",
                format!("{} is more than 65536", self.partitions),
            ));
        }
        if self.blocks_retained_max < self.receiver_queue_blocks_max {
            return Err(Error::config(
                "blocks_retained_max",
                format!(
                    "{} is less than receiver_queue_blocks_max ({}); every queued block is also retained",
                    self.blocks_retained_max, self.receiver_queue_blocks_max
                ),
            ));
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_initial_ms {
            return Err(Error::config(
                "reconnect_backoff_max_ms",
                "must be at least reconnect_backoff_initial_ms",
            ));
        }
        if self.receiver_max_rate_records_per_sec == Some(0) {
            return Err(Error::config(
                "receiver_max_rate_records_per_sec",
                "must be greater than zero (use None for no limit)",
            ));
        }
        if self.backpressure_initial_rate_records_per_sec == Some(0) {
            return Err(Error::config(
                "backpressure_initial_rate_records_per_sec",
                "must be greater than zero (use None for no limit)",
            ));
        }
        positive(
            "backpressure_min_rate_records_per_sec",
            self.backpressure_min_rate_records_per_sec,
        )?;
        for (setting, v) in [
            (
                "backpressure_pid_proportional",
                self.backpressure_pid_proportional,
            ),
            ("backpressure_pid_integral", self.backpressure_pid_integral),
            (
                "backpressure_pid_derivative",
                self.backpressure_pid_derivative,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(
                    setting,
                    format!("{v} is not a finite non-negative number"),
                ));
            }
        }
        if self.graceful_stop_timeout_ms == Some(0) {
            return Err(Error::config(
                "graceful_stop_timeout_ms",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::new(Duration::from_secs(1)).validate().unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        let mut c = Config::new(Duration::from_millis(100));
        c.block_interval_ms = 200;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("`block_interval_ms`") && err.contains("batch_interval_ms (100 ms)"),
            "{err}"
        );

        let mut c = Config::new(Duration::from_secs(1));
        c.partitions = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid setting `partitions`: must be greater than zero"
        );

        let mut c = Config::new(Duration::from_secs(1));
        c.backpressure_pid_integral = f64::NAN;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("backpressure_pid_integral")
        );

        let c = Config::new(Duration::ZERO);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("batch_interval_ms")
        );
    }
}
