//! The DStream graph: built by the `DStream` API, frozen at `start`.
//!
//! While the pipeline is being defined, a `GraphBuilder` collects the input streams and the
//! output operations (and any error found while building, which `start` reports). At
//! `start` it is frozen into a `Graph`: the nodes reachable from the outputs, each node's
//! remember window, the block tasks to run per input stream, and the stateful operators.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::block::StreamId;
use crate::dstream::node::{AnyNode, OperatorId, lock};
use crate::dstream::pipe::BlockTask;
use crate::dstream::state::{StateSnapshot, StatefulOp};
use crate::error::{Error, Result};
use crate::sink::OutputOp;
use crate::source::InputDef;
use crate::time::BatchTime;

/// The graph while it is being built (shared by every `DStream` of a context).
pub(crate) struct GraphBuilder {
    pub partitions: usize,
    state: Mutex<BuildState>,
}

#[derive(Default)]
pub(crate) struct BuildState {
    pub started: bool,
    pub inputs: Vec<InputDef>,
    pub outputs: Vec<Arc<dyn OutputOp>>,
    pub errors: Vec<Error>,
    ids: HashMap<OperatorId, u32>,
}

impl GraphBuilder {
    pub fn new(partitions: usize) -> Self {
        GraphBuilder {
            partitions,
            state: Mutex::default(),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, BuildState> {
        lock(&self.state)
    }

    /// A fresh operator id for a node; the same code gets the same ids, and two operators
    /// with the same lineage (e.g. two `update_state_by_key` on one stream) get distinct
    /// ids in creation order.
    pub fn operator_id(&self, kind: &str, params: &str, parents: &[OperatorId]) -> OperatorId {
        let base = OperatorId::derive(kind, params, parents);
        let mut state = self.state();
        let n = state.ids.entry(base).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            OperatorId::derive(kind, &format!("{params}#{n}"), parents)
        }
    }

    /// Records an error found while building; `start` reports the first one.
    pub fn error(&self, error: Error) {
        tracing::error!(%error, "invalid graph");
        self.state().errors.push(error);
    }

    pub fn add_output(&self, op: Arc<dyn OutputOp>) {
        let mut state = self.state();
        if state.started {
            state.errors.push(Error::ContextState {
                state: "started",
                action: "add an output operation",
            });
        } else {
            state.outputs.push(op);
        }
    }
}

/// One operator of a pipeline, for comparing graphs across restarts (see
/// [`crate::StreamingContext::describe_graph`]). Narrow operators are fused into the
/// operator that consumes them; their identity is part of that operator's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperatorInfo {
    /// The stable id (see [`OperatorId`]).
    pub id: OperatorId,
    /// The kind ("input", "reduce_by_key", "update_state_by_key", "print", ...).
    pub kind: String,
    /// The operators it reads from.
    pub parents: Vec<OperatorId>,
    /// For an input, its stream.
    pub input_stream: Option<StreamId>,
    /// Whether it is an output operation.
    pub output: bool,
    /// For a stateful operator, what its snapshots hold.
    pub state: Option<StateInfo>,
}

/// The types in a stateful operator's snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateInfo {
    /// The key type's name.
    pub key_type: String,
    /// The state (or value) type's name.
    pub state_type: String,
    /// The snapshot body's format version.
    pub format_version: u32,
}

/// The frozen graph (see the module docs).
pub(crate) struct Graph {
    pub outputs: Vec<Arc<dyn OutputOp>>,
    /// Reachable nodes, parents before children.
    pub nodes: Vec<Arc<dyn AnyNode>>,
    pub stateful: Vec<Arc<dyn StatefulOp>>,
    pub block_tasks: BTreeMap<StreamId, Vec<Arc<dyn BlockTask>>>,
    /// How long the inputs' blocks must stay after their batch (the scheduler's remember).
    pub input_remember_ms: u64,
}

