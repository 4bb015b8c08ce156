//! Schedules run against the pure core: no clock, no threads, no sleeping.

use proptest::prelude::*;

use super::*;
use crate::block::BlockId;

const S0: StreamId = StreamId(0);
const S1: StreamId = StreamId(1);

fn config(remember_ms: u64, receivers: &[StreamId]) -> SchedulerConfig {
    SchedulerConfig {
        interval_ms: 1_000,
        zero: BatchTime::from_millis(10_000),
        remember_ms,
        receivers: receivers.to_vec(),
        queued_max: 0,
    }
}

fn block(stream: StreamId, seq: u64, records: u64) -> StoredBlock {
    StoredBlock {
        id: BlockId { stream, seq },
        records,
        len_bytes: records * 10,
        locator: Vec::new(),
        source_offsets: None,
    }
}

fn t(ms: u64) -> BatchTime {
    BatchTime::from_millis(ms)
}

fn ids(blocks: &[StoredBlock]) -> Vec<(u32, u64)> {
    blocks.iter().map(|b| (b.id.stream.0, b.id.seq)).collect()
}

fn allocated(actions: &[Action]) -> Vec<(u64, Vec<(u32, u64)>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::AllocateBlocks(alloc) => Some((
                alloc.time.as_millis(),
                ids(&alloc.blocks.values().flatten().cloned().collect::<Vec<_>>()),
            )),
            _ => None,
        })
        .collect()
}

fn runs(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RunBatch { time } => Some(time.as_millis()),
            _ => None,
        })
        .collect()
}

#[test]
fn batches_lie_on_the_grid_and_take_the_blocks_received_before_their_tick() {
    let mut s = Scheduler::new(config(0, &[S0]));
    assert_eq!(s.next_deadline(), Some(t(11_000)));
    assert!(
        s.on_tick(10_999).is_empty(),
        "no batch before the first grid point"
    );
    s.on_event(Event::BlockStored(block(S0, 0, 5)));
    s.on_event(Event::BlockStored(block(S0, 1, 7)));
    let a = s.on_tick(11_000);
    assert_eq!(allocated(&a), [(11_000, vec![(0, 0), (0, 1)])]);
    assert_eq!(runs(&a), [11_000]);
    // The allocation always precedes the run: a driver can make it durable first.
    assert!(matches!(a[0], Action::AllocateBlocks(_)) && matches!(a[1], Action::RunBatch { .. }));
    match &a[0] {
        Action::AllocateBlocks(alloc) => assert_eq!(alloc.records(), 12),
        other => panic!("{other:?}"),
    }
    s.on_event(Event::BlockStored(block(S0, 2, 1)));
    let a = s.on_event(Event::BatchCompleted { time: t(11_000) });
    assert_eq!(
        a,
        [Action::Cleanup {
            up_to: t(11_000),
            blocks: vec![block(S0, 0, 5), block(S0, 1, 7)]
        }]
    );
    let a = s.on_tick(12_500);
    assert_eq!(allocated(&a), [(12_000, vec![(0, 2)])]);
    assert_eq!(s.next_deadline(), Some(t(13_000)));
}

#[test]
fn one_batch_runs_at_a_time_and_late_ticks_generate_every_missed_batch_in_order() {
    let mut s = Scheduler::new(config(0, &[]));
    let a = s.on_tick(13_200);
    assert_eq!(
        allocated(&a).iter().map(|x| x.0).collect::<Vec<_>>(),
        [11_000, 12_000, 13_000]
    );
    assert_eq!(runs(&a), [11_000], "only the first batch starts");
    assert_eq!(s.pending_batches(), [t(11_000), t(12_000), t(13_000)]);
    assert_eq!(
        runs(&s.on_event(Event::BatchCompleted { time: t(11_000) })),
        [12_000]
    );
    assert_eq!(
        runs(&s.on_event(Event::BatchCompleted { time: t(12_000) })),
        [13_000]
    );
    assert_eq!(
        runs(&s.on_event(Event::BatchCompleted { time: t(13_000) })),
        Vec::<u64>::new()
    );
}

