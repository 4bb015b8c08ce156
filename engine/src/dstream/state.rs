//! Stateful operators: `update_state_by_key` and `map_with_state`, and state snapshots.
//!
//! State lives in insertion-ordered maps with the stable hasher, one per partition, keyed
//! by the same hash partitioning as the batch data, so a batch updates every partition in
//! parallel. The order of a state map is a deterministic function of the batches it saw,
//! and a snapshot keeps it: a batch re-run from a restored snapshot gives byte-identical
//! output.
//!
//! # Snapshots
//!
//! [`StateSnapshot`] is what the checkpoint layer stores per stateful operator: the
//! operator's [`OperatorId`] and kind, the key and state type names (a restart with other
//! types is refused with a clear error), the batch time the state is at, and the state in
//! postcard format (`body`, versioned by `format_version`):
//!
//! ```text
//! update_state_by_key:            partitions: Vec<Vec<(K, S)>>
//! map_with_state:                 partitions: Vec<Vec<(K, S, last_updated_ms: u64)>>
//! reduce_by_key_and_window_inv:   partitions: Vec<Vec<(K, V)>>
//! ```
//!
//! A snapshot may be restored into a graph with another partition count: entries are
//! re-partitioned by key, keeping their relative order.

use std::any::type_name;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::DStream;
use super::batch_data::BatchData;
use super::node::{
    AnyNode, BatchCx, Compute, Data, Key, NodeCell, NodeInfo, OperatorId, catch, detached_key, lock,
};
use super::pipe::{BlockTask, UnitRunner};
use crate::block::StreamId;
use crate::error::{Error, Result};
use crate::hash::{StableIndexMap, partition_of_key};
use crate::time::{BatchTime, millis};

/// The version of the snapshot body formats above.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The state of one stateful operator at a batch boundary (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// The operator.
    pub operator: OperatorId,
    /// Its kind ("update_state_by_key", ...).
    pub kind: String,
    /// The key type's name.
    pub key_type: String,
    /// The state (or value) type's name.
    pub state_type: String,
    /// The batch at which the snapshot was taken.
    pub taken_at: BatchTime,
    /// The last batch the state includes (`None` if it has seen none).
    pub state_time: Option<BatchTime>,
    /// The body's format version.
    pub format_version: u32,
    /// The state, postcard-encoded.
    pub body: Vec<u8>,
}

/// A stateful operator, as the graph sees it.
pub(crate) trait StatefulOp: Send + Sync + 'static {
    fn id(&self) -> OperatorId;
    fn kind(&self) -> &'static str;
    /// The key and state type names, as snapshots record them.
    fn state_types(&self) -> (&'static str, &'static str);
    /// The last batch the state includes.
    fn state_time(&self) -> Option<BatchTime>;
    fn snapshot(&self, time: BatchTime) -> Result<StateSnapshot>;
    fn restore(&self, snapshot: StateSnapshot) -> Result<()>;
}

pub(crate) fn encode_state<K, S, B: Serialize>(
    op: &dyn StatefulOp,
    taken_at: BatchTime,
    state_time: Option<BatchTime>,
    body: &B,
) -> Result<StateSnapshot> {
    if state_time.is_some_and(|t| t > taken_at) {
        return Err(Error::State {
            operator: format!("{}#{}", op.kind(), op.id()),
            message: format!(
                "state is at batch {:?}, after the snapshot time {taken_at}",
                state_time
            ),
        });
    }
    let body = postcard::to_stdvec(body).map_err(|e| Error::State {
        operator: format!("{}#{}", op.kind(), op.id()),
        message: format!("cannot encode state: {e}"),
    })?;
    Ok(StateSnapshot {
        operator: op.id(),
        kind: op.kind().to_owned(),
        key_type: type_name::<K>().to_owned(),
        state_type: type_name::<S>().to_owned(),
        taken_at,
        state_time,
        format_version: STATE_FORMAT_VERSION,
        body,
    })
}

