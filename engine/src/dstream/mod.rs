//! The `DStream` API: typed streams of records, cut into batches.
//!
//! A [`DStream<T>`] is a handle on a node of the pipeline's graph. Transformations return
//! new handles; output operations register jobs that run once per batch. Nothing runs until
//! [`crate::StreamingContext::start`].
//!
//! How the operators execute (see also the `pipe` module):
//! - Narrow operators (`map`, `flat_map`, `filter`, `map_partitions`, `union`) are fused
//!   into one pass per unit of input; nothing is materialised between them.
//! - Key operators (`reduce_by_key`, `combine_by_key`, `group_by_key`, `count_by_value`,
//!   joins) combine map-side, per unit, into hash maps split into `partitions` buckets by
//!   the stable hash of the key; at batch time each partition merges its buckets in unit
//!   order, in parallel over partitions. For an input stream the map-side work runs as
//!   blocks arrive, so a batch's raw text never waits in memory for the batch time.
//! - Windows and state read the per-batch results of their parents, kept as long as their
//!   window needs them.

pub(crate) mod batch_data;
pub(crate) mod node;
pub(crate) mod pair;
pub(crate) mod pipe;
pub(crate) mod state;
pub(crate) mod window;

use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use batch_data::BatchData;
pub use node::{Data, Key, OperatorId};
pub use state::{State, StateSnapshot, StateSpec};

use node::{AnyNode, BatchCx, Compute, NodeCell, NodeInfo, catch, job_error};
use pipe::{
    Branch, FilterStage, FlatMapStage, MapPartitionsStage, MapStage, PartStage, Source, Stage,
    UnitRunner,
};

use crate::error::{Error, Result};
use crate::graph::GraphBuilder;
use crate::sink::{self, TextRecord};
use crate::time::BatchTime;

/// A stream of records of type `T`, cut into batches (see the module docs).
pub struct DStream<T> {
    pipe: Pipe<T>,
    graph: Arc<GraphBuilder>,
    /// Set for the streams returned by the context's input constructors.
    input: Option<crate::block::StreamId>,
    /// This handle's materialised node, shared by its clones, so that several consumers of
    /// one stream compute it once per batch.
    materialized: Arc<OnceLock<Arc<NodeCell<T>>>>,
}

impl<T> Clone for DStream<T> {
    fn clone(&self) -> Self {
        DStream {
            pipe: self.pipe.clone(),
            graph: Arc::clone(&self.graph),
            input: self.input,
            materialized: Arc::clone(&self.materialized),
        }
    }
}

/// A stream as a list of fused branches (see [`pipe`]).
pub(crate) struct Pipe<T> {
    pub branches: Vec<Branch<T>>,
    pub slide_ms: u64,
    pub lineage: OperatorId,
    /// Set when the stream is exactly a node's output (nothing fused after it).
    pub node: Option<Arc<NodeCell<T>>>,
}

impl<T> Clone for Pipe<T> {
    fn clone(&self) -> Self {
        Pipe {
            branches: self.branches.clone(),
            slide_ms: self.slide_ms,
            lineage: self.lineage,
            node: self.node.clone(),
        }
    }
}

impl<T: Data> DStream<T> {
    pub(crate) fn from_pipe(graph: Arc<GraphBuilder>, pipe: Pipe<T>) -> Self {
        DStream {
            pipe,
            graph,
            input: None,
            materialized: Arc::default(),
        }
    }

    pub(crate) fn from_input(
        graph: Arc<GraphBuilder>,
        pipe: Pipe<T>,
        id: crate::block::StreamId,
    ) -> Self {
        DStream {
            pipe,
            graph,
            input: Some(id),
            materialized: Arc::default(),
        }
    }

    /// The input stream's id, for a stream returned by an input constructor of the context
    /// (e.g. to give it its own block handler); `None` for derived streams.
    pub fn input_stream_id(&self) -> Option<crate::block::StreamId> {
        self.input
    }

