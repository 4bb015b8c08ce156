//! Window operators: a window of `length` that moves by `slide`, both multiples of the
//! parent's slide (checked when the operator is added: the error names both durations).
//!
//! The window at time `t` covers the parent's batches in `(t - length, t]`; the windowed
//! stream has a batch only at `zero + k * slide`. `reduce_by_key_and_window_inv` keeps the
//! previous window's values and updates them with the batches that entered and left it
//! (Spark's `ReducedWindowedDStream`); that state can be snapshotted and restored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::DStream;
use super::batch_data::BatchData;
use super::node::{
    AnyNode, BatchCx, Compute, Data, Key, NodeCell, NodeInfo, OperatorId, detached_key, lock,
};
use super::state::{StateSnapshot, StatefulOp, decode_state, encode_state, repartition_entries};
use crate::error::{Error, Result};
use crate::hash::StableIndexMap;
use crate::time::{BatchTime, millis};

/// Validated window durations, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Window {
    length_ms: u64,
    slide_ms: u64,
}

fn checked_window<T: Data>(
    stream: &DStream<T>,
    kind: &str,
    length: Duration,
    slide: Duration,
) -> Result<Window> {
    let parent = stream.slide_ms();
    let (length_ms, slide_ms) = (millis(length), millis(slide));
    let operator = format!("{kind}#{}", stream.lineage());
    for (what, ms) in [("window length", length_ms), ("slide", slide_ms)] {
        if ms == 0 || ms % parent != 0 {
            return Err(Error::Graph {
                operator,
                message: format!(
                    "{what} of {ms} ms is not a positive multiple of the parent stream's slide ({parent} ms)"
                ),
            });
        }
    }
    Ok(Window {
        length_ms,
        slide_ms,
    })
}

impl<T: Data> DStream<T> {
    /// All records of the parent's batches in the last `length`, every `slide`.
    pub fn window(&self, length: Duration, slide: Duration) -> Result<DStream<T>> {
        let w = checked_window(self, "window", length, slide)?;
        let parent = self.node();
        let id = self.graph().operator_id(
            "window",
            &format!("{}/{}", w.length_ms, w.slide_ms),
            &[self.lineage()],
        );
        let info = NodeInfo {
            id,
            kind: "window",
            slide_ms: w.slide_ms,
        };
        let node = NodeCell::new(
            info,
            Windowed {
                parent,
                length_ms: w.length_ms,
            },
        );
        Ok(DStream::from_node(Arc::clone(self.graph()), node))
    }

    /// The number of records in the window (one record per window).
    pub fn count_by_window(&self, length: Duration, slide: Duration) -> Result<DStream<u64>> {
        checked_window(self, "count_by_window", length, slide)?;
        Ok(self.count().window(length, slide)?.reduce(|a, b| a + b))
    }

    /// The records of the window combined with `f` (associative and commutative).
    pub fn reduce_by_window(
        &self,
        f: impl Fn(T, T) -> T + Send + Sync + 'static,
        length: Duration,
        slide: Duration,
    ) -> Result<DStream<T>> {
        checked_window(self, "reduce_by_window", length, slide)?;
        let f = Arc::new(f);
        let g = Arc::clone(&f);
        Ok(self
            .reduce(move |a, b| f(a, b))
            .window(length, slide)?
            .reduce(move |a, b| g(a, b)))
    }