pub(crate) fn decode_state<K, S, B: DeserializeOwned>(
    op: &dyn StatefulOp,
    snapshot: &StateSnapshot,
) -> Result<(Option<BatchTime>, B)> {
    let fail = |message: String| Error::State {
        operator: format!("{}#{}", op.kind(), op.id()),
        message,
    };
    if snapshot.operator != op.id() || snapshot.kind != op.kind() {
        return Err(fail(format!(
            "snapshot is of {}#{}",
            snapshot.kind, snapshot.operator
        )));
    }
    if snapshot.format_version != STATE_FORMAT_VERSION {
        return Err(fail(format!(
            "snapshot format version {} is not supported (expected {STATE_FORMAT_VERSION})",
            snapshot.format_version
        )));
    }
    if snapshot.key_type != type_name::<K>() || snapshot.state_type != type_name::<S>() {
        return Err(fail(format!(
            "snapshot holds ({}, {}) but the operator has ({}, {})",
            snapshot.key_type,
            snapshot.state_type,
            type_name::<K>(),
            type_name::<S>()
        )));
    }
    let body = postcard::from_bytes(&snapshot.body)
        .map_err(|e| fail(format!("corrupt snapshot body: {e}")))?;
    Ok((snapshot.state_time, body))
}

/// Re-partitions state entries by key, keeping their relative order.
pub(crate) fn repartition_entries<K: Key, E>(
    parts: Vec<Vec<(K, E)>>,
    partitions: usize,
) -> Vec<Vec<(K, E)>> {
    if parts.len() == partitions {
        return parts;
    }
    let mut out: Vec<Vec<(K, E)>> = (0..partitions).map(|_| Vec::new()).collect();
    for (k, e) in parts.into_iter().flatten() {
        out[partition_of_key(&k, partitions)].push((k, e));
    }
    out
}

fn state_time_error(
    op: &dyn StatefulOp,
    time: BatchTime,
    state_time: Option<BatchTime>,
    slide_ms: u64,
) -> Error {
    Error::State {
        operator: format!("{}#{}", op.kind(), op.id()),
        message: format!(
            "cannot compute batch {time}: the state is at {state_time:?}, not at the previous batch ({} ms earlier); \
             batches must run in order from the state's batch",
            slide_ms
        ),
    }
}

// ---------------------------------------------------------------------- update_state_by_key

type UpdateFn<V, S> = dyn Fn(Vec<V>, Option<S>) -> Option<S> + Send + Sync;

impl<K, V> DStream<(K, V)>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data,
{
    /// Keeps a state per key across batches: every batch, `f` gets each key's new values
    /// (possibly none) and its previous state (if any) and returns the new state; `None`
    /// removes the key. The output is the whole state after each batch.
    ///
    /// ```
    /// # fn f(counts: engine::DStream<(engine::Str, u64)>) {
    /// let totals = counts.update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
    ///     Some(total.unwrap_or(0) + new.iter().sum::<u64>())
    /// });
    /// # }
    /// ```
    pub fn update_state_by_key<S>(
        &self,
        f: impl Fn(Vec<V>, Option<S>) -> Option<S> + Send + Sync + 'static,
    ) -> DStream<(K, S)>
    where
        S: Data + Serialize + DeserializeOwned,
    {
        self.update_state_by_key_with(f, self.graph().partitions, Vec::new())
    }

    /// [`DStream::update_state_by_key`] with a partition count and an initial state.
    pub fn update_state_by_key_with<S>(
        &self,
        f: impl Fn(Vec<V>, Option<S>) -> Option<S> + Send + Sync + 'static,
        partitions: usize,
        initial_state: Vec<(K, S)>,
    ) -> DStream<(K, S)>
    where
        S: Data + Serialize + DeserializeOwned,
    {
        let partitions = self.checked_partitions("update_state_by_key", partitions);
        let (new_values, grouped_lineage) = match self.pipe().node.as_ref() {
            Some(node) if node.unique_keys_in_partitions() == Some(partitions) => {
                // Grouping would only wrap each value in a vector. The group's identity
                // is still derived, so the operator keeps its id (and its snapshots).
                let lineage = self.graph().operator_id(
                    "group_by_key",
                    &partitions.to_string(),
                    &[self.lineage()],
                );
                (NewValues::Unique(Arc::clone(node)), lineage)
            }
            _ => {
                let grouped = self.group_by_key_with_partitions(partitions);
                (NewValues::Grouped(grouped.node()), grouped.lineage())
            }
        };
        let id = self.graph().operator_id(
            "update_state_by_key",
            &partitions.to_string(),
            &[grouped_lineage],
        );
        let info = NodeInfo {
            id,
            kind: "update_state_by_key",
            slide_ms: self.slide_ms(),
        };
        let initial = repartition_entries(vec![initial_state], partitions)
            .into_iter()
            .map(|entries| entries.into_iter().map(|(k, s)| (k, Some(s))).collect())
            .collect();
        let core = Arc::new(UpdateState {
            id,
            label: info.label(),
            slide_ms: info.slide_ms,
            partitions,
            new_values,
            f: Box::new(f),
            state: Mutex::new(KeyedState::new(None, initial)),
        });
        DStream::from_node(
            Arc::clone(self.graph()),
            NodeCell::new(info, UpdateStateNode(core)),
        )
    }

