//! Model-based property test: random sequences of publishes, publishes cut short by a
//! process death at a random step, power losses of every kind, and clean restarts, on the
//! simulated page cache. After every restart the newest readable checkpoint must be
//!
//! - one whose publish returned `Ok`, or a later one whose publish was in flight;
//! - never garbage: exactly the checkpoint that was published, with its verified state;
//! - never older than the newest whose publish returned `Ok`;
//!
//! and retention must hold after every successful publish. A failure prints the action
//! list (proptest shrinks it) and the regression seed lands in `proptest-regressions/`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use checkpoint::{Checkpoint, CheckpointStore, names};
use common::*;
use proptest::prelude::*;
use wal::fs::{CrashMode, SimDir};

#[derive(Clone, Debug)]
enum Action {
    /// Snapshot and publish checkpoint `k`; it returns `Ok`.
    Publish,
    /// Snapshot and publish, but the process dies after `steps` mutating steps; then the
    /// power fails (`mode`, `seed`) and the process restarts.
    PublishDying { steps: u8, mode: u8, seed: u64 },
    /// The power fails at a quiet moment; restart.
    Crash { mode: u8, seed: u64 },
    /// A clean restart (no crash).
    Reopen,
}

const MODES: [CrashMode; 7] = [
    CrashMode::Random,
    CrashMode::LosePending,
    CrashMode::KeepPending,
    CrashMode::TearLastWrite,
    CrashMode::GarbageInLastWrite,
    CrashMode::FlipBitInLastWrite,
    CrashMode::ZeroFillLastWrite,
];

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Publish),
        3 => (0u8..20, 0u8..7, any::<u64>()).prop_map(|(steps, mode, seed)| Action::PublishDying { steps, mode, seed }),
        2 => (0u8..7, any::<u64>()).prop_map(|(mode, seed)| Action::Crash { mode, seed }),
        1 => Just(Action::Reopen),
    ]
}

/// What the test knows must hold.
struct Model {
    /// The checkpoint each attempt `k` would publish, once its snapshot reference is known.
    attempts: BTreeMap<u64, Checkpoint>,
    /// The newest checkpoint a restart may not go back before: the last whose publish
    /// returned `Ok`, or the one the last restart found (it survived a crash, so it is
    /// durable).
    floor: Option<u64>,
    /// Attempts after `floor` whose publish failed: a restart may find any of them.
    in_flight: Vec<u64>,
    next_k: u64,
}

fn k_of(c: &Checkpoint) -> u64 {
    (c.batch_time_ms() - ZERO_MS) / INTERVAL_MS
}

/// A writer store; `broken` skips every directory fsync (the canary).
fn open(sim: &SimDir, retained: usize, broken: bool) -> CheckpointStore {
    if !broken {
        return sim_store(sim, retained);
    }
    let (store, dying) = dying_store(sim, retained, Death::Never);
    dying.skip_sync_dir();
    store
}

/// Restarts on `sim` and checks the newest checkpoint against the model.
fn restart(
    sim: &SimDir,
    retained: usize,
    broken: bool,
    model: &mut Model,
    context: &str,
) -> CheckpointStore {
    let store = open(sim, retained, broken);
    let restored = store
        .restore()
        .unwrap_or_else(|e| panic!("{context}: restore failed: {e}"));
    match restored {
        None => assert!(
            model.floor.is_none(),
            "{context}: no checkpoint, but attempt {:?} was acknowledged",
            model.floor
        ),
        Some(r) => {
            let k = k_of(&r.checkpoint);
            let allowed = model.floor == Some(k) || model.in_flight.contains(&k);
            assert!(
                allowed,
                "{context}: found checkpoint of attempt {k}; acknowledged {:?}, in flight {:?}",
                model.floor, model.in_flight
            );
            assert_eq!(
                Some(&r.checkpoint),
                model.attempts.get(&k),
                "{context}: checkpoint of attempt {k} is not what was published"
            );
            assert_eq!(
                r.state["counts"],
                state_body(k),
                "{context}: state of attempt {k}"
            );
            assert!(r.skipped.is_empty(), "{context}: skipped {:?}", r.skipped);
            model.floor = Some(k);
        }
    }
    model.in_flight.clear();
    store
}