#[test]
fn blocks_are_cleaned_up_only_after_the_remember_window() {
    let mut s = Scheduler::new(config(2_000, &[S0]));
    let mut cleaned = Vec::new();
    for (i, now) in [11_000u64, 12_000, 13_000, 14_000].into_iter().enumerate() {
        s.on_event(Event::BlockStored(block(S0, i as u64, 1)));
        s.on_tick(now);
        for a in s.on_event(Event::BatchCompleted { time: t(now) }) {
            if let Action::Cleanup { up_to, blocks } = a {
                cleaned.push((now, up_to.as_millis(), ids(&blocks)));
            }
        }
    }
    // Remember 2 s: after batch 13 s completes, batch 11 s may go; after 14 s, batch 12 s.
    assert_eq!(
        cleaned,
        [
            (13_000, 11_000, vec![(0, 0)]),
            (14_000, 12_000, vec![(0, 1)])
        ]
    );
}

#[test]
fn blocks_reported_out_of_order_are_allocated_in_id_order() {
    let mut s = Scheduler::new(config(0, &[S0, S1]));
    s.on_event(Event::BlockStored(block(S1, 0, 1)));
    s.on_event(Event::BlockStored(block(S0, 3, 1)));
    s.on_event(Event::BlockStored(block(S0, 2, 1)));
    let a = s.on_tick(11_000);
    assert_eq!(allocated(&a), [(11_000, vec![(0, 2), (0, 3), (1, 0)])]);
}

#[test]
fn graceful_stop_processes_everything_received_before_stopping() {
    let mut s = Scheduler::new(config(0, &[S0, S1]));
    s.on_event(Event::BlockStored(block(S0, 0, 1)));
    s.on_tick(11_000); // batch 11 s running
    let a = s.on_event(Event::StopRequested { graceful: true });
    assert_eq!(a, [Action::StopReceivers { graceful: true }]);
    // Receivers flush what they held, then report that they stopped.
    s.on_event(Event::BlockStored(block(S0, 1, 1)));
    s.on_event(Event::ReceiverStopped { stream: S0 });
    s.on_event(Event::BlockStored(block(S1, 0, 1)));
    assert_eq!(
        s.next_deadline(),
        Some(t(12_000)),
        "unallocated blocks need one more batch"
    );
    // The last receiver stopped: nothing more can arrive, so the open batch is generated
    // now, at its grid time, without waiting for the clock to reach it.
    let a = s.on_event(Event::ReceiverStopped { stream: S1 });
    assert_eq!(allocated(&a), [(12_000, vec![(0, 1), (1, 0)])]);
    assert_eq!(runs(&a), [] as [u64; 0], "batch 11 s is still running");
    assert_eq!(
        s.next_deadline(),
        None,
        "nothing left to allocate: generation stops"
    );
    let a = s.on_event(Event::BatchCompleted { time: t(11_000) });
    assert_eq!(runs(&a), [12_000]);
    let a = s.on_event(Event::BatchCompleted { time: t(12_000) });
    assert_eq!(
        a.last(),
        Some(&Action::Stopped {
            graceful: true,
            unprocessed: vec![]
        })
    );
    assert!(s.is_stopped());
    assert!(s.on_tick(20_000).is_empty());
}

#[test]
fn a_graceful_stop_after_every_receiver_ended_runs_the_open_batch_without_waiting_for_the_clock() {
    let mut s = Scheduler::new(config(0, &[S0]));
    s.on_tick(10_300);
    s.on_event(Event::BlockStored(block(S0, 0, 5)));
    // The input ended on its own (a socket source that stops at the end of its stream):
    // while no stop is requested, the batch still waits for its grid point.
    let a = s.on_event(Event::ReceiverStopped { stream: S0 });
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(s.next_deadline(), Some(t(11_000)));
    // A graceful stop at 10.3 s: the batch at 11 s is generated and run at once, with the
    // blocks its tick would have given it.
    let a = s.on_event(Event::StopRequested { graceful: true });
    assert_eq!(a[0], Action::StopReceivers { graceful: true });
    assert_eq!(allocated(&a), [(11_000, vec![(0, 0)])]);
    assert_eq!(runs(&a), [11_000]);
    assert_eq!(s.next_deadline(), None);
    let a = s.on_event(Event::BatchCompleted { time: t(11_000) });
    assert_eq!(
        a.last(),
        Some(&Action::Stopped {
            graceful: true,
            unprocessed: vec![]
        })
    );
}