    /// Keeps a state per key with `spec`'s function, called once per record (and once more
    /// for keys that time out); the output is what the function returns. See [`StateSpec`].
    pub fn map_with_state<S, U>(&self, spec: StateSpec<K, V, S, U>) -> MapWithStateStream<K, S, U>
    where
        S: Data + Serialize + DeserializeOwned,
        U: Data,
    {
        let partitions = self.checked_partitions(
            "map_with_state",
            spec.partitions.unwrap_or(self.graph().partitions),
        );
        // Partition the records by key, keeping their order (no combining: the function sees
        // every record).
        let bucket_id = self.graph().operator_id(
            "partition_by_key",
            &partitions.to_string(),
            &[self.lineage()],
        );
        let bucket_info = NodeInfo {
            id: bucket_id,
            kind: "partition_by_key",
            slide_ms: self.slide_ms(),
        };
        let runner = UnitRunner::new(
            &self.pipe().branches,
            bucket_info.label(),
            move |stage, unit| {
                let mut buckets: Vec<Vec<(K, V)>> = (0..partitions).map(|_| Vec::new()).collect();
                stage.run(unit, &mut |(k, v): (K, V)| {
                    let p = if partitions == 1 {
                        0
                    } else {
                        partition_of_key(&k, partitions)
                    };
                    buckets[p].push((k, v));
                })?;
                Ok(buckets)
            },
        );
        let parent = NodeCell::new(bucket_info, PartitionByKey { runner, partitions });
        let id = self.graph().operator_id(
            "map_with_state",
            &format!("{partitions}/{:?}", spec.timeout_ms),
            &[bucket_id],
        );
        let info = NodeInfo {
            id,
            kind: "map_with_state",
            slide_ms: self.slide_ms(),
        };
        let initial = repartition_entries(
            vec![
                spec.initial
                    .into_iter()
                    .map(|(k, s)| (k, (s, 0u64)))
                    .collect(),
            ],
            partitions,
        )
        .into_iter()
        .map(|entries| entries.into_iter().collect())
        .collect();
        let core = Arc::new(MapWithState {
            id,
            label: info.label(),
            slide_ms: info.slide_ms,
            parent,
            func: spec.func,
            timeout_ms: spec.timeout_ms,
            state: Mutex::new(KeyedState::new(None, initial)),
            snapshots: Mutex::default(),
            keep_snapshots: std::sync::atomic::AtomicBool::new(false),
        });
        let slide_ms = info.slide_ms;
        let primary = NodeCell::new(info, MapWithStateNode(Arc::clone(&core)));
        let mapped = DStream::from_node(Arc::clone(self.graph()), Arc::clone(&primary));
        let graph = Arc::clone(self.graph());
        let snapshots = Arc::new(move || {
            core.keep_snapshots
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let sid = graph.operator_id("state_snapshots", "", &[id]);
            let info = NodeInfo {
                id: sid,
                kind: "state_snapshots",
                slide_ms,
            };
            let node = NodeCell::new(
                info,
                StateSnapshots {
                    primary: Arc::clone(&primary),
                    core: Arc::clone(&core),
                },
            );
            DStream::from_node(Arc::clone(&graph), node)
        });
        MapWithStateStream { mapped, snapshots }
    }
}

/// One stateful operator's state: per partition, an insertion-ordered map.
struct KeyedState<K, E> {
    time: Option<BatchTime>,
    parts: Vec<StableIndexMap<K, E>>,
    /// Why a batch failed while updating the state in place (the user's function panicked
    /// part way through a partition). The maps are then neither the state before the batch
    /// nor after it, so every later batch and snapshot is refused: the job restarts from
    /// its last checkpoint, whose state is whole.
    failed: Option<String>,
}

impl<K, E> KeyedState<K, E> {
    fn new(time: Option<BatchTime>, parts: Vec<StableIndexMap<K, E>>) -> Self {
        KeyedState {
            time,
            parts,
            failed: None,
        }
    }