impl Graph {
    pub fn freeze(outputs: Vec<Arc<dyn OutputOp>>) -> Self {
        // Topological order by depth-first search from the outputs.
        let mut order: Vec<Arc<dyn AnyNode>> = Vec::new();
        let mut seen: HashMap<usize, ()> = HashMap::new();
        fn visit(
            n: &Arc<dyn AnyNode>,
            seen: &mut HashMap<usize, ()>,
            order: &mut Vec<Arc<dyn AnyNode>>,
        ) {
            let key = Arc::as_ptr(n).cast::<()>() as usize;
            if seen.insert(key, ()).is_some() {
                return;
            }
            for (p, _) in n.parents() {
                visit(&p, seen, order);
            }
            order.push(Arc::clone(n));
        }
        for op in &outputs {
            visit(&op.node(), &mut seen, &mut order);
        }
        // Remember windows flow from children to parents (children come later in `order`).
        for n in order.iter().rev() {
            let own = n.remember_ms();
            for (p, extra) in n.parents() {
                p.raise_remember(own + extra);
            }
        }
        let mut block_tasks: BTreeMap<StreamId, Vec<Arc<dyn BlockTask>>> = BTreeMap::new();
        let mut input_remember_ms = 0;
        let mut stateful = Vec::new();
        for n in &order {
            for (stream, task) in n.block_tasks() {
                block_tasks.entry(stream).or_default().push(task);
                input_remember_ms = input_remember_ms.max(n.remember_ms());
            }
            if let Some(s) = n.stateful() {
                stateful.push(s);
            }
        }
        Graph {
            outputs,
            nodes: order,
            stateful,
            block_tasks,
            input_remember_ms,
        }
    }

    /// The operators, inputs first, then nodes parents before children, then outputs in
    /// definition order.
    pub fn describe(&self, inputs: &[(StreamId, OperatorId, &'static str)]) -> Vec<OperatorInfo> {
        let input_id = |s: StreamId| {
            inputs
                .iter()
                .find(|(id, _, _)| *id == s)
                .map(|(_, op, _)| *op)
        };
        let mut out: Vec<OperatorInfo> = inputs
            .iter()
            .map(|(stream, id, kind)| OperatorInfo {
                id: *id,
                kind: (*kind).to_owned(),
                parents: Vec::new(),
                input_stream: Some(*stream),
                output: false,
                state: None,
            })
            .collect();
        for n in &self.nodes {
            let mut parents: Vec<OperatorId> = n
                .block_tasks()
                .iter()
                .filter_map(|(s, _)| input_id(*s))
                .collect();
            parents.extend(n.parents().iter().map(|(p, _)| p.info().id));
            parents.dedup();
            out.push(OperatorInfo {
                id: n.info().id,
                kind: n.info().kind.to_owned(),
                parents,
                input_stream: None,
                output: false,
                state: n.stateful().map(|s| {
                    let (key, state) = s.state_types();
                    StateInfo {
                        key_type: key.to_owned(),
                        state_type: state.to_owned(),
                        format_version: crate::dstream::state::STATE_FORMAT_VERSION,
                    }
                }),
            });
        }
        for op in &self.outputs {
            out.push(OperatorInfo {
                id: op.id(),
                kind: op.kind().to_owned(),
                parents: vec![op.node().info().id],
                input_stream: None,
                output: true,
                state: None,
            });
        }
        out
    }

    /// Drops what no later batch needs, after batch `done` completed.
    pub fn forget(&self, done: BatchTime) {
        for n in &self.nodes {
            n.forget(done);
        }
    }

    /// Snapshots every stateful operator; they must all be at batch `time`.
    pub fn snapshot_state(&self, time: BatchTime) -> Result<Vec<StateSnapshot>> {
        for s in &self.stateful {
            debug_assert!(
                s.state_time().is_none_or(|t| t <= time),
                "state ahead of the snapshot"
            );
        }
        self.stateful.iter().map(|s| s.snapshot(time)).collect()
    }

    /// Restores stateful operators from snapshots (before the first batch runs); every
    /// snapshot must match an operator of this graph.
    pub fn restore_state(&self, snapshots: Vec<StateSnapshot>) -> Result<()> {
        for snap in snapshots {
            let op = self
                .stateful
                .iter()
                .find(|s| s.id() == snap.operator)
                .ok_or_else(|| Error::State {
                    operator: format!("{}#{}", snap.kind, snap.operator),
                    message: "no stateful operator with this id in the graph (the graph changed)"
                        .to_owned(),
                })?;
            op.restore(snap)?;
        }
        Ok(())
    }
}
