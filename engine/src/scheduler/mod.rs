//! The scheduler core: a pure state machine that cuts received blocks into batches.
//!
//! The core does no IO and reads no clock. The driver ([`crate::StreamingContext`]) feeds it
//! the time ([`Scheduler::on_tick`]) and what happened ([`Scheduler::on_event`]), and
//! carries out the [`Action`]s it returns, **in order**. That order is the contract the
//! durability work builds on:
//!
//! - [`Action::AllocateBlocks`] for a batch always comes before the [`Action::RunBatch`] for
//!   it, so a driver that makes the allocation durable before carrying out the next action
//!   never runs a batch whose inputs it could not name again after a crash.
//! - Batches run one at a time, in batch-time order (Spark's `concurrentJobs = 1`, the only
//!   setting for which it keeps its fault-tolerance guarantees).
//! - [`Action::Cleanup`] names only blocks of completed batches older than the remember
//!   window; a durable driver may defer the deletion until a checkpoint no longer needs them.
//!
//! Batch times lie on the grid `zero + k * interval`, k >= 1; the batch at time `t` gets every
//! block reported stored before the tick at `t` was handled and not allocated yet (Spark's
//! `allocateBlocksToBatch`). [`Scheduler::restore`] starts from a given zero time with given
//! pending batches, which re-run at their original times before new batches are generated
//! (restart by recomputation).
//!
//! Stopping (as Spark's `stop(stopGracefully)`):
//! - graceful: receivers are told to stop (they flush what they hold); batches keep being
//!   generated on the grid until every receiver has stopped and no block is unallocated;
//!   then the generated batches run; then [`Action::Stopped`]. Once every receiver has
//!   stopped, nothing more can arrive, so the open batch (the next grid point) is generated
//!   at once instead of when the clock reaches it: its time stays on the grid and it takes
//!   exactly the blocks it would have taken at its tick, so its allocation, its results
//!   and its recovery are unchanged; only the wait for the clock is gone (a graceful stop
//!   of a finished input returns about one batch interval sooner).
//! - immediate: generation stops at once; the running batch finishes; batches generated but
//!   not run are reported in [`Action::Stopped`] (they stay pending for a restart).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::block::{StoredBlock, StreamId};
use crate::time::BatchTime;

/// The blocks allocated to one batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The batch.
    pub time: BatchTime,
    /// Per input stream, the batch's blocks in block-id order.
    pub blocks: BTreeMap<StreamId, Vec<StoredBlock>>,
}

impl Allocation {
    /// The total number of records in the batch's blocks.
    pub fn records(&self) -> u64 {
        self.blocks.values().flatten().map(|b| b.records).sum()
    }

    /// The records of one stream.
    pub fn stream_records(&self, stream: StreamId) -> u64 {
        self.blocks
            .get(&stream)
            .map_or(0, |bs| bs.iter().map(|b| b.records).sum())
    }
}

/// What the driver tells the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A block was stored under its stream's durability policy.
    BlockStored(StoredBlock),
    /// The batch finished: every output operation ran.
    BatchCompleted {
        /// The batch.
        time: BatchTime,
    },
    /// The batch failed; the context stops, and the batch stays pending.
    BatchFailed {
        /// The batch.
        time: BatchTime,
    },
    /// A receiver stopped; every block it stored has been reported before this event.
    ReceiverStopped {
        /// Its stream.
        stream: StreamId,
    },
    /// Stop the context.
    StopRequested {
        /// Process everything received before stopping.
        graceful: bool,
    },
}