#[test]
fn a_graceful_stop_waits_for_the_grid_while_a_receiver_may_still_store() {
    let mut s = Scheduler::new(config(0, &[S0, S1]));
    s.on_tick(10_300);
    s.on_event(Event::BlockStored(block(S0, 0, 5)));
    s.on_event(Event::StopRequested { graceful: true });
    let a = s.on_event(Event::ReceiverStopped { stream: S0 });
    assert!(allocated(&a).is_empty(), "S1 may still store blocks: {a:?}");
    s.on_event(Event::BlockStored(block(S1, 0, 2)));
    // An immediate stop overrides the graceful one: nothing more is generated early.
    let mut immediate = Scheduler::new(config(0, &[S0]));
    immediate.on_event(Event::BlockStored(block(S0, 0, 5)));
    immediate.on_event(Event::ReceiverStopped { stream: S0 });
    let a = immediate.on_event(Event::StopRequested { graceful: false });
    assert!(allocated(&a).is_empty(), "{a:?}");
    // The last receiver's stop ends the wait: both blocks go to the batch at 11 s.
    let a = s.on_event(Event::ReceiverStopped { stream: S1 });
    assert_eq!(allocated(&a), [(11_000, vec![(0, 0), (1, 0)])]);
    assert_eq!(runs(&a), [11_000]);
}

#[test]
fn an_ended_input_with_a_full_queue_generates_its_last_batch_when_a_batch_completes() {
    let mut s = Scheduler::new(SchedulerConfig {
        queued_max: 1,
        ..config(0, &[S0])
    });
    s.on_event(Event::BlockStored(block(S0, 0, 1)));
    s.on_tick(11_000); // 11 s runs
    s.on_event(Event::BlockStored(block(S0, 1, 1)));
    s.on_tick(12_000); // 12 s queued: the queue is full
    s.on_event(Event::BlockStored(block(S0, 2, 1)));
    s.on_event(Event::StopRequested { graceful: true });
    let a = s.on_event(Event::ReceiverStopped { stream: S0 });
    assert!(allocated(&a).is_empty(), "the queue cap holds: {a:?}");
    let a = s.on_event(Event::BatchCompleted { time: t(11_000) });
    assert!(allocated(&a).is_empty(), "12 s still queued: {a:?}");
    assert_eq!(runs(&a), [12_000]);
    // The queue has room again: the last batch is generated without waiting for 13 s.
    let a = s.on_event(Event::BatchCompleted { time: t(12_000) });
    assert_eq!(allocated(&a), [(13_000, vec![(0, 2)])]);
    assert_eq!(runs(&a), [13_000]);
}

#[test]
fn graceful_stop_with_nothing_pending_stops_at_once() {
    let mut s = Scheduler::new(config(0, &[]));
    let a = s.on_event(Event::StopRequested { graceful: true });
    assert_eq!(
        a,
        [
            Action::StopReceivers { graceful: true },
            Action::Stopped {
                graceful: true,
                unprocessed: vec![]
            }
        ]
    );
}

#[test]
fn immediate_stop_reports_the_batches_it_did_not_run() {
    let mut s = Scheduler::new(config(0, &[S0]));
    s.on_tick(13_000);
    let a = s.on_event(Event::StopRequested { graceful: false });
    assert_eq!(a, [Action::StopReceivers { graceful: false }]);
    assert_eq!(s.next_deadline(), None);
    let a = s.on_event(Event::BatchCompleted { time: t(11_000) });
    assert_eq!(
        a.last(),
        Some(&Action::Stopped {
            graceful: false,
            unprocessed: vec![t(12_000), t(13_000)]
        })
    );
}

#[test]
fn a_failed_batch_stops_the_core_and_stays_pending() {
    let mut s = Scheduler::new(config(0, &[S0]));
    s.on_tick(12_000);
    let a = s.on_event(Event::BatchFailed { time: t(11_000) });
    assert_eq!(
        a,
        [
            Action::StopReceivers { graceful: false },
            Action::Stopped {
                graceful: false,
                unprocessed: vec![t(11_000), t(12_000)]
            }
        ]
    );
}

#[test]
fn restore_reruns_pending_batches_on_the_original_grid_then_catches_up() {
    let pending = vec![
        Allocation {
            time: t(13_000),
            blocks: [(S0, vec![block(S0, 4, 2)])].into(),
        },
        Allocation {
            time: t(12_000),
            blocks: [(S0, vec![block(S0, 3, 2)])].into(),
        },
    ];
    let restored = RestoredState {
        last_generated: Some(t(13_000)),
        pending,
        unallocated: vec![block(S0, 6, 1), block(S0, 5, 1)],
        remembered: vec![],
    };
    let mut s = Scheduler::restore(config(0, &[S0]), restored);
    // Down from 13 s to 15.5 s: the pending batches re-run first (their allocation is
    // already durable, so no AllocateBlocks), then the missed grid points are generated;
    // the blocks recovered unallocated go to the first of them.
    let a = s.on_tick(15_500);
    assert_eq!(
        allocated(&a),
        [(14_000, vec![(0, 5), (0, 6)]), (15_000, vec![])]
    );
    assert_eq!(runs(&a), [12_000]);
    let a = s.on_event(Event::BatchCompleted { time: t(12_000) });
    assert_eq!(runs(&a), [13_000]);
    assert!(matches!(&a[0], Action::Cleanup { blocks, .. } if ids(blocks) == [(0, 3)]));
}