    /// Runs batch `time`'s update of the maps in place (`update`, its panics caught): only
    /// on a whole state at the previous batch (`slide_ms` earlier). The state is then at
    /// `time`, or, if `update` panicked part way through, failed (see `failed`); the error
    /// names the operator by `label`.
    fn update_batch<R>(
        &mut self,
        op: &dyn StatefulOp,
        label: &str,
        time: BatchTime,
        slide_ms: u64,
        update: impl FnOnce(&mut [StableIndexMap<K, E>]) -> R,
    ) -> Result<R> {
        if self.time.is_some() && self.time != time.checked_minus_millis(slide_ms) {
            return Err(state_time_error(op, time, self.time, slide_ms));
        }
        self.check_whole(op)?;
        let parts = &mut self.parts;
        match catch(|| update(parts)) {
            Ok(r) => {
                self.time = Some(time);
                Ok(r)
            }
            Err(message) => {
                self.failed = Some(message.clone());
                Err(Error::Job {
                    batch_time: time,
                    operator: label.to_owned(),
                    message,
                })
            }
        }
    }

    /// Refuses a state a failed batch left half updated (see `failed`).
    fn check_whole(&self, op: &dyn StatefulOp) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(message) => Err(Error::State {
                operator: format!("{}#{}", op.kind(), op.id()),
                message: format!(
                    "a batch after {:?} failed while updating the state ({message}); the state \
                     is incomplete and is not used again: restart from the last checkpoint",
                    self.time
                ),
            }),
        }
    }
}

impl<K: Clone, S: Clone> KeyedState<K, Option<S>> {
    /// `update_state_by_key`'s state as entries, per partition, in state order (its output
    /// and its snapshot). Between batches every value is `Some`, so the capacities are exact.
    fn entries(&self) -> Vec<Vec<(K, S)>> {
        self.parts
            .iter()
            .map(|m| {
                let mut entries = Vec::with_capacity(m.len());
                entries.extend(
                    m.iter()
                        .filter_map(|(k, s)| s.as_ref().map(|s| (k.clone(), s.clone()))),
                );
                entries
            })
            .collect()
    }
}

/// Where `update_state_by_key` takes a batch's new values from.
enum NewValues<K, V> {
    /// The stream grouped by key into the state's partitions (a `group_by_key`).
    Grouped(Arc<NodeCell<(K, Vec<V>)>>),
    /// The stream itself: it is the output of a key operator with the state's partition
    /// count, so each key is there at most once and in the state's partition for it (see
    /// `Compute::unique_keys_in_partitions`). Spark skips a cogroup's shuffle for a known
    /// partitioner alike. Grouping it cost, at the batch-time peak of the word count's
    /// memory, a per-partition map, its fold and its output, each a vector per key.
    Unique(Arc<NodeCell<(K, V)>>),
}

/// One batch's new values of one stream, as [`NewValues`] got them.
enum NewBatch<K, V> {
    Grouped(BatchData<(K, Vec<V>)>),
    Unique(BatchData<(K, V)>),
}

impl<K: Data, V: Data> NewBatch<K, V> {
    /// Partition `p`'s keys, each with its values (a copy: `f` takes them by value).
    fn partition(&self, p: usize) -> Box<dyn Iterator<Item = (&K, Vec<V>)> + '_> {
        match self {
            NewBatch::Grouped(data) if p < data.num_partitions() => {
                Box::new(data.partition(p).iter().map(|(k, vs)| (k, vs.clone())))
            }
            NewBatch::Unique(data) if p < data.num_partitions() => {
                Box::new(data.partition(p).iter().map(|(k, v)| (k, vec![v.clone()])))
            }
            _ => Box::new(std::iter::empty()),
        }
    }
}

struct UpdateState<K, V, S> {
    id: OperatorId,
    label: String,
    slide_ms: u64,
    partitions: usize,
    new_values: NewValues<K, V>,
    f: Box<UpdateFn<V, S>>,
    /// Every value is `Some` between batches; `None` only while a batch updates a key (its
    /// state is moved into `f`) or marks it for removal.
    state: Mutex<KeyedState<K, Option<S>>>,
}