/// What the core tells the driver to do (see the module docs for the ordering contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record that these blocks make up this batch (durably, where the policy asks for it).
    AllocateBlocks(Allocation),
    /// Run the batch's jobs (one per output operation, in definition order), then report
    /// [`Event::BatchCompleted`] or [`Event::BatchFailed`].
    RunBatch {
        /// The batch.
        time: BatchTime,
    },
    /// No batch will need these blocks again.
    Cleanup {
        /// Every batch up to and including this time is cleaned up.
        up_to: BatchTime,
        /// The blocks of those batches.
        blocks: Vec<StoredBlock>,
    },
    /// Tell every receiver to stop (graceful: flush what it holds first).
    StopReceivers {
        /// Whether buffered records should be stored before stopping.
        graceful: bool,
    },
    /// The core is done; no further actions follow.
    Stopped {
        /// Whether this was a graceful stop.
        graceful: bool,
        /// Batches generated but not processed (pending for a restart), in time order.
        unprocessed: Vec<BatchTime>,
    },
}

/// The core's fixed parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The batch interval.
    pub interval_ms: u64,
    /// The grid origin: batch times are `zero + k * interval_ms`, k >= 1.
    pub zero: BatchTime,
    /// How long a completed batch's blocks stay (for windows that look back); the blocks of
    /// batch `t'` are cleaned up once a batch `t >= t' + remember_ms` has completed.
    pub remember_ms: u64,
    /// The streams that have receivers (graceful stop waits for each to stop).
    pub receivers: Vec<StreamId>,
    /// Most batches generated and not yet run (0: no limit). A due grid point beyond it is
    /// generated when a batch completes (the catch-up cap after a restart).
    pub queued_max: usize,
}

/// What a restarted core resumes from (see [`Scheduler::restore`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    /// The last batch time that was generated (allocated) before the restart, if any.
    pub last_generated: Option<BatchTime>,
    /// Batches allocated but not completed: they re-run first, in time order.
    pub pending: Vec<Allocation>,
    /// Blocks stored but not allocated: they go to the first batch generated.
    pub unallocated: Vec<StoredBlock>,
    /// Completed batches whose blocks later batches still read (windows look back);
    /// they are not re-run, and are cleaned up like any completed batch.
    pub remembered: Vec<Allocation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { graceful: bool },
    Stopped,
}

/// The scheduler core (see the module docs).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    next_time: BatchTime,
    generating: bool,
    phase: Phase,
    unallocated: BTreeMap<StreamId, Vec<StoredBlock>>,
    /// Generated batches not yet cleaned up, with their blocks.
    allocated: BTreeMap<BatchTime, Vec<StoredBlock>>,
    queued: VecDeque<BatchTime>,
    running: Option<BatchTime>,
    last_completed: Option<BatchTime>,
    receivers_running: BTreeSet<StreamId>,
    failed: Option<BatchTime>,
    /// The latest time seen by `on_tick`.
    now_ms: u64,
}

impl Scheduler {
    /// A core starting at `config.zero`: the first batch is at `zero + interval`.
    ///
    /// # Panics
    /// If `interval_ms` is zero (the config is validated before this is called).
    pub fn new(config: SchedulerConfig) -> Self {
        Self::restore(config, RestoredState::default())
    }

    /// A core resuming after a restart: pending batches run first, at their original times,
    /// then the grid continues after `last_generated` (batches missed while down included).
    ///
    /// # Panics
    /// If `interval_ms` is zero, or a restored time is not on the grid (the caller restored
    /// a checkpoint made with another interval or zero time, which the checkpoint layer
    /// must reject before this point).
    pub fn restore(config: SchedulerConfig, restored: RestoredState) -> Self {
        assert!(config.interval_ms > 0, "batch interval must be positive");
        let on_grid =
            |t: BatchTime| t > config.zero && t.is_on_grid(config.zero, config.interval_ms);
        let next_time = match restored.last_generated {
            Some(t) => {
                assert!(on_grid(t), "restored batch time {t} is not on the grid");
                t.plus_millis(config.interval_ms)
            }
            None => config.zero.plus_millis(config.interval_ms),
        };
        let mut allocated = BTreeMap::new();
        for alloc in restored.remembered {
            allocated.insert(alloc.time, alloc.blocks.into_values().flatten().collect());
        }
        let mut queued = Vec::new();
        for alloc in restored.pending {
            assert!(
                on_grid(alloc.time),
                "pending batch {} is not on the grid",
                alloc.time
            );
            assert!(
                alloc.time < next_time,
                "pending batch {} was never generated",
                alloc.time
            );
            queued.push(alloc.time);
            allocated.insert(alloc.time, alloc.blocks.into_values().flatten().collect());
        }
        queued.sort();
        let mut unallocated: BTreeMap<StreamId, Vec<StoredBlock>> = BTreeMap::new();
        for b in restored.unallocated {
            unallocated.entry(b.id.stream).or_default().push(b);
        }
        for blocks in unallocated.values_mut() {
            blocks.sort_by_key(|b| b.id);
        }
        Scheduler {
            receivers_running: config.receivers.iter().copied().collect(),
            config,
            next_time,
            generating: true,
            phase: Phase::Running,
            unallocated,
            allocated,
            queued: queued.into(),
            running: None,
            last_completed: None,
            failed: None,
            now_ms: 0,
        }
    }

