//! Operators on key-value streams: map-side combining, hash partitioning, joins.

use std::sync::Arc;

use rayon::prelude::*;

use super::DStream;
use super::batch_data::BatchData;
use super::node::{AnyNode, BatchCx, Compute, Data, Key, NodeCell, NodeInfo};
use super::pipe::{BlockTask, Folding, Stage, Unit, UnitRunner};
use crate::block::StreamId;
use crate::error::{Error, Result};
use crate::hash::{StableIndexMap, StableState, partition_of_key};
use crate::time::BatchTime;

type HashMap<K, V> = hashbrown::HashMap<K, V, StableState>;

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Combines the values of each key with `f` (associative and commutative), map-side
    /// first, into the default number of partitions.
    ///
    /// ```
    /// # fn f(words: engine::DStream<engine::Str>) {
    /// let counts = words.map(|w| (w, 1u64)).reduce_by_key(|a, b| a + b);
    /// # }
    /// ```
    pub fn reduce_by_key(&self, f: impl Fn(V, V) -> V + Send + Sync + 'static) -> DStream<(K, V)> {
        self.reduce_by_key_with_partitions(f, self.graph().partitions)
    }

    /// [`DStream::reduce_by_key`] into `partitions` partitions.
    pub fn reduce_by_key_with_partitions(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        partitions: usize,
    ) -> DStream<(K, V)> {
        let f = Arc::new(f);
        let g = Arc::clone(&f);
        // In place: the accumulated value is cloned into `f` (free for numbers; for large
        // values, combine_by_key merges by value without clones).
        self.combine(
            "reduce_by_key",
            |v| v,
            move |c: &mut V, v| *c = g(c.clone(), v),
            move |c: &mut V, d: &V| *c = f(c.clone(), d.clone()),
            Some,
            partitions,
        )
    }

    /// Spark's `combineByKey`: `create` makes a combiner from a key's first value in a unit,
    /// `merge_value` adds a value to it, `merge_combiners` merges two combiners.
    pub fn combine_by_key<C: Data>(
        &self,
        create: impl Fn(V) -> C + Send + Sync + 'static,
        merge_value: impl Fn(C, V) -> C + Send + Sync + 'static,
        merge_combiners: impl Fn(C, C) -> C + Send + Sync + 'static,
    ) -> DStream<(K, C)> {
        self.combine_by_key_with_partitions(
            create,
            merge_value,
            merge_combiners,
            self.graph().partitions,
        )
    }

    /// [`DStream::combine_by_key`] into `partitions` partitions.
    pub fn combine_by_key_with_partitions<C: Data>(
        &self,
        create: impl Fn(V) -> C + Send + Sync + 'static,
        merge_value: impl Fn(C, V) -> C + Send + Sync + 'static,
        merge_combiners: impl Fn(C, C) -> C + Send + Sync + 'static,
        partitions: usize,
    ) -> DStream<(K, C)> {
        // By value: the combiner sits in an `Option` so it can be moved out, merged and put
        // back in place (hashbrown's replace_entry_with would erase and re-insert the entry).
        self.combine(
            "combine_by_key",
            move |v| Some(create(v)),
            move |slot: &mut Option<C>, v| {
                if let Some(c) = slot.take() {
                    *slot = Some(merge_value(c, v));
                }
            },
            move |slot: &mut Option<C>, other: &Option<C>| {
                *slot = match (slot.take(), other) {
                    (Some(c), Some(d)) => Some(merge_combiners(c, d.clone())),
                    (c, None) => c,
                    (None, d) => d.clone(),
                }
            },
            |slot| slot,
            partitions,
        )
    }

    /// All values of each key, in a deterministic order (unit order, then record order).
    pub fn group_by_key(&self) -> DStream<(K, Vec<V>)> {
        self.group_by_key_with_partitions(self.graph().partitions)
    }

    /// [`DStream::group_by_key`] into `partitions` partitions.
    pub fn group_by_key_with_partitions(&self, partitions: usize) -> DStream<(K, Vec<V>)> {
        self.combine(
            "group_by_key",
            |v| vec![v],
            |c: &mut Vec<V>, v| c.push(v),
            |c: &mut Vec<V>, d: &Vec<V>| c.extend(d.iter().cloned()),
            Some,
            partitions,
        )
    }

    /// The map-side combine: per unit, a hash map of slots `S` (created from a key's first
    /// value, updated in place by the others) split into the partitions' maps; the units'
    /// maps are folded, in unit order, into per-batch maps (as blocks arrive, for an input);
    /// each slot is finished into a combiner for the output.
    #[allow(clippy::too_many_arguments)]
    fn combine<C: Data, S: Data>(
        &self,
        kind: &'static str,
        create: impl Fn(V) -> S + Send + Sync + 'static,
        merge_value: impl Fn(&mut S, V) + Send + Sync + 'static,
        merge_slots: impl Fn(&mut S, &S) + Send + Sync + 'static,
        finish: impl Fn(S) -> Option<C> + Send + Sync + 'static,
        partitions: usize,
    ) -> DStream<(K, C)> {
        let partitions = self.checked_partitions(kind, partitions);
        let id = self
            .graph()
            .operator_id(kind, &partitions.to_string(), &[self.lineage()]);
        let info = NodeInfo {
            id,
            kind,
            slide_ms: self.slide_ms(),
        };
        let empty = move || -> Partials<K, S> {
            (0..partitions)
                .map(|_| HashMap::with_hasher(StableState))
                .collect()
        };
        // A block's map is one map (routing its keys here costs the same hash as splitting
        // it would); a branch's fold is already partitioned.
        let target = move |route: bool, i: usize, k: &K| match (route, partitions) {
            (false, _) => i,
            (true, 1) => 0,
            (true, n) => partition_of_key(k, n),
        };
        let merge_slots = Arc::new(merge_slots);
        let merge_shared = Arc::clone(&merge_slots);
        let folding = Folding {
            empty: Box::new(empty),
            add: Box::new(move |acc: &mut Partials<K, S>, unit: &Partials<K, S>| {
                let route = unit.len() != acc.len();
                for (i, from) in unit.iter().enumerate() {
                    for (k, s) in from {
                        let into = &mut acc[target(route, i, k)];
                        match into.get_mut(k) {
                            Some(slot) => merge_shared(slot, s),
                            None => {
                                into.insert(k.clone(), s.clone());
                            }
                        }
                    }
                }
            }),
            // The same inserts in the same order as `add`, so the same maps.
            add_owned: Box::new(move |acc: &mut Partials<K, S>, unit: Partials<K, S>| {
                let route = unit.len() != acc.len();
                for (i, from) in unit.into_iter().enumerate() {
                    for (k, s) in from {
                        let into = &mut acc[target(route, i, &k)];
                        match into.get_mut(&k) {
                            Some(slot) => merge_slots(slot, &s),
                            None => {
                                into.insert(k, s);
                            }
                        }
                    }
                }
            }),
        };
        let per_unit = move |stage: &dyn Stage<(K, V)>, unit: Unit<'_>| {
            let mut map: HashMap<K, S> = HashMap::with_hasher(StableState);
            stage.run_chunks(unit, &mut |chunk: &mut Vec<(K, V)>| {
                for (k, v) in chunk.drain(..) {
                    match map.get_mut(&k) {
                        Some(slot) => merge_value(slot, v),
                        None => {
                            map.insert(k, create(v));
                        }
                    }
                }
            })?;
            // Not split by partition here: the fold routes each key (see `add`).
            Ok(vec![map])
        };
        let runner = UnitRunner::folding(&self.pipe().branches, info.label(), per_unit, folding);
        let node = NodeCell::new(
            info,
            Combine {
                runner,
                finish: Box::new(finish),
                partitions,
            },
        );
        DStream::from_node(Arc::clone(self.graph()), node)
    }

    /// Applies `f` to every value, keeping the key.
    pub fn map_values<W: Data>(
        &self,
        f: impl Fn(V) -> W + Send + Sync + 'static,
    ) -> DStream<(K, W)> {
        self.map(move |(k, v)| (k, f(v)))
    }

    /// Applies `f` to every value and pairs each result with the key.
    pub fn flat_map_values<W: Data, I>(
        &self,
        f: impl Fn(V) -> I + Send + Sync + 'static,
    ) -> DStream<(K, W)>
    where
        I: IntoIterator<Item = W> + 'static,
    {
        self.flat_map(move |(k, v)| {
            let values: Vec<W> = f(v).into_iter().collect();
            values.into_iter().map(move |w| (k.clone(), w))
        })
    }

    /// For each key in either stream, the values from both (Spark's `cogroup`).
    pub fn cogroup<W: Data>(&self, other: &DStream<(K, W)>) -> DStream<(K, (Vec<V>, Vec<W>))> {
        self.cogroup_with_partitions(other, self.graph().partitions)
    }

    /// [`DStream::cogroup`] into `partitions` partitions.
    pub fn cogroup_with_partitions<W: Data>(
        &self,
        other: &DStream<(K, W)>,
        partitions: usize,
    ) -> DStream<(K, (Vec<V>, Vec<W>))> {
        if self.slide_ms() != other.slide_ms() {
            self.graph().error(Error::Graph {
                operator: format!("cogroup#{}", self.lineage()),
                message: format!(
                    "the streams have different slides ({} ms and {} ms)",
                    self.slide_ms(),
                    other.slide_ms()
                ),
            });
        }
        let partitions = self.checked_partitions("cogroup", partitions);
        let left = self.group_by_key_with_partitions(partitions).node();
        let right = other.group_by_key_with_partitions(partitions).node();
        let id = self.graph().operator_id(
            "cogroup",
            &partitions.to_string(),
            &[self.lineage(), other.lineage()],
        );
        let info = NodeInfo {
            id,
            kind: "cogroup",
            slide_ms: self.slide_ms(),
        };
        DStream::from_node(
            Arc::clone(self.graph()),
            NodeCell::new(info, CoGroup { left, right }),
        )
    }

    /// Pairs of values for keys present in both streams (an inner join per batch).
    pub fn join<W: Data>(&self, other: &DStream<(K, W)>) -> DStream<(K, (V, W))> {
        self.cogroup(other).flat_map(|(k, (vs, ws))| {
            let mut out = Vec::with_capacity(vs.len() * ws.len());
            for v in &vs {
                for w in &ws {
                    out.push((k.clone(), (v.clone(), w.clone())));
                }
            }
            out
        })
    }

    /// Every value of this stream, with each matching value of `other` or `None`.
    pub fn left_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (V, Option<W>))> {
        self.cogroup(other).flat_map(|(k, (vs, ws))| {
            let mut out = Vec::new();
            for v in &vs {
                if ws.is_empty() {
                    out.push((k.clone(), (v.clone(), None)));
                }
                for w in &ws {
                    out.push((k.clone(), (v.clone(), Some(w.clone()))));
                }
            }
            out
        })
    }

    /// Every value of `other`, with each matching value of this stream or `None`.
    pub fn right_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (Option<V>, W))> {
        self.cogroup(other).flat_map(|(k, (vs, ws))| {
            let mut out = Vec::new();
            for w in &ws {
                if vs.is_empty() {
                    out.push((k.clone(), (None, w.clone())));
                }
                for v in &vs {
                    out.push((k.clone(), (Some(v.clone()), w.clone())));
                }
            }
            out
        })
    }

    /// Every value of both streams, matched where the keys match.
    pub fn full_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (Option<V>, Option<W>))> {
        self.cogroup(other).flat_map(|(k, (vs, ws))| {
            let mut out = Vec::new();
            match (vs.is_empty(), ws.is_empty()) {
                (false, true) => {
                    out.extend(vs.iter().map(|v| (k.clone(), (Some(v.clone()), None))))
                }
                (true, false) => {
                    out.extend(ws.iter().map(|w| (k.clone(), (None, Some(w.clone())))))
                }
                _ => {
                    for v in &vs {
                        for w in &ws {
                            out.push((k.clone(), (Some(v.clone()), Some(w.clone()))));
                        }
                    }
                }
            }
            out
        })
    }
}

