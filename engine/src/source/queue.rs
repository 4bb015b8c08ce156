//! The queue source: records handed over in code, one batch's worth per batch (Spark's
//! `queueStream` with `oneAtATime`), for tests and examples.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::DirectInput;
use crate::block::{Block, BlockCodec, BlockId, PostcardCodec, StoredBlock, StreamId};
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::handler::{MemoryBlockHandler, ReceivedBlockHandler};
use crate::time::BatchTime;

pub(crate) struct QueueInput<T> {
    pub name: String,
    pub queue: Arc<Mutex<VecDeque<Vec<T>>>>,
    pub handler: Arc<MemoryBlockHandler>,
    pub next_seq: AtomicU64,
}

impl<T> DirectInput for QueueInput<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn handler(&self) -> Arc<dyn ReceivedBlockHandler> {
        Arc::clone(&self.handler) as Arc<dyn ReceivedBlockHandler>
    }

    fn plan(&self, stream: StreamId, _time: BatchTime) -> Result<Vec<StoredBlock>> {
        let Some(records) = lock(&self.queue).pop_front() else {
            return Ok(Vec::new());
        };
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::new();
        PostcardCodec::<T>::new()
            .encode(&records, &mut bytes)
            .map_err(|message| Error::Receiver {
                stream: self.name.clone(),
                message: format!("cannot encode queued records: {message}"),
            })?;
        let id = BlockId {
            stream,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        Ok(vec![self.handler.insert(Block {
            id,
            records: records.len() as u64,
            bytes: Bytes::from(bytes),
            source_offsets: None,
        })])
    }
}

/// Adds batches to a queue stream while the context runs.
pub struct QueueHandle<T> {
    pub(crate) queue: Arc<Mutex<VecDeque<Vec<T>>>>,
}

impl<T> Clone for QueueHandle<T> {
    fn clone(&self) -> Self {
        QueueHandle {
            queue: Arc::clone(&self.queue),
        }
    }
}

impl<T> QueueHandle<T> {
    /// Queues the records of one future batch.
    pub fn push(&self, records: Vec<T>) {
        lock(&self.queue).push_back(records);
    }

    /// Batches queued and not yet taken.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether no batch is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