    /// `(record, count)` over the window, computed incrementally; records whose count drops
    /// to zero leave the result.
    pub fn count_by_value_and_window(
        &self,
        length: Duration,
        slide: Duration,
    ) -> Result<DStream<(T, u64)>>
    where
        T: Key + Serialize + DeserializeOwned,
    {
        self.map(|r| (r, 1u64)).reduce_by_key_and_window_inv(
            |a, b| a + b,
            |a, b| a - b,
            length,
            slide,
            Some(|_: &T, c: &u64| *c != 0),
        )
    }
}

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Combines each key's values over the window with `f`, recomputing the whole window at
    /// every slide (no inverse function needed).
    pub fn reduce_by_key_and_window(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        length: Duration,
        slide: Duration,
    ) -> Result<DStream<(K, V)>> {
        checked_window(self, "reduce_by_key_and_window", length, slide)?;
        let f = Arc::new(f);
        let g = Arc::clone(&f);
        Ok(self
            .reduce_by_key(move |a, b| f(a, b))
            .window(length, slide)?
            .reduce_by_key(move |a, b| g(a, b)))
    }

    /// Combines each key's values over the window incrementally: the previous window's
    /// value, minus (`inverse`) the batches that left, plus (`f`) those that entered.
    /// `filter` drops entries (e.g. zero counts); it must drop only keys whose value is the
    /// identity of `f`, or later inverses would miss them. Gives the same result as
    /// [`DStream::reduce_by_key_and_window`] when `inverse` undoes `f`.
    pub fn reduce_by_key_and_window_inv<F>(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        inverse: impl Fn(V, V) -> V + Send + Sync + 'static,
        length: Duration,
        slide: Duration,
        filter: Option<F>,
    ) -> Result<DStream<(K, V)>>
    where
        K: Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
        F: Fn(&K, &V) -> bool + Send + Sync + 'static,
    {
        let w = checked_window(self, "reduce_by_key_and_window_inv", length, slide)?;
        let f = Arc::new(f);
        let g = Arc::clone(&f);
        let reduced = self.reduce_by_key(move |a, b| g(a, b));
        let parent = reduced.node();
        let partitions = self.graph().partitions;
        let id = self.graph().operator_id(
            "reduce_by_key_and_window_inv",
            &format!("{}/{}", w.length_ms, w.slide_ms),
            &[reduced.lineage()],
        );
        let info = NodeInfo {
            id,
            kind: "reduce_by_key_and_window_inv",
            slide_ms: w.slide_ms,
        };
        let core = Arc::new(ReducedWindow {
            id,
            parent,
            f,
            inverse: Box::new(inverse),
            filter: filter.map(|f| Box::new(f) as Box<dyn Fn(&K, &V) -> bool + Send + Sync>),
            window: w,
            partitions,
            state: Mutex::new(WindowState {
                time: None,
                parts: Vec::new(),
            }),
        });
        let node = NodeCell::new(info, ReducedWindowNode(core));
        Ok(DStream::from_node(Arc::clone(self.graph()), node))
    }

    /// Each key's values over the window, grouped.
    pub fn group_by_key_and_window(
        &self,
        length: Duration,
        slide: Duration,
    ) -> Result<DStream<(K, Vec<V>)>> {
        Ok(self.window(length, slide)?.group_by_key())
    }
}

/// The times of a stream with slide `step` in `(from, to]`, after the grid origin.
fn times_in(cx: &BatchCx, from_exclusive: BatchTime, to: BatchTime, step: u64) -> Vec<BatchTime> {
    let mut out = Vec::new();
    let mut t = to;
    while t > from_exclusive && t > cx.zero {
        out.push(t);
        match t.checked_minus_millis(step) {
            Some(prev) => t = prev,
            None => break,
        }
    }
    out.reverse();
    out
}

struct Windowed<T> {
    parent: Arc<NodeCell<T>>,
    length_ms: u64,
}

impl<T: Data> Compute<T> for Windowed<T> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<T>> {
        let step = self.parent.info().slide_ms;
        let mut parts = Vec::new();
        for t in times_in(cx, time.saturating_minus_millis(self.length_ms), time, step) {
            if let Some(data) = self.parent.get(cx, t)? {
                parts.extend(data.shared_partitions().iter().cloned());
            }
        }
        Ok(BatchData::from_shared(parts))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        let extra = self.length_ms - self.parent.info().slide_ms;
        vec![(Arc::clone(&self.parent) as Arc<dyn AnyNode>, extra)]
    }
}

type Reduce<V> = dyn Fn(V, V) -> V + Send + Sync;

struct WindowState<K, V> {
    time: Option<BatchTime>,
    parts: Vec<StableIndexMap<K, V>>,
}

struct ReducedWindow<K, V> {
    id: OperatorId,
    parent: Arc<NodeCell<(K, V)>>,
    f: Arc<Reduce<V>>,
    inverse: Box<Reduce<V>>,
    filter: Option<Box<dyn Fn(&K, &V) -> bool + Send + Sync>>,
    window: Window,
    partitions: usize,
    state: Mutex<WindowState<K, V>>,
}

impl<K: Key, V: Data> ReducedWindow<K, V> {
    fn add(&self, map: &mut StableIndexMap<K, V>, k: &K, v: &V) {
        match map.get_mut(k) {
            Some(slot) => *slot = (self.f)(slot.clone(), v.clone()),
            None => {
                // The window's state outlives the batch the key came in.
                map.insert(detached_key(k), v.clone());
            }
        }
    }