#[test]
fn missed_grid_points_are_generated_no_faster_than_batches_complete() {
    let mut config = config(0, &[S0]);
    config.queued_max = 2;
    let mut s = Scheduler::restore(
        config,
        RestoredState {
            last_generated: Some(t(11_000)),
            unallocated: vec![block(S0, 4, 1)],
            ..Default::default()
        },
    );
    // Down from 11 s to 16.5 s: five grid points are due, two are generated (one runs,
    // one waits), the recovered block goes to the first.
    let a = s.on_tick(16_500);
    assert_eq!(allocated(&a), [(12_000, vec![(0, 4)]), (13_000, vec![])]);
    assert_eq!(runs(&a), [12_000]);
    // A block arriving now goes to the next batch generated, on the original grid.
    s.on_event(Event::BlockStored(block(S0, 5, 1)));
    let a = s.on_event(Event::BatchCompleted { time: t(12_000) });
    assert_eq!(allocated(&a), [(14_000, vec![(0, 5)])]);
    assert_eq!(runs(&a), [13_000]);
    let a = s.on_event(Event::BatchCompleted { time: t(13_000) });
    assert_eq!(allocated(&a), [(15_000, vec![])]);
    let a = s.on_event(Event::BatchCompleted { time: t(14_000) });
    assert_eq!(allocated(&a), [(16_000, vec![])]);
    // Caught up: nothing more is due until the next tick.
    let a = s.on_event(Event::BatchCompleted { time: t(15_000) });
    assert_eq!(allocated(&a), []);
    assert_eq!(runs(&a), [16_000]);
    assert_eq!(s.next_deadline(), Some(t(17_000)));
}

#[test]
fn a_full_queue_leaves_no_deadline_so_the_driver_waits_for_a_completion() {
    let mut config = config(0, &[S0]);
    config.queued_max = 1;
    let mut s = Scheduler::new(config);
    assert_eq!(runs(&s.on_tick(11_000)), [11_000]);
    // Behind: 12 s is generated and waits; 13 s and 14 s are due but held back.
    let a = s.on_tick(14_500);
    assert_eq!(allocated(&a), [(12_000, vec![])]);
    // No tick can generate 13 s now, so there is no deadline: a past one would make the
    // driver spin on an expired timer until a batch completes. Blocks still know their
    // batch.
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.open_batch(), Some(t(13_000)));
    // A completion frees the queue: 13 s is due again at once.
    assert_eq!(
        runs(&s.on_event(Event::BatchCompleted { time: t(11_000) })),
        [12_000]
    );
    assert_eq!(s.next_deadline(), Some(t(13_000)));
}

#[test]
#[should_panic(expected = "not on the grid")]
fn restore_rejects_times_off_the_grid() {
    let restored = RestoredState {
        last_generated: Some(t(12_500)),
        ..Default::default()
    };
    Scheduler::restore(config(0, &[]), restored);
}

#[derive(Clone, Debug)]
enum Step {
    Store(usize),
    Tick(u64),
    Complete,
    Stop(bool),
    ReceiverStopped(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..2usize).prop_map(Step::Store),
        3 => (0..2_500u64).prop_map(Step::Tick),
        3 => Just(Step::Complete),
        1 => any::<bool>().prop_map(Step::Stop),
        1 => (0..2usize).prop_map(Step::ReceiverStopped),
    ]
}

/// The observer of a random schedule: checks every action against the invariants.
#[derive(Default)]
struct Model {
    allocated_blocks: BTreeSet<BlockId>,
    allocated_times: BTreeSet<BatchTime>,
    ran: Vec<BatchTime>,
    running: Option<BatchTime>,
    cleaned: BTreeSet<BlockId>,
    stopped: Option<Vec<BatchTime>>,
}