impl<K: Key, V: Data, S: Data> UpdateState<K, V, S> {
    /// Updates one partition's state in place with the batch's values (`new`, one entry per
    /// key). Every key gets one call of `f`: keys with new values, then the other existing
    /// keys with none (as Spark). The order afterwards is the one a fresh map would have:
    /// existing keys in state order (without the removed ones), then new keys in batch
    /// order. In place because the state is the largest thing a batch holds: a second map
    /// per batch (the old one kept until the new one was built) was a whole copy of the
    /// state at the batch-time peak of memory.
    fn update_partition<'a>(
        &self,
        state: &mut StableIndexMap<K, Option<S>>,
        new: impl Iterator<Item = (&'a K, Vec<V>)>,
    ) where
        K: 'a,
    {
        let existing = state.len();
        let mut updated = vec![false; existing];
        // New keys are added after the removals, with room for exactly them: a map grown
        // by doubling keeps up to half its entries' room unused for as long as it lives.
        // (`new` has each key once, so a key is never both pending and added.)
        let mut added: Vec<(K, S)> = Vec::new();
        for (k, vs) in new {
            match state.get_index_of(k) {
                Some(i) => {
                    if let Some(seen) = updated.get_mut(i) {
                        *seen = true;
                    }
                    if let Some((_, slot)) = state.get_index_mut(i) {
                        *slot = (self.f)(vs, slot.take());
                    }
                }
                None => {
                    if let Some(s) = (self.f)(vs, None) {
                        added.push((detached_key(k), s));
                    }
                }
            }
        }
        for (i, seen) in updated.into_iter().enumerate() {
            if !seen && let Some((_, slot)) = state.get_index_mut(i) {
                *slot = (self.f)(Vec::new(), slot.take());
            }
        }
        // Keeps the order of the others (unlike a swap remove).
        state.retain(|_, slot| slot.is_some());
        state.reserve_exact(added.len());
        for (k, s) in added {
            state.insert(k, Some(s));
        }
    }
}

struct UpdateStateNode<K, V, S>(Arc<UpdateState<K, V, S>>);

impl<K, V, S> Compute<(K, S)> for UpdateStateNode<K, V, S>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data,
    S: Data + Serialize + DeserializeOwned,
{
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<(K, S)>> {
        let op = &*self.0;
        let new = match &op.new_values {
            NewValues::Grouped(node) => NewBatch::Grouped(node.get(cx, time)?.unwrap_or_default()),
            NewValues::Unique(node) => NewBatch::Unique(node.get(cx, time)?.unwrap_or_default()),
        };
        let mut state = lock(&op.state);
        state.update_batch(op, &op.label, time, op.slide_ms, |parts| {
            cx.pool.install(|| {
                parts
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(p, part)| op.update_partition(part, new.partition(p)))
            })
        })?;
        Ok(BatchData::from_partitions(state.entries()))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        let parent: Arc<dyn AnyNode> = match &self.0.new_values {
            NewValues::Grouped(node) => Arc::clone(node) as Arc<dyn AnyNode>,
            NewValues::Unique(node) => Arc::clone(node) as Arc<dyn AnyNode>,
        };
        vec![(parent, 0)]
    }

    fn stateful(&self) -> Option<Arc<dyn StatefulOp>> {
        Some(Arc::clone(&self.0) as Arc<dyn StatefulOp>)
    }

    /// The state's maps are keyed and partitioned by `partition_of_key`.
    fn unique_keys_in_partitions(&self) -> Option<usize> {
        Some(self.0.partitions)
    }
}

#[derive(Serialize, Deserialize)]
struct KeyedBody<K, E> {
    partitions: Vec<Vec<(K, E)>>,
}

impl<K, V, S> StatefulOp for UpdateState<K, V, S>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data,
    S: Data + Serialize + DeserializeOwned,
{
    fn id(&self) -> OperatorId {
        self.id
    }

    fn kind(&self) -> &'static str {
        "update_state_by_key"
    }

    fn state_types(&self) -> (&'static str, &'static str) {
        (type_name::<K>(), type_name::<S>())
    }

    fn state_time(&self) -> Option<BatchTime> {
        lock(&self.state).time
    }

    fn snapshot(&self, time: BatchTime) -> Result<StateSnapshot> {
        let state = lock(&self.state);
        state.check_whole(self)?;
        let body = KeyedBody {
            partitions: state.entries(),
        };
        encode_state::<K, S, _>(self, time, state.time, &body)
    }

    fn restore(&self, snapshot: StateSnapshot) -> Result<()> {
        let (time, body): (_, KeyedBody<K, S>) = decode_state::<K, S, _>(self, &snapshot)?;
        let partitions = lock(&self.state).parts.len().max(1);
        let parts = repartition_entries(body.partitions, partitions)
            .into_iter()
            .map(|entries| entries.into_iter().map(|(k, s)| (k, Some(s))).collect())
            .collect();
        *lock(&self.state) = KeyedState::new(time, parts);
        Ok(())
    }
}

// ---------------------------------------------------------------------- map_with_state

/// The state of one key as [`StateSpec`]'s function sees it (Spark's `State`).
#[derive(Debug)]
pub struct State<S> {
    value: Option<S>,
    timing_out: bool,
    updated: bool,
    removed: bool,
}