fn run(retained: usize, actions: &[Action], broken: bool) {
    let sim = SimDir::new();
    let mut model = Model {
        attempts: BTreeMap::new(),
        floor: None,
        in_flight: Vec::new(),
        next_k: 1,
    };
    let mut store = Some(open(&sim, retained, broken));
    for (i, action) in actions.iter().enumerate() {
        let context = format!("action {i} ({action:?}) of {actions:?}");
        match *action {
            Action::Publish => {
                let k = model.next_k;
                model.next_k += 1;
                let s = store.as_ref().unwrap();
                let c = publish_with_state(s, k).unwrap_or_else(|e| panic!("{context}: {e}"));
                model.attempts.insert(k, c);
                model.floor = Some(k);
                model.in_flight.clear();
                let seqs = checkpoint_seqs(&sim.handle());
                assert!(
                    seqs.len() <= retained,
                    "{context}: {seqs:?} kept, N = {retained}"
                );
                let snaps = s.snapshots();
                assert!(
                    snaps.len() <= retained,
                    "{context}: snapshots {snaps:?}, N = {retained}"
                );
            }
            Action::PublishDying { steps, mode, seed } => {
                drop(store.take());
                let k = model.next_k;
                model.next_k += 1;
                let (s, dying) = dying_store(&sim, retained, Death::AfterSteps(u64::from(steps)));
                if broken {
                    dying.skip_sync_dir();
                }
                // The reference is deterministic, so the expected checkpoint is known even
                // if the process dies before put_snapshot returns.
                let r = checkpoint::StateRef {
                    operator: "counts".to_owned(),
                    taken_at_ms: batch_ms(k),
                    object: names::snapshot_name(
                        "counts",
                        batch_ms(k),
                        crc32fast::hash(&state_body(k)),
                    ),
                    crc32: crc32fast::hash(&state_body(k)),
                    len_bytes: state_body(k).len() as u64,
                };
                model.attempts.insert(k, checkpoint_at(k, vec![r]));
                match publish_with_state(&s, k) {
                    Ok(_) => {
                        model.floor = Some(k);
                        model.in_flight.clear();
                    }
                    Err(_) => model.in_flight.push(k),
                }
                drop(s);
                let report = sim.crash_with(MODES[usize::from(mode)], seed);
                store = Some(restart(
                    &sim,
                    retained,
                    broken,
                    &mut model,
                    &format!("{context}; crash: {report}"),
                ));
            }
            Action::Crash { mode, seed } => {
                drop(store.take());
                let report = sim.crash_with(MODES[usize::from(mode)], seed);
                store = Some(restart(
                    &sim,
                    retained,
                    broken,
                    &mut model,
                    &format!("{context}; crash: {report}"),
                ));
            }
            Action::Reopen => {
                drop(store.take());
                store = Some(restart(&sim, retained, broken, &mut model, &context));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn newest_checkpoint_after_any_crash_is_acknowledged_or_in_flight(
        retained in 1usize..=3,
        actions in proptest::collection::vec(action(), 1..25),
    ) {
        run(retained, &actions, false);
    }
}

#[test]
fn canary_the_model_catches_a_publish_without_directory_fsync() {
    // The model must be able to fail: on storage whose directory fsync does nothing, a
    // publish returns Ok although a power loss can undo its rename. The same check that
    // passes above must fail here.
    let actions = [
        Action::Publish,
        Action::Crash {
            mode: 1, // LosePending
            seed: 0,
        },
    ];
    let caught = std::panic::catch_unwind(|| run(2, &actions, true));
    let message = caught.expect_err("the model accepted a publish that a crash undid");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("was acknowledged"), "{text}");
    // And the same actions on the real store pass.
    run(2, &actions, false);
}
