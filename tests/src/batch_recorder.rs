//! A listener for in-process Kafka pipelines: it records each completed batch's offset ranges
//! and failures, and asks the context for a graceful stop once the test's condition holds.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use engine::source::kafka::{KafkaOffsets, OffsetRange};
use engine::{BatchInfo, BatchTime, StopHandle, StreamingContext, StreamingListener};

/// A completed batch: its time and the offset ranges it covered.
pub type RecordedBatch = (BatchTime, Vec<OffsetRange>);

/// Decides, from the batches completed so far, when to stop.
pub type StopWhen = Box<dyn Fn(&[RecordedBatch]) -> bool + Send + Sync>;

/// Records every completed batch's ranges; stops the context once `stop_when` says so.
pub struct BatchRecorder {
    offsets: KafkaOffsets,
    batches: Mutex<Vec<RecordedBatch>>,
    failures: Mutex<Vec<String>>,
    stop: StopHandle,
    stop_when: StopWhen,
}

impl BatchRecorder {
    /// Adds a recorder of `offsets`' batches to `ctx` (before it starts).
    pub fn attach(
        ctx: &StreamingContext,
        offsets: &KafkaOffsets,
        stop_when: StopWhen,
    ) -> Arc<Self> {
        let recorder = Arc::new(BatchRecorder {
            offsets: offsets.clone(),
            batches: Mutex::default(),
            failures: Mutex::default(),
            stop: ctx.stop_handle(),
            stop_when,
        });
        ctx.add_listener(Arc::clone(&recorder) as Arc<dyn StreamingListener>);
        recorder
    }

    /// Waits up to `timeout` for the stop `stop_when` asked for, and panics, saying why, if
    /// it did not come or if any batch failed.
    pub fn await_stop(&self, ctx: &StreamingContext, timeout: Duration) {
        match ctx.await_termination_timeout(Some(timeout)) {
            Ok(true) => {}
            Ok(false) => panic!("the pipeline did not finish within {timeout:?}"),
            Err(e) => panic!("the pipeline failed: {e}"),
        }
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(failures.is_empty(), "batches failed: {failures:?}");
    }

    /// Every completed batch, in completion order.
    pub fn batches(&self) -> Vec<RecordedBatch> {
        self.batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The completed batches that read at least one offset.
    pub fn reading_batches(&self) -> Vec<RecordedBatch> {
        let mut batches = self.batches();
        batches.retain(|(_, ranges)| reads_something(ranges));
        batches
    }
}

impl StreamingListener for BatchRecorder {
    fn on_batch_completed(&self, batch: &BatchInfo) {
        // A panic here would be caught by the context: keep failures for the test.
        if let Some(f) = &batch.failure {
            self.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(f.clone());
        }
        let ranges = self
            .offsets
            .offset_ranges(batch.batch_time)
            .unwrap_or_default();
        let mut all = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        all.push((batch.batch_time, ranges));
        if (self.stop_when)(&all) {
            self.stop.request_stop(true);
        }
    }
}

/// Whether a batch's ranges cover at least one offset.
pub fn reads_something(ranges: &[OffsetRange]) -> bool {
    ranges.iter().any(|r| r.until > r.from)
}

/// The offsets the batches covered, over every partition.
pub fn offsets_read(batches: &[RecordedBatch]) -> i64 {
    batches
        .iter()
        .flat_map(|(_, ranges)| ranges.iter().map(|r| r.until - r.from))
        .sum()
}