impl<S> State<S> {
    fn new(value: Option<S>, timing_out: bool) -> Self {
        State {
            value,
            timing_out,
            updated: false,
            removed: false,
        }
    }

    /// Whether the key has a state.
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// The key's state, if any.
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }

    /// Sets the key's state. Ignored while the key is timing out (it is removed after the
    /// call, as in Spark, where this call would throw).
    pub fn update(&mut self, value: S) {
        if !self.timing_out {
            self.value = Some(value);
            self.updated = true;
            self.removed = false;
        }
    }

    /// Removes the key's state.
    pub fn remove(&mut self) {
        self.value = None;
        self.removed = true;
        self.updated = false;
    }

    /// Whether this call is the final one for a key that has been idle for the timeout.
    pub fn is_timing_out(&self) -> bool {
        self.timing_out
    }
}

type MapFn<K, V, S, U> = dyn Fn(BatchTime, &K, Option<V>, &mut State<S>) -> Option<U> + Send + Sync;

/// How `map_with_state` keeps state (Spark's `StateSpec`).
pub struct StateSpec<K, V, S, U> {
    func: Arc<MapFn<K, V, S, U>>,
    timeout_ms: Option<u64>,
    initial: Vec<(K, S)>,
    partitions: Option<usize>,
}

impl<K, V, S, U> StateSpec<K, V, S, U> {
    /// The function called for every record: `(key, value, state) -> output`.
    pub fn function(f: impl Fn(&K, Option<V>, &mut State<S>) -> U + Send + Sync + 'static) -> Self {
        Self::function_with_time(move |_, k, v, s| Some(f(k, v, s)))
    }

    /// The function with the batch time, whose `None` output emits nothing.
    pub fn function_with_time(
        f: impl Fn(BatchTime, &K, Option<V>, &mut State<S>) -> Option<U> + Send + Sync + 'static,
    ) -> Self {
        StateSpec {
            func: Arc::new(f),
            timeout_ms: None,
            initial: Vec::new(),
            partitions: None,
        }
    }

    /// Keys without data for `idle` are removed, after one last call with no value and
    /// [`State::is_timing_out`] true.
    pub fn timeout(mut self, idle: Duration) -> Self {
        self.timeout_ms = Some(millis(idle));
        self
    }

    /// The state to start from.
    pub fn initial_state(mut self, state: Vec<(K, S)>) -> Self {
        self.initial = state;
        self
    }

    /// The number of state partitions (default: the context's).
    pub fn partitions(mut self, partitions: usize) -> Self {
        self.partitions = Some(partitions);
        self
    }
}

/// The output of `map_with_state`: a `DStream` of the function's outputs, plus
/// [`MapWithStateStream::state_snapshots`].
pub struct MapWithStateStream<K, S, U> {
    mapped: DStream<U>,
    snapshots: Arc<dyn Fn() -> DStream<(K, S)> + Send + Sync>,
}

impl<K: Data, S: Data, U: Data> MapWithStateStream<K, S, U> {
    /// Every key's state after each batch.
    pub fn state_snapshots(&self) -> DStream<(K, S)> {
        (self.snapshots)()
    }

    /// The function's outputs (also reachable through `Deref`).
    pub fn stream(&self) -> &DStream<U> {
        &self.mapped
    }
}

impl<K, S, U> Deref for MapWithStateStream<K, S, U> {
    type Target = DStream<U>;

    fn deref(&self) -> &DStream<U> {
        &self.mapped
    }
}

struct PartitionByKey<K, V> {
    runner: UnitRunner<(K, V), Vec<Vec<(K, V)>>>,
    partitions: usize,
}

impl<K: Key, V: Data> Compute<(K, V)> for PartitionByKey<K, V> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<(K, V)>> {
        let units = self.runner.results(cx, time)?;
        let parts = (0..self.partitions)
            .map(|p| units.iter().flat_map(|u| u[p].iter().cloned()).collect())
            .collect();
        Ok(BatchData::from_partitions(parts))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.runner.parents()
    }

    fn block_tasks(&self) -> Vec<(StreamId, Arc<dyn BlockTask>)> {
        self.runner.block_tasks()
    }
}

struct MapWithState<K, V, S, U> {
    id: OperatorId,
    label: String,
    slide_ms: u64,
    parent: Arc<NodeCell<(K, V)>>,
    func: Arc<MapFn<K, V, S, U>>,
    timeout_ms: Option<u64>,
    /// Per key: the state and the batch time it was last updated.
    state: Mutex<KeyedState<K, (S, u64)>>,
    /// The state after each computed batch, kept for `state_snapshots` when it is used.
    snapshots: Mutex<BTreeMap<BatchTime, BatchData<(K, S)>>>,
    keep_snapshots: std::sync::atomic::AtomicBool,
}