    pub(crate) fn from_node(graph: Arc<GraphBuilder>, node: Arc<NodeCell<T>>) -> Self {
        let info = node.info().clone();
        let pipe = Pipe {
            branches: vec![Branch {
                source: Source::Node(Arc::clone(&node) as Arc<dyn AnyNode>),
                stage: Arc::new(PartStage::<T>(PhantomData)),
            }],
            slide_ms: info.slide_ms,
            lineage: info.id,
            node: Some(node),
        };
        Self::from_pipe(graph, pipe)
    }

    pub(crate) fn graph(&self) -> &Arc<GraphBuilder> {
        &self.graph
    }

    pub(crate) fn pipe(&self) -> &Pipe<T> {
        &self.pipe
    }

    /// The stream's slide: it has a batch at `zero + k * slide` (the batch interval, or a
    /// window's slide).
    pub fn slide_ms(&self) -> u64 {
        self.pipe.slide_ms
    }

    /// The stream's lineage identity (see [`OperatorId`]).
    pub fn lineage(&self) -> OperatorId {
        self.pipe.lineage
    }

    /// The materialised node of this stream (created on first use).
    pub(crate) fn node(&self) -> Arc<NodeCell<T>> {
        if let Some(node) = &self.pipe.node {
            return Arc::clone(node);
        }
        Arc::clone(self.materialized.get_or_init(|| {
            let id = self.graph.operator_id("collect", "", &[self.pipe.lineage]);
            let info = NodeInfo {
                id,
                kind: "collect",
                slide_ms: self.pipe.slide_ms,
            };
            let runner = UnitRunner::new(&self.pipe.branches, info.label(), |stage, unit| {
                let mut records = Vec::new();
                stage.run_chunks(unit, &mut |chunk| records.append(chunk))?;
                Ok(records)
            });
            NodeCell::new(info, Collect { runner })
        }))
    }

    fn narrow<U: Data>(
        &self,
        kind: &'static str,
        make: impl Fn(Arc<dyn Stage<T>>) -> Arc<dyn Stage<U>>,
    ) -> DStream<U> {
        let pipe = Pipe {
            branches: self
                .pipe
                .branches
                .iter()
                .map(|b| Branch {
                    source: b.source.clone(),
                    stage: make(Arc::clone(&b.stage)),
                })
                .collect(),
            slide_ms: self.pipe.slide_ms,
            lineage: self.graph.operator_id(kind, "", &[self.pipe.lineage]),
            node: None,
        };
        DStream::from_pipe(Arc::clone(&self.graph), pipe)
    }

    /// Applies `f` to every record.
    pub fn map<U: Data>(&self, f: impl Fn(T) -> U + Send + Sync + 'static) -> DStream<U> {
        let f = Arc::new(f);
        self.narrow("map", |prev| {
            Arc::new(MapStage {
                prev,
                f: Arc::clone(&f),
            })
        })
    }

