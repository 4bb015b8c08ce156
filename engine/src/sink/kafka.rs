//! The Kafka sink: at-least-once, with deterministic record identities.
//!
//! Every record of a batch is produced to the topic with the idempotent producer
//! (`enable.idempotence=true`: the broker drops the producer's own retries) and
//! - the record key given by [`KafkaRecord::key`] (so a key always lands in the same
//!   partition), and
//! - headers `ember-pipeline`, `ember-batch-time-ms`, `ember-partition` (the batch
//!   partition) and `ember-sequence` (the record's index within its batch partition).
//!
//! A batch re-run after a crash produces the same records with the same headers again, so
//! `(pipeline, batch time, partition, sequence)` identifies a record across re-runs and a
//! consumer can drop duplicates. The sink itself is **at-least-once**: Kafka transactions
//! would make it exactly-once, but the broker the test suite runs against (tansu) cannot
//! complete a transaction, so no transactional mode is offered until one can be tested.
//! A batch completes only when every record was acknowledged by the broker (`acks=all`).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{BatchOutput, Delivery, Sink};
use crate::dstream::BatchData;
use crate::error::{Error, Result};
use crate::text::Str;

/// A record the Kafka sink can produce.
pub trait KafkaRecord {
    /// The record key.
    fn key(&self) -> &[u8];
    /// The record value.
    fn value(&self) -> Vec<u8>;
}

impl KafkaRecord for (Str, u64) {
    fn key(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn value(&self) -> Vec<u8> {
        self.1.to_string().into_bytes()
    }
}

impl KafkaRecord for Str {
    fn key(&self) -> &[u8] {
        self.as_bytes()
    }
    fn value(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

/// The at-least-once Kafka sink (see the module docs).
pub struct KafkaSink {
    bootstrap: String,
    topic: String,
    producer: FutureProducer,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// An idempotent producer to `topic` at `bootstrap`; a batch fails if a record is not
    /// acknowledged within `timeout` (librdkafka retries until then).
    pub fn new(bootstrap: &str, topic: &str, timeout: Duration) -> Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.timeout.ms",
                timeout.as_millis().clamp(1_000, 3_600_000).to_string(),
            )
            .create()
            .map_err(|e| Error::Sink {
                sink: format!("kafka {bootstrap}/{topic}"),
                message: format!("cannot create the producer: {e}"),
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime {
                what: "the Kafka sink's runtime",
                source,
            })?;
        Ok(KafkaSink {
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
            producer,
            runtime,
        })
    }
}

impl KafkaSink {
    async fn acknowledged(
        &self,
        delivery: Option<DeliveryFuture>,
    ) -> std::result::Result<(), String> {
        let Some(delivery) = delivery else {
            return Ok(());
        };
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(format!(
                "record not acknowledged by {} (topic {}): {e}",
                self.bootstrap, self.topic
            )),
            Err(_) => Err(format!("the producer for {} was dropped", self.topic)),
        }
    }
}

impl<T: KafkaRecord + Send + Sync + 'static> Sink<T> for KafkaSink {
    fn name(&self) -> String {
        format!("kafka {}/{}", self.bootstrap, self.topic)
    }

    fn delivery(&self) -> Delivery {
        Delivery::AtLeastOnce
    }

    fn write_batch(
        &self,
        batch: &BatchOutput,
        data: &BatchData<T>,
    ) -> std::result::Result<(), String> {
        let time = batch.time.as_millis().to_string();
        self.runtime.block_on(async {
            // At most this many records in flight; each one's delivery is awaited.
            const IN_FLIGHT: usize = 10_000;
            let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT);
            for (p, part) in data.partitions().enumerate() {
                let partition = p.to_string();
                for (seq, record) in part.iter().enumerate() {
                    let seq = seq.to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "ember-pipeline",
                            value: Some(batch.pipeline.as_bytes()),
                        })
                        .insert(Header {
                            key: "ember-batch-time-ms",
                            value: Some(time.as_bytes()),
                        })
                        .insert(Header {
                            key: "ember-partition",
                            value: Some(partition.as_bytes()),
                        })
                        .insert(Header {
                            key: "ember-sequence",
                            value: Some(seq.as_bytes()),
                        });
                    let value = record.value();
                    let mut fr = FutureRecord::to(&self.topic)
                        .key(record.key())
                        .payload(&value)
                        .headers(headers);
                    loop {
                        if pending.len() >= IN_FLIGHT {
                            self.acknowledged(pending.pop_front()).await?;
                        }
                        match self.producer.send_result(fr) {
                            Ok(delivery) => {
                                pending.push_back(delivery);
                                break;
                            }
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                back,
                            )) => {
                                fr = back;
                                if pending.is_empty() {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                } else {
                                    self.acknowledged(pending.pop_front()).await?;
                                }
                            }
                            Err((e, _)) => {
                                return Err(format!("cannot produce to {}: {e}", self.topic));
                            }
                        }
                    }
                }
            }
            while let Some(d) = pending.pop_front() {
                self.acknowledged(Some(d)).await?;
            }
            Ok::<(), String>(())
        })?;
        Ok(())
    }
}
