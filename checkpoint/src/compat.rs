//! Graph compatibility: can the current code restart from a checkpoint written by other
//! code?
//!
//! The pipeline graph is rebuilt from code at every start; a checkpoint stores only data
//! plus a [`GraphDescription`] of the graph that wrote it. [`diff`] lists every difference
//! between the stored and the current description, matching operators by their stable
//! identity ([`OperatorDesc::id`]); [`check`] refuses a restart if any difference is
//! *breaking*, with an error listing all of them.
//!
//! # What is compatible
//!
//! The rule behind the table: a change is breaking exactly when a restart would silently
//! drop or misread something the checkpoint holds (acknowledged input, operator state) or
//! could not recompute a pending batch as it was defined.
//!
//! | change | compatible? | why |
//! |---|---|---|
//! | stateless operator added or removed (map, filter, an output operation, ...) | yes | holds nothing; recomputed from code |
//! | stateless operator's kind or parents changed | yes | the new code's meaning applies from the first re-run batch on |
//! | operator renamed (same id, other label) | yes | state and data are keyed by id, not label |
//! | stateful operator added (or a stateless one becomes stateful) | yes | it starts with empty state |
//! | stateful operator's parents changed | yes (reported) | its state is still readable; what feeds it is the code's business |
//! | stateful operator removed (or becomes stateless) | **no** | its state would be dropped without a word |
//! | stateful operator's key type, state type or state version changed | **no** | the snapshot cannot be read as the new type |
//! | stateful operator's kind changed | **no** | the snapshot is in the old operator's layout |
//! | stateful operator got a new id (removed + added with the same kind and state type) | **no** | state is keyed by id; reported as one change, with the fix |
//! | input stream removed, or an input operator's stream or kind changed | **no** | acknowledged data of that stream (pending batches, unallocated blocks, the metadata log) would be lost or read by the wrong source |
//! | input stream added | yes | it starts empty |
//! | batch interval changed | **no** | pending batches and windows are on the stored grid |
//!
//! To deliberately drop state or an input, start with a new checkpoint location.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Checkpoint, GraphDescription, OperatorDesc, StateDesc};

/// One difference between the stored and the current graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum GraphChange {
    /// The batch interval differs.
    BatchIntervalChanged {
        /// The checkpoint's interval.
        stored_ms: u64,
        /// The current interval.
        current_ms: u64,
    },
    /// An operator the stored graph does not have.
    OperatorAdded {
        /// The operator as it is now.
        operator: OperatorSummary,
    },
    /// An operator the current graph does not have.
    OperatorRemoved {
        /// The operator as it was.
        operator: OperatorSummary,
    },
    /// Same id, other label.
    OperatorRenamed {
        /// The id.
        id: String,
        /// The stored label.
        from: String,
        /// The current label.
        to: String,
    },
    /// Same id, other kind.
    KindChanged {
        /// The operator as it is now.
        operator: OperatorSummary,
        /// The stored kind.
        from: String,
        /// The stored operator was stateful.
        was_stateful: bool,
    },
    /// Same id, other parents.
    ParentsChanged {
        /// The operator as it is now.
        operator: OperatorSummary,
        /// The stored parents.
        from: Vec<String>,
        /// The current parents.
        to: Vec<String>,
    },
    /// Same id, but it reads another input stream (or became or stopped being an input).
    InputStreamChanged {
        /// The operator as it is now.
        operator: OperatorSummary,
        /// The stored stream.
        from: Option<u32>,
        /// The current stream.
        to: Option<u32>,
    },
    /// Same id, other state type (or it became or stopped being stateful).
    StateChanged {
        /// The operator as it is now.
        operator: OperatorSummary,
        /// The stored state type.
        from: Option<StateDesc>,
        /// The current state type.
        to: Option<StateDesc>,
    },
    /// A stateful operator was removed and one of the same kind and state type added: most
    /// likely the same operator under a new identity.
    StatefulIdentityChanged {
        /// The stored operator.
        from: OperatorSummary,
        /// The current operator.
        to: OperatorSummary,
    },
}

/// What messages show of an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperatorSummary {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its label.
    pub name: String,
    /// Its input stream, if it is an input.
    pub input_stream: Option<u32>,
    /// Its state type, if it is stateful.
    pub state: Option<StateDesc>,
}