impl Model {
    fn apply(&mut self, actions: Vec<Action>) -> Result<(), TestCaseError> {
        for a in actions {
            prop_assert!(self.stopped.is_none(), "action after Stopped: {a:?}");
            match a {
                Action::AllocateBlocks(alloc) => {
                    prop_assert!(alloc.time.is_on_grid(t(10_000), 1_000) && alloc.time > t(10_000));
                    prop_assert!(
                        self.allocated_times.insert(alloc.time),
                        "batch allocated twice"
                    );
                    for b in alloc.blocks.values().flatten() {
                        prop_assert!(self.allocated_blocks.insert(b.id), "block allocated twice");
                    }
                    for blocks in alloc.blocks.values() {
                        prop_assert!(blocks.windows(2).all(|w| w[0].id < w[1].id));
                    }
                }
                Action::RunBatch { time } => {
                    prop_assert!(self.running.is_none(), "two batches at once");
                    prop_assert!(
                        self.allocated_times.contains(&time),
                        "run before allocation"
                    );
                    prop_assert!(
                        self.ran.last().is_none_or(|&last| last < time),
                        "out of order"
                    );
                    self.ran.push(time);
                    self.running = Some(time);
                }
                Action::Cleanup { up_to, blocks } => {
                    prop_assert!(self.ran.iter().any(|&r| r >= up_to));
                    prop_assert!(self.running.is_none_or(|r| r > up_to));
                    for b in blocks {
                        prop_assert!(self.cleaned.insert(b.id), "cleaned twice");
                    }
                }
                Action::StopReceivers { .. } => {}
                Action::Stopped { unprocessed, .. } => self.stopped = Some(unprocessed),
            }
        }
        Ok(())
    }
}

proptest! {
    /// Whatever happens, in whatever order: every block is allocated at most once, to a
    /// batch on the grid; batches run one at a time, in time order, each after its
    /// allocation; and after a graceful stop every stored block was allocated and every
    /// generated batch ran.
    #[test]
    fn the_core_keeps_its_invariants(steps in proptest::collection::vec(step(), 1..80), remember in 0..3u64) {
        let streams = [S0, S1];
        let mut s = Scheduler::new(config(remember * 1_000, &streams));
        let mut now = 10_000u64;
        let mut seq = [0u64; 2];
        let mut stored = Vec::new();
        let mut receivers_stopped = [false; 2];
        let mut m = Model::default();
        let mut stop_graceful = None;

        for st in steps {
            let actions = match st {
                Step::Store(i) => {
                    if receivers_stopped[i] { continue; }
                    let b = block(streams[i], seq[i], 1);
                    seq[i] += 1;
                    stored.push(b.id);
                    s.on_event(Event::BlockStored(b))
                }
                Step::Tick(dt) => { now += dt; s.on_tick(now) }
                Step::Complete => match m.running.take() {
                    Some(time) => s.on_event(Event::BatchCompleted { time }),
                    None => continue,
                },
                Step::Stop(graceful) => {
                    stop_graceful.get_or_insert(graceful);
                    if !graceful { stop_graceful = Some(false); }
                    s.on_event(Event::StopRequested { graceful })
                }
                Step::ReceiverStopped(i) => {
                    if receivers_stopped[i] { continue; }
                    receivers_stopped[i] = true;
                    s.on_event(Event::ReceiverStopped { stream: streams[i] })
                }
            };
            // A batch ahead of the clock only when nothing more can arrive.
            for (time, _) in allocated(&actions) {
                if time > now {
                    prop_assert!(
                        stop_graceful == Some(true) && receivers_stopped.iter().all(|r| *r),
                        "batch {} generated at {} while input could still arrive", time, now
                    );
                }
            }
            m.apply(actions)?;
        }
        // Drain a graceful stop: stop receivers, tick and complete until Stopped.
        if stop_graceful == Some(true) {
            for (i, r) in receivers_stopped.iter_mut().enumerate() {
                if !*r {
                    *r = true;
                    m.apply(s.on_event(Event::ReceiverStopped { stream: streams[i] }))?;
                }
            }
            for _ in 0..100 {
                if m.stopped.is_some() { break; }
                if let Some(time) = m.running.take() {
                    m.apply(s.on_event(Event::BatchCompleted { time }))?;
                } else {
                    now += 1_000;
                    m.apply(s.on_tick(now))?;
                }
            }
            prop_assert_eq!(m.stopped.as_deref(), Some(&[][..]), "graceful stop leaves nothing unprocessed");
            prop_assert_eq!(m.allocated_blocks.len(), stored.len(), "every stored block was allocated");
            prop_assert_eq!(m.ran.len(), m.allocated_times.len(), "every generated batch ran");
        }
    }
}