impl<K: Key, V: Data, S: Data, U: Data> MapWithState<K, V, S, U> {
    fn update_partition(
        &self,
        time: BatchTime,
        map: &mut StableIndexMap<K, (S, u64)>,
        batch: &[(K, V)],
    ) -> Vec<U> {
        let now = time.as_millis();
        let mut out = Vec::new();
        for (k, v) in batch {
            let mut st = State::new(map.get(k).map(|(s, _)| s.clone()), false);
            if let Some(u) = (self.func)(time, k, Some(v.clone()), &mut st) {
                out.push(u);
            }
            if st.removed {
                map.swap_remove(k);
            } else if let Some(s) = st.value.filter(|_| st.updated || self.timeout_ms.is_some()) {
                // Data refreshes an existing key's idle clock (as Spark does with a timeout).
                match map.get_mut(k) {
                    Some(entry) => *entry = (s, now),
                    None => {
                        map.insert(detached_key(k), (s, now));
                    }
                }
            }
        }
        if let Some(timeout) = self.timeout_ms {
            let threshold = now.saturating_sub(timeout);
            let timing_out: Vec<K> = map
                .iter()
                .filter(|(_, (_, t))| *t < threshold)
                .map(|(k, _)| k.clone())
                .collect();
            for k in timing_out {
                let value = map.swap_remove(&k).map(|(s, _)| s);
                let mut st = State::new(value, true);
                if let Some(u) = (self.func)(time, &k, None, &mut st) {
                    out.push(u);
                }
            }
        }
        out
    }
}

struct MapWithStateNode<K, V, S, U>(Arc<MapWithState<K, V, S, U>>);

impl<K, V, S, U> Compute<U> for MapWithStateNode<K, V, S, U>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data,
    S: Data + Serialize + DeserializeOwned,
    U: Data,
{
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<U>> {
        let op = &*self.0;
        let batch = op.parent.get(cx, time)?.unwrap_or_default();
        let mut state = lock(&op.state);
        let empty: Vec<(K, V)> = Vec::new();
        let outputs: Vec<Vec<U>> =
            state.update_batch(op, &op.label, time, op.slide_ms, |parts| {
                cx.pool.install(|| {
                    parts
                        .par_iter_mut()
                        .enumerate()
                        .map(|(p, map)| {
                            let records = if p < batch.num_partitions() {
                                batch.partition(p)
                            } else {
                                &empty
                            };
                            op.update_partition(time, map, records)
                        })
                        .collect()
                })
            })?;
        if op.keep_snapshots.load(std::sync::atomic::Ordering::Relaxed) {
            let snap = state
                .parts
                .iter()
                .map(|m| m.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect())
                .collect();
            lock(&op.snapshots).insert(time, BatchData::from_partitions(snap));
        }
        Ok(BatchData::from_partitions(outputs))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        vec![(Arc::clone(&self.0.parent) as Arc<dyn AnyNode>, 0)]
    }

    fn stateful(&self) -> Option<Arc<dyn StatefulOp>> {
        Some(Arc::clone(&self.0) as Arc<dyn StatefulOp>)
    }

    fn forget(&self, done: BatchTime) {
        let mut snaps = lock(&self.0.snapshots);
        let kept = snaps.split_off(&done.plus_millis(1));
        *snaps = kept;
    }
}

impl<K, V, S, U> StatefulOp for MapWithState<K, V, S, U>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data,
    S: Data + Serialize + DeserializeOwned,
    U: Data,
{
    fn id(&self) -> OperatorId {
        self.id
    }

    fn kind(&self) -> &'static str {
        "map_with_state"
    }

    fn state_types(&self) -> (&'static str, &'static str) {
        (type_name::<K>(), type_name::<S>())
    }

    fn state_time(&self) -> Option<BatchTime> {
        lock(&self.state).time
    }

    fn snapshot(&self, time: BatchTime) -> Result<StateSnapshot> {
        let state = lock(&self.state);
        state.check_whole(self)?;
        let body = KeyedBody {
            partitions: state
                .parts
                .iter()
                .map(|m| {
                    m.iter()
                        .map(|(k, (s, t))| (k.clone(), (s.clone(), *t)))
                        .collect()
                })
                .collect(),
        };
        encode_state::<K, S, _>(self, time, state.time, &body)
    }

    fn restore(&self, snapshot: StateSnapshot) -> Result<()> {
        let (time, body): (_, KeyedBody<K, (S, u64)>) = decode_state::<K, S, _>(self, &snapshot)?;
        let partitions = lock(&self.state).parts.len().max(1);
        let parts = repartition_entries(body.partitions, partitions)
            .into_iter()
            .map(|entries| entries.into_iter().collect())
            .collect();
        *lock(&self.state) = KeyedState::new(time, parts);
        Ok(())
    }
}