/// Per partition, a map of combiner slots.
type Partials<K, S> = Vec<HashMap<K, S>>;

/// The reduce side of a combine: the per-batch maps (one per branch, folded if several),
/// finished into each partition's records, in parallel over partitions.
struct Combine<K, V, S, C> {
    runner: UnitRunner<(K, V), Partials<K, S>>,
    finish: Box<dyn Fn(S) -> Option<C> + Send + Sync>,
    partitions: usize,
}

impl<K: Key, V: Data, S: Data, C: Data> Compute<(K, C)> for Combine<K, V, S, C> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<(K, C)>> {
        let mut branches = self.runner.branch_results(cx, time)?;
        let merged: Partials<K, S> = match branches.len() {
            1 => branches.remove(0),
            _ => self.runner.fold(branches),
        };
        // Each partition's map becomes its records, in the map's order, and is freed as
        // they are made: the batch never holds both in full.
        let output = |map: HashMap<K, S>| -> Vec<(K, C)> {
            let mut records = Vec::with_capacity(map.len());
            records.extend(
                map.into_iter()
                    .filter_map(|(k, s)| (self.finish)(s).map(|c| (k, c))),
            );
            records
        };
        let mut parts: Vec<Vec<(K, C)>> = if merged.len() <= 1 {
            merged.into_iter().map(output).collect()
        } else {
            cx.pool
                .install(|| merged.into_par_iter().map(output).collect())
        };
        // A fold starts from `partitions` maps, so this only guards the output's shape.
        parts.resize_with(self.partitions, Vec::new);
        Ok(BatchData::from_partitions(parts))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.runner.parents()
    }

    fn block_tasks(&self) -> Vec<(StreamId, Arc<dyn BlockTask>)> {
        self.runner.block_tasks()
    }

    /// Partition `p` is the fold's map `p`: one entry per key, each routed by
    /// `partition_of_key` (see `target` in [`DStream::combine`]).
    fn unique_keys_in_partitions(&self) -> Option<usize> {
        Some(self.partitions)
    }
}