    /// The core's parameters.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// When the driver should next call [`Scheduler::on_tick`]: the next batch time, or
    /// `None` once no more batches will be generated, or while the next grid point is
    /// already due but held back by the queue cap (a tick could not generate it; the
    /// completion of a batch does). Returning the past time there would make the driver
    /// spin on an expired timer for as long as the pipeline is behind.
    pub fn next_deadline(&self) -> Option<BatchTime> {
        let held_back = self.queue_full() && self.next_time.as_millis() <= self.now_ms;
        self.open_batch().filter(|_| !held_back)
    }

    /// The batch that a block reported now will be allocated to: the next one generated.
    pub fn open_batch(&self) -> Option<BatchTime> {
        (self.generating && self.phase != Phase::Stopped).then_some(self.next_time)
    }

    /// Whether the cap on queued batches stops generation.
    fn queue_full(&self) -> bool {
        let cap = self.config.queued_max;
        cap != 0 && self.queued.len() >= cap
    }

    /// The blocks not yet allocated (after a restart: the recovered ones), in the order the
    /// next batch will take them.
    pub fn unallocated(&self) -> impl Iterator<Item = &StoredBlock> + '_ {
        self.unallocated.values().flatten()
    }

    /// Whether [`Action::Stopped`] has been returned.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Batches generated but not completed, in time order (the running one first).
    pub fn pending_batches(&self) -> Vec<BatchTime> {
        self.running
            .iter()
            .chain(self.queued.iter())
            .copied()
            .collect()
    }

    /// Blocks stored but not yet allocated to a batch.
    pub fn unallocated_blocks(&self) -> usize {
        self.unallocated.values().map(Vec::len).sum()
    }

    /// Starts the first pending batch of a restart, if any (generates nothing: call this
    /// before the first tick, so that blocks reported before it reach the first batch).
    pub fn on_start(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.phase != Phase::Stopped {
            self.advance(&mut actions);
        }
        actions
    }

    /// The time has come to `now_ms`: generate every batch due and start the next one.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.phase == Phase::Stopped {
            return actions;
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.generate_due(&mut actions);
        self.advance(&mut actions);
        actions
    }

    /// Generates every batch due by the latest tick, up to the queue cap; in a graceful
    /// stop whose receivers have all stopped, also the open batch (see the module docs).
    fn generate_due(&mut self, actions: &mut Vec<Action>) {
        while self.generating
            && (self.next_time.as_millis() <= self.now_ms || self.input_ended())
            && !self.queue_full()
        {
            let time = self.next_time;
            self.next_time = time.plus_millis(self.config.interval_ms);
            let blocks = std::mem::take(&mut self.unallocated);
            self.allocated
                .insert(time, blocks.values().flatten().cloned().collect());
            actions.push(Action::AllocateBlocks(Allocation { time, blocks }));
            self.queued.push_back(time);
            self.update_generation();
        }
    }

    /// A graceful stop is under way and every receiver has stopped: no block can be
    /// reported any more, so the open batch has all it will ever get and need not wait for
    /// its grid time. (`generating` stays true only while blocks are unallocated, so this
    /// generates exactly one batch.)
    fn input_ended(&self) -> bool {
        self.phase == (Phase::Stopping { graceful: true }) && self.receivers_running.is_empty()
    }

    /// Something happened: update the state and say what to do next.
    pub fn on_event(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.phase == Phase::Stopped {
            return actions;
        }
        match event {
            Event::BlockStored(block) => {
                let blocks = self.unallocated.entry(block.id.stream).or_default();
                // Receivers report their blocks in id order; keep the queue sorted anyway,
                // since batch results are merged in this order.
                let at = blocks.partition_point(|b| b.id < block.id);
                blocks.insert(at, block);
            }
            Event::BatchCompleted { time } => {
                assert_eq!(
                    self.running,
                    Some(time),
                    "completed a batch that was not running"
                );
                self.running = None;
                self.last_completed = Some(time);
                // Grid points held back by the queue cap.
                self.generate_due(&mut actions);
                if let Some(up_to) = time.checked_minus_millis(self.config.remember_ms) {
                    let kept = self.allocated.split_off(&up_to.plus_millis(1));
                    let cleaned = std::mem::replace(&mut self.allocated, kept);
                    if !cleaned.is_empty() {
                        actions.push(Action::Cleanup {
                            up_to,
                            blocks: cleaned.into_values().flatten().collect(),
                        });
                    }
                }
            }
            Event::BatchFailed { time } => {
                assert_eq!(
                    self.running,
                    Some(time),
                    "failed a batch that was not running"
                );
                self.running = None;
                self.failed = Some(time);
                self.begin_stop(false, &mut actions);
            }
            Event::ReceiverStopped { stream } => {
                self.receivers_running.remove(&stream);
                self.update_generation();
                self.generate_due(&mut actions);
            }
            Event::StopRequested { graceful } => {
                self.begin_stop(graceful, &mut actions);
                self.generate_due(&mut actions);
            }
        }
        self.advance(&mut actions);
        actions
    }

    fn begin_stop(&mut self, graceful: bool, actions: &mut Vec<Action>) {
        match self.phase {
            Phase::Running => {
                self.phase = Phase::Stopping { graceful };
                actions.push(Action::StopReceivers { graceful });
            }
            // An immediate stop overrides a graceful one in progress.
            Phase::Stopping { graceful: true } if !graceful => {
                self.phase = Phase::Stopping { graceful };
            }
            Phase::Stopping { .. } | Phase::Stopped => {}
        }
        self.update_generation();
    }

    fn update_generation(&mut self) {
        match self.phase {
            Phase::Running => {}
            Phase::Stopping { graceful: false } | Phase::Stopped => self.generating = false,
            Phase::Stopping { graceful: true } => {
                if self.receivers_running.is_empty() && self.unallocated.is_empty() {
                    self.generating = false;
                }
            }
        }
    }

    /// Starts the next queued batch if none is running, and finishes a stop once nothing is left.
    fn advance(&mut self, actions: &mut Vec<Action>) {
        let immediate = matches!(self.phase, Phase::Stopping { graceful: false });
        if self.running.is_none() && !immediate {
            self.running = self.queued.pop_front();
            if let Some(time) = self.running {
                actions.push(Action::RunBatch { time });
            }
        }
        if let Phase::Stopping { graceful } = self.phase {
            let done = self.running.is_none()
                && (immediate || (!self.generating && self.queued.is_empty()));
            if done {
                self.phase = Phase::Stopped;
                self.generating = false;
                let mut unprocessed: Vec<BatchTime> = self.failed.iter().copied().collect();
                unprocessed.extend(self.queued.drain(..));
                actions.push(Action::Stopped {
                    graceful,
                    unprocessed,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
