//! Subscribe mode: the source joins a consumer group and reads the partitions the group
//! assigns to it.
//!
//! A dedicated thread owns the group consumer and polls it (librdkafka delivers rebalances
//! from `poll`). The group consumer never reads records: its partitions are paused as soon
//! as they are assigned, and ranges are read by the same range readers as in assign mode.
//! It only carries membership, and the positions the planner starts from:
//!
//! | rebalance event | what the source does |
//! |---|---|
//! | partitions revoked | stop planning them (removed from the positions under the planner's lock), then wait (bounded) until every batch already planned over them has completed, so the next owner finds their offsets stored |
//! | partitions assigned | start each at its stored offset ([`StoredOffsets`], e.g. the PostgreSQL sink's `ember_offsets`), else at the starting offsets (earliest, latest, committed, explicit) |
//! | the offsets of an assigned partition cannot be resolved | the next batch fails with the error (the pipeline stops: nothing is read from a guessed position) |
//!
//! Waiting on revocation is what keeps a clean rebalance free of fenced batches; it is not
//! what makes the output exactly-once. A member that lost its partitions without noticing
//! (paused too long, partitioned from the broker) can still run a batch over them: the sink
//! must refuse it, which the PostgreSQL sink does by fencing its write on the stored offsets
//! (see `sink::postgres`, "Fenced writes").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{KafkaOptions, StartingOffsets, client_config};
use crate::dstream::node::lock;
use crate::error::{Error, Result};
use crate::time::BatchTime;

/// The batches planned and not yet completed, with the partitions they read.
#[derive(Default)]
pub(super) struct InFlight {
    batches: Mutex<BTreeMap<BatchTime, BTreeSet<i32>>>,
    changed: Condvar,
}

impl InFlight {
    /// Called by the planner (holding the positions lock) for each batch it plans.
    pub(super) fn planned(&self, time: BatchTime, partitions: BTreeSet<i32>) {
        if !partitions.is_empty() {
            tracing::debug!(batch = %time, ?partitions, "batch planned");
            lock(&self.batches).insert(time, partitions);
        }
    }

    /// Called when a batch completed (or failed: either way it no longer writes).
    pub(super) fn completed(&self, time: BatchTime) {
        if lock(&self.batches).remove(&time).is_some() {
            tracing::debug!(batch = %time, "batch completed");
            self.changed.notify_all();
        }
    }

    /// The batches still running.
    fn pending(&self) -> Vec<BatchTime> {
        lock(&self.batches).keys().copied().collect()
    }