    fn compute_window(&self, cx: &BatchCx, time: BatchTime) -> Result<Vec<StableIndexMap<K, V>>> {
        let step = self.parent.info().slide_ms;
        let mut state = lock(&self.state);
        let prev = time.checked_minus_millis(self.window.slide_ms);
        let mut parts: Vec<StableIndexMap<K, V>> = if state.time.is_some() && state.time == prev {
            // Incremental: previous window, minus the batches that left, plus those that entered.
            let prev = state.time.unwrap_or(time);
            let mut parts = std::mem::take(&mut state.parts);
            parts.resize_with(self.partitions, StableIndexMap::default);
            let left = times_in(
                cx,
                prev.saturating_minus_millis(self.window.length_ms),
                time.saturating_minus_millis(self.window.length_ms),
                step,
            );
            for t in left {
                let Some(data) = self.parent.get(cx, t)? else {
                    continue;
                };
                for (p, part) in data.partitions().enumerate() {
                    for (k, v) in part {
                        if let Some(slot) = parts[p % self.partitions].get_mut(k) {
                            *slot = (self.inverse)(slot.clone(), v.clone());
                        }
                    }
                }
            }
            for t in times_in(cx, prev, time, step) {
                let Some(data) = self.parent.get(cx, t)? else {
                    continue;
                };
                for (p, part) in data.partitions().enumerate() {
                    for (k, v) in part {
                        self.add(&mut parts[p % self.partitions], k, v);
                    }
                }
            }
            parts
        } else {
            // No previous window (the first, or after a restart without a snapshot): reduce
            // the whole window.
            let mut parts: Vec<StableIndexMap<K, V>> = (0..self.partitions)
                .map(|_| StableIndexMap::default())
                .collect();
            for t in times_in(
                cx,
                time.saturating_minus_millis(self.window.length_ms),
                time,
                step,
            ) {
                let Some(data) = self.parent.get(cx, t)? else {
                    continue;
                };
                for (p, part) in data.partitions().enumerate() {
                    for (k, v) in part {
                        self.add(&mut parts[p % self.partitions], k, v);
                    }
                }
            }
            parts
        };
        if let Some(filter) = &self.filter {
            for part in &mut parts {
                part.retain(|k, v| filter(k, v));
            }
        }
        if state.time.is_none_or(|t| t < time) {
            state.time = Some(time);
            state.parts = parts.clone();
        }
        Ok(parts)
    }
}

struct ReducedWindowNode<K, V>(Arc<ReducedWindow<K, V>>);

impl<K, V> Compute<(K, V)> for ReducedWindowNode<K, V>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data + Serialize + DeserializeOwned,
{
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<(K, V)>> {
        let parts = self.0.compute_window(cx, time)?;
        Ok(BatchData::from_partitions(
            parts.into_iter().map(|m| m.into_iter().collect()).collect(),
        ))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        let extra = self.0.window.length_ms + self.0.window.slide_ms;
        vec![(Arc::clone(&self.0.parent) as Arc<dyn AnyNode>, extra)]
    }

    fn stateful(&self) -> Option<Arc<dyn StatefulOp>> {
        Some(Arc::clone(&self.0) as Arc<dyn StatefulOp>)
    }
}

#[derive(Serialize, Deserialize)]
struct WindowBody<K, V> {
    partitions: Vec<Vec<(K, V)>>,
}

impl<K, V> StatefulOp for ReducedWindow<K, V>
where
    K: Key + Serialize + DeserializeOwned,
    V: Data + Serialize + DeserializeOwned,
{
    fn id(&self) -> OperatorId {
        self.id
    }

    fn kind(&self) -> &'static str {
        "reduce_by_key_and_window_inv"
    }

    fn state_types(&self) -> (&'static str, &'static str) {
        (std::any::type_name::<K>(), std::any::type_name::<V>())
    }

    fn state_time(&self) -> Option<BatchTime> {
        lock(&self.state).time
    }

    fn snapshot(&self, time: BatchTime) -> Result<StateSnapshot> {
        let state = lock(&self.state);
        let body = WindowBody {
            partitions: state
                .parts
                .iter()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .collect(),
        };
        encode_state::<K, V, _>(self, time, state.time, &body)
    }

    fn restore(&self, snapshot: StateSnapshot) -> Result<()> {
        let (time, body): (Option<BatchTime>, WindowBody<K, V>) =
            decode_state::<K, V, _>(self, &snapshot)?;
        let parts = repartition_entries(body.partitions, self.partitions)
            .into_iter()
            .map(|entries| entries.into_iter().collect())
            .collect();
        *lock(&self.state) = WindowState { time, parts };
        Ok(())
    }
}
