//! [`Description`]: what a checkpoint location holds, for people (`ember checkpoint
//! inspect`). Built by [`crate::CheckpointStore::describe`]; printed by its `Display`.

use std::fmt;

use crate::error::Result;
use crate::model::{BatchInputs, BlockLocation, InputData, StoredCheckpoint, StreamInput};
use crate::references::References;
use crate::store::CheckpointStore;

/// A description of a checkpoint location, read afresh.
#[derive(Debug)]
pub struct Description {
    /// The directory or bucket prefix.
    pub location: String,
    /// The retention setting of the store that described it.
    pub checkpoints_retained: usize,
    /// Every checkpoint, newest first.
    pub checkpoints: Vec<DescribedCheckpoint>,
    /// The newest valid checkpoint (the one a restart would use), with its name.
    pub newest: Option<(String, StoredCheckpoint)>,
    /// Every state snapshot name present.
    pub snapshots: Vec<String>,
    /// Temporary files of interrupted publishes (removed when a writer opens).
    pub temporaries: Vec<String>,
    /// What the valid checkpoints present reference together.
    pub references: Option<References>,
}

/// One checkpoint in a [`Description`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedCheckpoint {
    /// Its sequence number.
    pub sequence: u64,
    /// Its name.
    pub name: String,
    /// Its batch time, if valid.
    pub batch_time_ms: Option<u64>,
    /// Why it cannot be used, if it cannot.
    pub problem: Option<String>,
}

pub(crate) fn describe(store: &CheckpointStore) -> Result<Description> {
    let crate::store::Listing {
        checkpoints: read,
        snapshots,
        temporaries,
    } = store.read_all()?;
    let mut checkpoints = Vec::new();
    let mut newest = None;
    let mut valid_refs = Vec::new();
    for (sequence, outcome) in read {
        let name = crate::names::checkpoint_name(sequence);
        match outcome {
            Ok(stored) => {
                checkpoints.push(DescribedCheckpoint {
                    sequence,
                    name: name.clone(),
                    batch_time_ms: Some(stored.checkpoint.batch_time_ms()),
                    problem: None,
                });
                valid_refs.push(References::of(&stored.checkpoint));
                if newest.is_none() {
                    newest = Some((name, stored));
                }
            }
            Err(e) => checkpoints.push(DescribedCheckpoint {
                sequence,
                name,
                batch_time_ms: None,
                problem: Some(e.to_string()),
            }),
        }
    }
    Ok(Description {
        location: store.location().to_owned(),
        checkpoints_retained: store.config().checkpoints_retained,
        checkpoints,
        newest,
        snapshots,
        temporaries,
        references: References::combine(&valid_refs),
    })
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checkpoint location {} ({} checkpoint(s), retaining {} valid)",
            self.location,
            self.checkpoints.len(),
            self.checkpoints_retained
        )?;
        let newest_name = self.newest.as_ref().map(|(n, _)| n.as_str());
        for c in &self.checkpoints {
            match (&c.problem, c.batch_time_ms) {
                (None, Some(t)) => {
                    let mark = if Some(c.name.as_str()) == newest_name {
                        "  <- a restart uses this one"
                    } else {
                        ""
                    };
                    writeln!(f, "  {}  batch {t} ms  ok{mark}", c.name)?;
                }
                (problem, _) => writeln!(
                    f,
                    "  {}  UNUSABLE: {}",
                    c.name,
                    problem.as_deref().unwrap_or("unknown")
                )?,
            }
        }
        for t in &self.temporaries {
            writeln!(f, "  {t}  (temporary file of an interrupted publish)")?;
        }
        let Some((name, stored)) = &self.newest else {
            if self.checkpoints.is_empty() {
                return writeln!(f, "no checkpoint: a start here begins from scratch");
            }
            return writeln!(f, "NO VALID CHECKPOINT: a restart here fails");
        };
        let p = stored.checkpoint.parts();
        writeln!(
            f,
            "\nnewest valid: {name} (sequence {}, format version {})",
            stored.sequence,
            stored.checkpoint.format_version()
        )?;
        writeln!(
            f,
            "  batch time {} ms; grid: zero {} ms, interval {} ms",
            p.batch_time_ms, p.zero_time_ms, p.batch_interval_ms
        )?;
        writeln!(
            f,
            "  metadata log covered through Lsn {} (replay from Lsn {})",
            p.metadata_log_lsn,
            p.metadata_log_lsn.get().saturating_add(1)
        )?;
        write_batches(f, "pending batches (re-run at restart)", &p.pending_batches)?;
        write_batches(
            f,
            "remembered batches (completed, still read by windows)",
            &p.remembered_batches,
        )?;
        if !p.unallocated.is_empty() {
            writeln!(f, "  unallocated blocks (go to the next batch):")?;
            for input in &p.unallocated {
                writeln!(f, "    {}", summarize(input))?;
            }
        }
        if !p.data_wal_truncation.is_empty() {
            let points: Vec<String> = p
                .data_wal_truncation
                .iter()
                .map(|t| format!("stream {} below Lsn {}", t.stream, t.truncate_before))
                .collect();
            writeln!(f, "  data WAL not needed: {}", points.join(", "))?;
        }
        if p.state_snapshots.is_empty() {
            writeln!(f, "  state snapshots: none")?;
        } else {
            writeln!(f, "  state snapshots:")?;
            for r in &p.state_snapshots {
                let present = if self.snapshots.contains(&r.object) {
                    "present"
                } else {
                    "MISSING"
                };
                writeln!(
                    f,
                    "    operator {} at batch {} ms: {} ({} bytes, crc32 {:#010x}, {present})",
                    r.operator, r.taken_at_ms, r.object, r.len_bytes, r.crc32
                )?;
            }
        }
        for s in &p.source_positions {
            let kv: Vec<String> = s.position.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                f,
                "  source position of stream {}: {}",
                s.stream,
                kv.join(" ")
            )?;
        }
        writeln!(f, "  graph ({} operators):", p.graph.operators.len())?;
        for op in &p.graph.operators {
            write!(f, "    {} {}", op.id, op.kind)?;
            if !op.name.is_empty() {
                write!(f, " {:?}", op.name)?;
            }
            if let Some(s) = op.input_stream {
                write!(f, " [input stream {s}]")?;
            }
            if op.output {
                write!(f, " [output]")?;
            }
            if let Some(state) = &op.state {
                write!(f, " [state {state}]")?;
            }
            if !op.parents.is_empty() {
                write!(f, " <- {}", op.parents.join(", "))?;
            }
            writeln!(f)?;
        }
        if let Some(r) = &self.references {
            writeln!(f, "\ncleanup horizon over the valid checkpoints present:")?;
            writeln!(
                f,
                "  batches before {} ms are not needed",
                r.oldest_batch_time_ms
            )?;
            writeln!(
                f,
                "  metadata log may be truncated below Lsn {}",
                r.metadata_log_truncate_before
            )?;
            for (stream, lsn) in &r.data_wal_truncate_before {
                writeln!(
                    f,
                    "  data WAL of stream {stream} may be truncated below Lsn {lsn}"
                )?;
            }
            writeln!(
                f,
                "  {} block(s) and {} snapshot(s) referenced; {} snapshot(s) present",
                r.blocks.len(),
                r.snapshots.len(),
                self.snapshots.len()
            )?;
        }
        Ok(())
    }
}