impl OperatorSummary {
    fn of(op: &OperatorDesc) -> OperatorSummary {
        OperatorSummary {
            id: op.id.clone(),
            kind: op.kind.clone(),
            name: op.name.clone(),
            input_stream: op.input_stream,
            state: op.state.clone(),
        }
    }
}

impl fmt::Display for OperatorSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = if self.input_stream.is_some() {
            "input operator "
        } else if self.state.is_some() {
            "stateful operator "
        } else {
            "operator "
        };
        write!(f, "{role}{}", self.kind)?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        write!(f, " (id {}", self.id)?;
        if let Some(stream) = self.input_stream {
            write!(f, ", stream {stream}")?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for StateDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({}, {}) version {}",
            self.key_type, self.state_type, self.version
        )
    }
}

impl GraphChange {
    /// True if a restart must be refused (see the module docs for the table).
    pub fn is_breaking(&self) -> bool {
        match self {
            GraphChange::BatchIntervalChanged { .. } => true,
            GraphChange::OperatorAdded { .. } => false,
            GraphChange::OperatorRemoved { operator } => {
                operator.state.is_some() || operator.input_stream.is_some()
            }
            GraphChange::OperatorRenamed { .. } => false,
            GraphChange::KindChanged {
                operator,
                was_stateful,
                ..
            } => *was_stateful || operator.input_stream.is_some(),
            GraphChange::ParentsChanged { .. } => false,
            GraphChange::InputStreamChanged { .. } => true,
            // Stateless -> stateful starts empty; anything else loses or misreads state.
            GraphChange::StateChanged { from, .. } => from.is_some(),
            GraphChange::StatefulIdentityChanged { .. } => true,
        }
    }
}

impl fmt::Display for GraphChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphChange::BatchIntervalChanged {
                stored_ms,
                current_ms,
            } => write!(
                f,
                "batch interval changed from {stored_ms} ms to {current_ms} ms: pending batches and windows are on the stored grid"
            ),
            GraphChange::OperatorAdded { operator } => {
                write!(f, "{operator} added")?;
                if operator.state.is_some() {
                    write!(f, ": it starts with empty state")?;
                }
                Ok(())
            }
            GraphChange::OperatorRemoved { operator } => {
                write!(f, "{operator} removed")?;
                if let Some(stream) = operator.input_stream {
                    write!(
                        f,
                        ": data acknowledged for stream {stream} (pending batches, unallocated blocks, the metadata log) would be lost"
                    )?;
                } else if operator.state.is_some() {
                    write!(f, ": its state would be lost")?;
                }
                Ok(())
            }
            GraphChange::OperatorRenamed { id, from, to } => {
                write!(f, "operator id {id} renamed from {from:?} to {to:?}")
            }
            GraphChange::KindChanged {
                operator,
                from,
                was_stateful,
            } => {
                write!(
                    f,
                    "{operator}: kind changed from {from} to {}",
                    operator.kind
                )?;
                if *was_stateful {
                    write!(f, ": its snapshot is in the {from} layout")?;
                }
                Ok(())
            }
            GraphChange::ParentsChanged { operator, from, to } => write!(
                f,
                "{operator}: parents changed from [{}] to [{}]",
                from.join(", "),
                to.join(", ")
            ),
            GraphChange::InputStreamChanged { operator, from, to } => write!(
                f,
                "{operator}: input stream changed from {} to {}: acknowledged data would be read by the wrong source",
                stream_label(*from),
                stream_label(*to)
            ),
            GraphChange::StateChanged { operator, from, to } => match (from, to) {
                (Some(from), Some(to)) => write!(
                    f,
                    "{operator}: state type changed from {from} to {to}: the snapshot cannot be read as the new type"
                ),
                (Some(from), None) => write!(
                    f,
                    "{operator}: no longer stateful (was {from}): its state would be lost"
                ),
                (None, Some(to)) => write!(
                    f,
                    "{operator}: now stateful ({to}): it starts with empty state"
                ),
                (None, None) => write!(f, "{operator}: state unchanged"),
            },
            GraphChange::StatefulIdentityChanged { from, to } => write!(
                f,
                "{from} is gone and {to} is new: if it is the same operator, its identity changed \
                 (state is keyed by id); give it back id {}",
                from.id
            ),
        }
    }
}