struct StateSnapshots<K, V, S, U> {
    primary: Arc<NodeCell<U>>,
    core: Arc<MapWithState<K, V, S, U>>,
}

impl<K, V, S, U> Compute<(K, S)> for StateSnapshots<K, V, S, U>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data,
    S: Data + Serialize + DeserializeOwned,
    U: Data,
{
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<(K, S)>> {
        self.primary.get(cx, time)?;
        Ok(lock(&self.core.snapshots)
            .get(&time)
            .cloned()
            .unwrap_or_default())
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        vec![(Arc::clone(&self.primary) as Arc<dyn AnyNode>, 0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names the operator in errors; nothing else of it is used here.
    struct Op;

    impl StatefulOp for Op {
        fn id(&self) -> OperatorId {
            OperatorId(7)
        }
        fn kind(&self) -> &'static str {
            "update_state_by_key"
        }
        fn state_types(&self) -> (&'static str, &'static str) {
            ("u32", "u64")
        }
        fn state_time(&self) -> Option<BatchTime> {
            None
        }
        fn snapshot(&self, _time: BatchTime) -> Result<StateSnapshot> {
            Err(Error::config("snapshot", "not used by these tests"))
        }
        fn restore(&self, _snapshot: StateSnapshot) -> Result<()> {
            Err(Error::config("restore", "not used by these tests"))
        }
    }

    fn at(ms: u64) -> BatchTime {
        BatchTime::from_millis(ms)
    }

    /// Increments every state value, panicking at key `at_key` after the keys before it.
    fn bump(parts: &mut [StableIndexMap<u32, u64>], at_key: Option<u32>) {
        for (k, v) in parts.iter_mut().flat_map(|m| m.iter_mut()) {
            assert!(Some(*k) != at_key, "state update failed at key {k}");
            *v += 1;
        }
    }

    #[test]
    fn a_batch_that_panics_part_way_leaves_a_state_that_is_never_used_again() {
        let map: StableIndexMap<u32, u64> = [(1, 10), (2, 20), (3, 30)].into_iter().collect();
        let mut state = KeyedState::new(None, vec![map]);
        state
            .update_batch(&Op, "op", at(1_000), 1_000, |p| bump(p, None))
            .unwrap();
        assert_eq!(state.time, Some(at(1_000)));

        // Batches run in order from the state's batch.
        let err = state
            .update_batch(&Op, "op", at(3_000), 1_000, |p| bump(p, None))
            .unwrap_err();
        assert!(err.to_string().contains("must run in order"), "{err}");

        // Key 1 is updated, then key 2 panics: the maps are half updated.
        let err = state
            .update_batch(&Op, "op", at(2_000), 1_000, |p| bump(p, Some(2)))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Job { batch_time, operator, message }
                if *batch_time == at(2_000) && operator == "op" && message.contains("key 2")),
            "{err}"
        );
        assert_eq!(
            state.time,
            Some(at(1_000)),
            "the failed batch is not the state's"
        );
        let half: Vec<u64> = state.parts[0].values().copied().collect();
        assert_eq!(half, [12, 21, 31]);

        // Neither a re-run of the batch nor a snapshot may use that state.
        let mut ran = false;
        let err = state
            .update_batch(&Op, "op", at(2_000), 1_000, |_| ran = true)
            .unwrap_err();
        assert!(!ran, "the update ran on an incomplete state");
        let refused = state.check_whole(&Op).unwrap_err();
        for e in [err, refused] {
            let text = e.to_string();
            assert!(
                text.contains("update_state_by_key#") && text.contains("incomplete"),
                "{text}"
            );
        }

        // A restore (from the last checkpoint) replaces it with a whole state.
        let map: StableIndexMap<u32, u64> = [(1, 11)].into_iter().collect();
        let mut state = KeyedState::new(Some(at(1_000)), vec![map]);
        state
            .update_batch(&Op, "op", at(2_000), 1_000, |p| bump(p, None))
            .unwrap();
        assert_eq!(state.parts[0][&1], 12);
    }
}