    /// Waits until no planned batch reads any of `partitions`; false on timeout or close.
    fn wait_for(
        &self,
        partitions: &BTreeSet<i32>,
        timeout: Duration,
        closing: &AtomicBool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut batches = lock(&self.batches);
        loop {
            if !batches
                .values()
                .any(|ps| ps.iter().any(|p| partitions.contains(p)))
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || closing.load(Ordering::SeqCst) {
                return false;
            }
            batches = self
                .changed
                .wait_timeout(batches, (deadline - now).min(Duration::from_millis(200)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// What the rebalance callbacks share with the planner.
pub(super) struct GroupState {
    pub(super) name: String,
    pub(super) options: KafkaOptions,
    /// The planner's positions: the partitions assigned here and their next offsets.
    pub(super) positions: Arc<Mutex<BTreeMap<i32, i64>>>,
    pub(super) in_flight: Arc<InFlight>,
    /// Set when an assignment could not be started; the next plan fails with it.
    pub(super) failure: Mutex<Option<String>>,
    /// Set when the source leaves the group: revocations no longer wait for batches.
    pub(super) closing: AtomicBool,
}

impl GroupState {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> BTreeSet<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.options.topic)
            .map(|e| e.partition())
            .collect()
    }

    /// Where each newly assigned partition starts.
    fn starting_positions(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        assigned: &BTreeSet<i32>,
    ) -> std::result::Result<BTreeMap<i32, i64>, String> {
        let topic = &self.options.topic;
        let wanted: Vec<i32> = assigned.iter().copied().collect();
        let mut start = match &self.options.stored_offsets {
            Some(store) => (store.0)(topic, &wanted).map_err(|e| {
                format!(
                    "cannot read the stored offsets of the partitions {wanted:?} just assigned: {e}"
                )
            })?,
            None => BTreeMap::new(),
        };
        start.retain(|p, _| assigned.contains(p));
        let missing: Vec<i32> = wanted
            .iter()
            .copied()
            .filter(|p| !start.contains_key(p))
            .collect();
        if missing.is_empty() {
            return Ok(start);
        }
        let committed: BTreeMap<i32, i64> = match &self.options.starting_offsets {
            StartingOffsets::Committed => {
                let mut tpl = TopicPartitionList::new();
                for &p in &missing {
                    tpl.add_partition(topic, p);
                }
                consumer
                    .committed_offsets(tpl, Duration::from_secs(10))
                    .map_err(|e| {
                        format!(
                            "cannot read the committed offsets of `{topic}` from {}: {e}",
                            self.options.bootstrap
                        )
                    })?
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect()
            }
            StartingOffsets::Explicit(m) => m.clone(),
            StartingOffsets::Earliest | StartingOffsets::Latest => BTreeMap::new(),
        };
        for p in missing {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(|e| {
                    format!(
                        "cannot read the offsets of partition {p} of `{topic}` at {}: {e}",
                        self.options.bootstrap
                    )
                })?;
            let at = match self.options.starting_offsets {
                StartingOffsets::Latest => high,
                _ => committed.get(&p).copied().unwrap_or(low),
            };
            start.insert(p, at);
        }
        Ok(start)
    }
}

/// The group consumer's context: the rebalance callbacks (see the module docs).
pub(super) struct GroupContext(Arc<GroupState>);

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let state = &self.0;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked = state.partitions_of(tpl);
                {
                    let mut positions = lock(&state.positions);
                    for p in &revoked {
                        positions.remove(p);
                    }
                }
                tracing::info!(stream = %state.name, group = ?state.options.group_id, ?revoked, "Kafka partitions revoked: no longer planned");
                let timeout = state.options.broker_timeout;
                if !state.in_flight.wait_for(&revoked, timeout, &state.closing)
                    && !state.closing.load(Ordering::SeqCst)
                {
                    let pending = state.in_flight.pending();
                    tracing::warn!(stream = %state.name, ?revoked, ?timeout, ?pending, "batches over revoked partitions still running; their writes will be fenced if the new owner commits first");
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(stream = %state.name, group = ?state.options.group_id, error = %e, "consumer group rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let state = &self.0;
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        // The group consumer only holds membership: the range readers fetch the records.
        if let Err(e) = consumer.pause(tpl) {
            tracing::debug!(stream = %state.name, error = %e, "cannot pause the group consumer's partitions");
        }
        let assigned = state.partitions_of(tpl);
        if assigned.is_empty() {
            tracing::info!(stream = %state.name, group = ?state.options.group_id, "no Kafka partitions assigned to this member");
            return;
        }
        match state.starting_positions(consumer, &assigned) {
            Ok(start) => {
                tracing::info!(stream = %state.name, group = ?state.options.group_id, positions = ?start, "Kafka partitions assigned");
                lock(&state.positions).extend(start);
            }
            Err(e) => {
                tracing::error!(stream = %state.name, error = %e, "cannot start the assigned partitions");
                lock(&state.failure).get_or_insert(e);
            }
        }
    }
}

/// The group membership: the polling thread and its consumer.
pub(super) struct Membership {
    pub(super) state: Arc<GroupState>,
    consumer: Arc<BaseConsumer<GroupContext>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Membership {
    /// Joins the group and starts polling.
    pub(super) fn join(state: Arc<GroupState>) -> Result<Membership> {
        let err = |message: String| Error::Receiver {
            stream: state.name.clone(),
            message,
        };
        let group = state.options.group_id.clone().ok_or(Error::Config {
            setting: "group_id",
            message: "subscribe mode needs a consumer group id".to_owned(),
        })?;
        let mut config = client_config(&state.options, Some(&group));
        // Eager rebalancing (revoke everything, then assign): what tansu's group coordinator
        // serves, and what lets a revocation wait for batches before anyone else starts.
        // A killed member's partitions move after the session timeout: keep it short.
        for (key, value) in [
            ("partition.assignment.strategy", "range,roundrobin"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("queued.max.messages.kbytes", "1024"),
        ] {
            if !state.options.client_settings.contains_key(key) {
                config.set(key, value);
            }
        }
        let consumer: BaseConsumer<GroupContext> = config
            .create_with_context(GroupContext(Arc::clone(&state)))
            .map_err(|e| {
                err(format!(
                    "cannot create the group consumer for {}: {e}",
                    state.options.bootstrap
                ))
            })?;
        consumer
            .subscribe(&[state.options.topic.as_str()])
            .map_err(|e| {
                err(format!(
                    "cannot subscribe to `{}` at {} in group {group}: {e}",
                    state.options.topic, state.options.bootstrap
                ))
            })?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, name) = (Arc::clone(&consumer), Arc::clone(&stop), state.name.clone());
        let thread = std::thread::Builder::new()
            .name("ember-kafka-group".to_owned())
            .spawn(move || poll_group(&c, &s, &name))
            .map_err(|e| err(format!("cannot start the group thread: {e}")))?;
        tracing::info!(stream = %state.name, %group, topic = %state.options.topic, "joined the consumer group (subscribe mode)");
        Ok(Membership {
            state,
            consumer,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The group consumer (for offset commits as a member of the current generation).
    pub(super) fn consumer(&self) -> &BaseConsumer<GroupContext> {
        &self.consumer
    }

    /// Leaves the group (the other members rebalance at once instead of after the session
    /// timeout) and stops the thread.
    pub(super) fn leave(&self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn poll_group(consumer: &BaseConsumer<GroupContext>, stop: &AtomicBool, name: &str) {
    let mut last_warning: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Ok(_)) => {}
            Some(Err(e)) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(stream = %name, error = %e, "consumer group error");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
    // Leave: unsubscribing revokes (served by poll) and sends LeaveGroup.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        consumer.poll(Duration::from_millis(100));
    }
    // Give the LeaveGroup request a moment to go out.
    let _ = consumer.poll(Duration::from_millis(300));
    tracing::info!(stream = %name, "left the consumer group");
}