fn write_batches(f: &mut fmt::Formatter<'_>, title: &str, batches: &[BatchInputs]) -> fmt::Result {
    if batches.is_empty() {
        return writeln!(f, "  {title}: none");
    }
    writeln!(f, "  {title}:")?;
    for b in batches {
        let inputs: Vec<String> = b.inputs.iter().map(summarize).collect();
        let inputs = if inputs.is_empty() {
            "no input".to_owned()
        } else {
            inputs.join("; ")
        };
        writeln!(f, "    batch {} ms: {inputs}", b.batch_time_ms)?;
    }
    Ok(())
}

/// One line about one stream's input: counts, and where recomputation reads it from.
fn summarize(input: &StreamInput) -> String {
    const SHOWN_MAX: usize = 4;
    let stream = input.stream;
    match &input.data {
        InputData::Blocks(blocks) => {
            let records: u64 = blocks.iter().map(|b| b.records).sum();
            let bytes: u64 = blocks.iter().map(|b| b.len_bytes).sum();
            let (mut wal, mut replicas, mut memory) = (0, 0, 0);
            for b in blocks {
                match b.location {
                    BlockLocation::Wal { .. } => wal += 1,
                    BlockLocation::Replicas(_) => replicas += 1,
                    BlockLocation::MemoryOnly => memory += 1,
                }
            }
            let mut from = Vec::new();
            for (n, what) in [
                (wal, "WAL"),
                (replicas, "replicas"),
                (memory, "memory only, lost if the executor died"),
            ] {
                if n > 0 {
                    from.push(format!("{n} from {what}"));
                }
            }
            format!(
                "stream {stream}: {} block(s), {records} records, {bytes} bytes ({})",
                blocks.len(),
                if from.is_empty() {
                    "none".to_owned()
                } else {
                    from.join(", ")
                }
            )
        }
        InputData::OffsetRanges(ranges) => {
            let mut shown: Vec<String> = ranges
                .iter()
                .take(SHOWN_MAX)
                .map(|r| {
                    format!(
                        "{}/{} [{}, {})",
                        r.topic, r.partition, r.from_offset, r.until_offset
                    )
                })
                .collect();
            if ranges.len() > SHOWN_MAX {
                shown.push(format!("and {} more", ranges.len() - SHOWN_MAX));
            }
            format!("stream {stream}: replay offsets {}", shown.join(", "))
        }
        InputData::Files(files) => {
            let mut shown: Vec<String> = files.iter().take(SHOWN_MAX).cloned().collect();
            if files.len() > SHOWN_MAX {
                shown.push(format!("and {} more", files.len() - SHOWN_MAX));
            }
            format!(
                "stream {stream}: replay {} file(s): {}",
                files.len(),
                shown.join(", ")
            )
        }
    }
}