fn stream_label(stream: Option<u32>) -> String {
    match stream {
        Some(s) => format!("stream {s}"),
        None => "none".to_owned(),
    }
}

/// Every difference between `stored` and `current`: changes to operators present in both
/// (in stored order), removed operators, then added ones (in current order). A removed and
/// an added stateful operator of the same kind and state type are reported together as
/// [`GraphChange::StatefulIdentityChanged`].
pub fn diff(stored: &GraphDescription, current: &GraphDescription) -> Vec<GraphChange> {
    let now: BTreeMap<&str, &OperatorDesc> = current
        .operators
        .iter()
        .map(|op| (op.id.as_str(), op))
        .collect();
    let before: BTreeSet<&str> = stored.operators.iter().map(|op| op.id.as_str()).collect();

    let mut changes = Vec::new();
    let mut removed = Vec::new();
    for old in &stored.operators {
        let Some(new) = now.get(old.id.as_str()) else {
            removed.push(old);
            continue;
        };
        let summary = OperatorSummary::of(new);
        if old.name != new.name {
            changes.push(GraphChange::OperatorRenamed {
                id: old.id.clone(),
                from: old.name.clone(),
                to: new.name.clone(),
            });
        }
        if old.kind != new.kind {
            changes.push(GraphChange::KindChanged {
                operator: summary.clone(),
                from: old.kind.clone(),
                was_stateful: old.state.is_some(),
            });
        }
        if old.input_stream != new.input_stream {
            changes.push(GraphChange::InputStreamChanged {
                operator: summary.clone(),
                from: old.input_stream,
                to: new.input_stream,
            });
        }
        if old.state != new.state {
            changes.push(GraphChange::StateChanged {
                operator: summary.clone(),
                from: old.state.clone(),
                to: new.state.clone(),
            });
        }
        if old.parents != new.parents {
            changes.push(GraphChange::ParentsChanged {
                operator: summary,
                from: old.parents.clone(),
                to: new.parents.clone(),
            });
        }
    }
    let mut added: Vec<&OperatorDesc> = current
        .operators
        .iter()
        .filter(|op| !before.contains(op.id.as_str()))
        .collect();

    for old in removed {
        let twin = old.state.as_ref().and_then(|_| {
            added.iter().position(|new| {
                new.kind == old.kind && new.state == old.state && new.input_stream.is_none()
            })
        });
        match twin {
            Some(i) => {
                let new = added.remove(i);
                changes.push(GraphChange::StatefulIdentityChanged {
                    from: OperatorSummary::of(old),
                    to: OperatorSummary::of(new),
                });
            }
            None => changes.push(GraphChange::OperatorRemoved {
                operator: OperatorSummary::of(old),
            }),
        }
    }
    changes.extend(added.into_iter().map(|op| GraphChange::OperatorAdded {
        operator: OperatorSummary::of(op),
    }));
    changes
}

/// Decides whether the current code can restart from `checkpoint` (stored under `name`).
///
/// Returns the compatible changes (to log) if there is no breaking one; otherwise
/// [`Error::IncompatibleGraph`] listing every change, breaking ones first.
pub fn check(
    name: &str,
    checkpoint: &Checkpoint,
    current: &GraphDescription,
    batch_interval_ms: u64,
) -> Result<Vec<GraphChange>> {
    let parts = checkpoint.parts();
    let mut changes = Vec::new();
    if parts.batch_interval_ms != batch_interval_ms {
        changes.push(GraphChange::BatchIntervalChanged {
            stored_ms: parts.batch_interval_ms,
            current_ms: batch_interval_ms,
        });
    }
    changes.extend(diff(&parts.graph, current));
    if changes.iter().any(GraphChange::is_breaking) {
        let (mut breaking, compatible): (Vec<_>, Vec<_>) =
            changes.into_iter().partition(GraphChange::is_breaking);
        breaking.extend(compatible);
        return Err(Error::IncompatibleGraph {
            name: name.to_owned(),
            changes: breaking,
        });
    }
    Ok(changes)
}