struct CoGroup<K, V, W> {
    left: Arc<NodeCell<(K, Vec<V>)>>,
    right: Arc<NodeCell<(K, Vec<W>)>>,
}

impl<K: Key, V: Data, W: Data> Compute<(K, (Vec<V>, Vec<W>))> for CoGroup<K, V, W> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<(K, (Vec<V>, Vec<W>))>> {
        let left = self.left.get(cx, time)?.unwrap_or_default();
        let right = self.right.get(cx, time)?.unwrap_or_default();
        let partitions = left.num_partitions().max(right.num_partitions());
        let empty_l: Vec<(K, Vec<V>)> = Vec::new();
        let empty_r: Vec<(K, Vec<W>)> = Vec::new();
        let parts = (0..partitions)
            .map(|p| {
                let l = if p < left.num_partitions() {
                    left.partition(p)
                } else {
                    &empty_l
                };
                let r = if p < right.num_partitions() {
                    right.partition(p)
                } else {
                    &empty_r
                };
                // Left keys in their order, then keys only on the right in theirs.
                let mut by_key: StableIndexMap<K, (Vec<V>, Vec<W>)> = StableIndexMap::default();
                for (k, vs) in l {
                    by_key
                        .entry(k.clone())
                        .or_default()
                        .0
                        .extend(vs.iter().cloned());
                }
                for (k, ws) in r {
                    by_key
                        .entry(k.clone())
                        .or_default()
                        .1
                        .extend(ws.iter().cloned());
                }
                by_key.into_iter().collect()
            })
            .collect();
        Ok(BatchData::from_partitions(parts))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        vec![
            (Arc::clone(&self.left) as Arc<dyn AnyNode>, 0),
            (Arc::clone(&self.right) as Arc<dyn AnyNode>, 0),
        ]
    }
}