    /// Applies `f` to every record and flattens the results.
    ///
    /// ```
    /// # fn f(lines: engine::DStream<engine::Str>) {
    /// let words = lines.flat_map(|line| line.split(' '));
    /// # }
    /// ```
    pub fn flat_map<U: Data, I>(&self, f: impl Fn(T) -> I + Send + Sync + 'static) -> DStream<U>
    where
        I: IntoIterator<Item = U> + 'static,
    {
        let f = Arc::new(f);
        self.narrow("flat_map", |prev| {
            Arc::new(FlatMapStage {
                prev,
                f: Arc::clone(&f),
            })
        })
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(&self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> DStream<T> {
        let f = Arc::new(f);
        self.narrow("filter", |prev| {
            Arc::new(FilterStage {
                prev,
                f: Arc::clone(&f),
            })
        })
    }

    /// Applies `f` to each partition's records as a whole (for an input stream, a
    /// partition is a block).
    pub fn map_partitions<U: Data, I>(
        &self,
        f: impl Fn(Vec<T>) -> I + Send + Sync + 'static,
    ) -> DStream<U>
    where
        I: IntoIterator<Item = U> + 'static,
    {
        let f = Arc::new(f);
        self.narrow("map_partitions", |prev| {
            Arc::new(MapPartitionsStage {
                prev,
                f: Arc::clone(&f),
            })
        })
    }

    /// The records of both streams (which must have the same slide).
    pub fn union(&self, other: &DStream<T>) -> DStream<T> {
        if self.pipe.slide_ms != other.pipe.slide_ms {
            self.graph.error(Error::Graph {
                operator: format!("union#{}", self.pipe.lineage),
                message: format!(
                    "the streams have different slides ({} ms and {} ms)",
                    self.pipe.slide_ms, other.pipe.slide_ms
                ),
            });
        }
        let mut branches = self.pipe.branches.clone();
        branches.extend(other.pipe.branches.iter().cloned());
        let pipe = Pipe {
            branches,
            slide_ms: self.pipe.slide_ms,
            lineage: self
                .graph
                .operator_id("union", "", &[self.pipe.lineage, other.pipe.lineage]),
            node: None,
        };
        DStream::from_pipe(Arc::clone(&self.graph), pipe)
    }

    /// Redistributes the records over `partitions` partitions, round robin.
    pub fn repartition(&self, partitions: usize) -> DStream<T> {
        let partitions = self.checked_partitions("repartition", partitions);
        let id =
            self.graph
                .operator_id("repartition", &partitions.to_string(), &[self.pipe.lineage]);
        let info = NodeInfo {
            id,
            kind: "repartition",
            slide_ms: self.pipe.slide_ms,
        };
        let runner = UnitRunner::new(&self.pipe.branches, info.label(), move |stage, unit| {
            let mut buckets: Vec<Vec<T>> = (0..partitions).map(|_| Vec::new()).collect();
            let mut next = (unit.seed() % partitions as u64) as usize;
            stage.run(unit, &mut |r| {
                buckets[next].push(r);
                next = if next + 1 == partitions { 0 } else { next + 1 };
            })?;
            Ok(buckets)
        });
        let node = NodeCell::new(info, Repartition { runner, partitions });
        DStream::from_node(Arc::clone(&self.graph), node)
    }

    pub(crate) fn checked_partitions(&self, op: &str, partitions: usize) -> usize {
        if partitions == 0 {
            self.graph.error(Error::Graph {
                operator: format!("{op}#{}", self.pipe.lineage),
                message: "the number of partitions must be greater than zero".to_owned(),
            });
            return 1;
        }
        partitions
    }

    /// One record per batch: the number of records (0 for an empty batch, as Spark's `count`).
    pub fn count(&self) -> DStream<u64> {
        self.map(|_| 1u64).fold("count", |a, b| a + b, Some(0))
    }

    /// At most one record per batch: all records combined with `f`, which must be
    /// associative and commutative (nothing for an empty batch).
    pub fn reduce(&self, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> DStream<T> {
        self.fold("reduce", f, None)
    }

    fn fold(
        &self,
        kind: &'static str,
        f: impl Fn(T, T) -> T + Send + Sync + 'static,
        empty: Option<T>,
    ) -> DStream<T> {
        let f = Arc::new(f);
        let id = self.graph.operator_id(kind, "", &[self.pipe.lineage]);
        let info = NodeInfo {
            id,
            kind,
            slide_ms: self.pipe.slide_ms,
        };
        let unit_f = Arc::clone(&f);
        let runner = UnitRunner::new(&self.pipe.branches, info.label(), move |stage, unit| {
            let mut acc: Option<T> = None;
            stage.run(unit, &mut |r| {
                acc = Some(match acc.take() {
                    Some(a) => unit_f(a, r),
                    None => r,
                });
            })?;
            Ok(acc)
        });
        let node = NodeCell::new(info, Fold { runner, f, empty });
        DStream::from_node(Arc::clone(&self.graph), node)
    }

    /// `(record, how many times it occurs)` per batch, hash partitioned.
    pub fn count_by_value(&self) -> DStream<(T, u64)>
    where
        T: Key,
    {
        self.map(|r| (r, 1u64)).reduce_by_key(|a, b| a + b)
    }

    /// Applies `f` to each batch's data as a whole (with the batch time).
    pub fn transform<U: Data>(
        &self,
        f: impl Fn(&BatchData<T>, BatchTime) -> BatchData<U> + Send + Sync + 'static,
    ) -> DStream<U> {
        let parent = self.node();
        let id = self
            .graph
            .operator_id("transform", "", &[self.pipe.lineage]);
        let info = NodeInfo {
            id,
            kind: "transform",
            slide_ms: self.pipe.slide_ms,
        };
        DStream::from_node(
            Arc::clone(&self.graph),
            NodeCell::new(info, Transform { parent, f }),
        )
    }

    /// Applies `f` to each batch's data of this stream and `other` (same slide).
    pub fn transform_with<U: Data, V: Data>(
        &self,
        other: &DStream<U>,
        f: impl Fn(&BatchData<T>, &BatchData<U>, BatchTime) -> BatchData<V> + Send + Sync + 'static,
    ) -> DStream<V> {
        if self.pipe.slide_ms != other.pipe.slide_ms {
            self.graph.error(Error::Graph {
                operator: format!("transform_with#{}", self.pipe.lineage),
                message: format!(
                    "the streams have different slides ({} ms and {} ms)",
                    self.pipe.slide_ms, other.pipe.slide_ms
                ),
            });
        }
        let id = self.graph.operator_id(
            "transform_with",
            "",
            &[self.pipe.lineage, other.pipe.lineage],
        );
        let info = NodeInfo {
            id,
            kind: "transform_with",
            slide_ms: self.pipe.slide_ms,
        };
        let node = NodeCell::new(
            info,
            TransformWith {
                left: self.node(),
                right: other.node(),
                f,
            },
        );
        DStream::from_node(Arc::clone(&self.graph), node)
    }

    // ------------------------------------------------------------------ output operations

    /// Prints the first `n` records of every batch to standard output, under a header with
    /// the batch time (as Spark's `print`).
    pub fn print(&self, n: usize)
    where
        T: Debug,
    {
        sink::print(self, n);
    }

    /// Writes every batch to `prefix-<batch time ms>[.suffix]/part-NNNNN`, one file per
    /// partition, one record per line. Each part file is written to a temporary name,
    /// synced, and renamed into place, then the directory is synced and a `_SUCCESS` marker
    /// added; re-running a batch rewrites identical files.
    pub fn save_as_text_files(&self, prefix: impl AsRef<Path>, suffix: &str)
    where
        T: TextRecord,
    {
        sink::save_as_text_files(self, prefix.as_ref(), suffix);
    }

    /// Writes every batch to `sink` under its contract ([`sink::Sink`], [`sink::Delivery`]).
    /// `pipeline` names the pipeline in every key the sink stores; `offsets` (from
    /// [`crate::StreamingContext::kafka_stream`]) gives the sink each batch's source offset
    /// ranges, to store atomically with the output.
    pub fn write_to<S: sink::Sink<T> + ?Sized>(
        &self,
        pipeline: &str,
        sink: Arc<S>,
        offsets: Option<crate::source::kafka::KafkaOffsets>,
    ) {
        sink::write_to(self, pipeline.to_owned(), sink, offsets);
    }

    /// Calls `f` with every batch's data and time, on the job thread, in batch order.
    pub fn foreach_batch(&self, mut f: impl FnMut(&BatchData<T>, BatchTime) + Send + 'static) {
        sink::foreach_batch(self, "foreach_batch", move |data, time| {
            f(data, time);
            Ok(())
        });
    }

    /// Like [`DStream::foreach_batch`], for a function that can fail: an error fails the
    /// batch (and stops the context, leaving the batch pending for a restart).
    pub fn try_foreach_batch<E>(
        &self,
        mut f: impl FnMut(&BatchData<T>, BatchTime) -> Result<(), E> + Send + 'static,
    ) where
        E: std::fmt::Display,
    {
        sink::foreach_batch(self, "try_foreach_batch", move |data, time| {
            f(data, time).map_err(|e| e.to_string())
        });
    }
}

/// A pipe materialised: one partition per unit.
struct Collect<T> {
    runner: UnitRunner<T, Vec<T>>,
}

impl<T: Data> Compute<T> for Collect<T> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<T>> {
        Ok(BatchData::from_shared(self.runner.results(cx, time)?))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.runner.parents()
    }

    fn block_tasks(&self) -> Vec<(crate::block::StreamId, Arc<dyn pipe::BlockTask>)> {
        self.runner.block_tasks()
    }
}

struct Repartition<T> {
    runner: UnitRunner<T, Vec<Vec<T>>>,
    partitions: usize,
}

impl<T: Data> Compute<T> for Repartition<T> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<T>> {
        let units = self.runner.results(cx, time)?;
        let parts = (0..self.partitions)
            .map(|p| units.iter().flat_map(|u| u[p].iter().cloned()).collect())
            .collect();
        Ok(BatchData::from_partitions(parts))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.runner.parents()
    }

    fn block_tasks(&self) -> Vec<(crate::block::StreamId, Arc<dyn pipe::BlockTask>)> {
        self.runner.block_tasks()
    }
}

type Reducer<T> = dyn Fn(T, T) -> T + Send + Sync;

struct Fold<T> {
    runner: UnitRunner<T, Option<T>>,
    f: Arc<Reducer<T>>,
    empty: Option<T>,
}

impl<T: Data> Compute<T> for Fold<T> {
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<T>> {
        let mut acc: Option<T> = None;
        for unit in self.runner.results(cx, time)? {
            if let Some(v) = unit.as_ref().clone() {
                acc = Some(match acc.take() {
                    Some(a) => (self.f)(a, v),
                    None => v,
                });
            }
        }
        Ok(BatchData::from(
            acc.or_else(|| self.empty.clone())
                .into_iter()
                .collect::<Vec<_>>(),
        ))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        self.runner.parents()
    }

    fn block_tasks(&self) -> Vec<(crate::block::StreamId, Arc<dyn pipe::BlockTask>)> {
        self.runner.block_tasks()
    }
}

struct Transform<T, F> {
    parent: Arc<NodeCell<T>>,
    f: F,
}

impl<T: Data, U: Data, F> Compute<U> for Transform<T, F>
where
    F: Fn(&BatchData<T>, BatchTime) -> BatchData<U> + Send + Sync + 'static,
{
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<U>> {
        let data = self.parent.get(cx, time)?.unwrap_or_default();
        catch(|| (self.f)(&data, time)).map_err(|m| job_error(time, self.parent.info(), m))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        vec![(Arc::clone(&self.parent) as Arc<dyn AnyNode>, 0)]
    }
}

struct TransformWith<T, U, F> {
    left: Arc<NodeCell<T>>,
    right: Arc<NodeCell<U>>,
    f: F,
}

impl<T: Data, U: Data, V: Data, F> Compute<V> for TransformWith<T, U, F>
where
    F: Fn(&BatchData<T>, &BatchData<U>, BatchTime) -> BatchData<V> + Send + Sync + 'static,
{
    fn compute(&self, cx: &BatchCx, time: BatchTime) -> Result<BatchData<V>> {
        let left = self.left.get(cx, time)?.unwrap_or_default();
        let right = self.right.get(cx, time)?.unwrap_or_default();
        catch(|| (self.f)(&left, &right, time)).map_err(|m| job_error(time, self.left.info(), m))
    }

    fn parents(&self) -> Vec<(Arc<dyn AnyNode>, u64)> {
        vec![
            (Arc::clone(&self.left) as Arc<dyn AnyNode>, 0),
            (Arc::clone(&self.right) as Arc<dyn AnyNode>, 0),
        ]
    }
}
