//! Model-based property test: a trivial model of the log (a `Vec` of records plus how many
//! of them are durable) driven in lockstep with the real `Wal` on the simulated page
//! cache, through appends, syncs, power losses, clean restarts, retention and reads.
//!
//! After every reopen the recovered log must be a dense prefix of what was appended that
//! contains every record whose append had resolved durably, with the exact bytes.
//!
//! A failing case is shrunk and saved by proptest in `wal/proptest-regressions/model.txt`
//! (committed), and replayed first on every run: `cargo test -p wal --test model`.
#![allow(clippy::unwrap_used)]

mod common;

use proptest::prelude::*;
use wal::fs::SimDir;
use wal::{Config, Lsn, SyncPolicy, Wal};

use common::{Backend, Sim, assert_records, read_all};

#[derive(Clone, Debug)]
enum Action {
    /// Append records of these lengths, one after the other.
    Append(Vec<usize>),
    /// `Wal::sync`.
    Sync,
    /// Power loss with this seed, then reopen.
    Crash(u64),
    /// Clean close, then reopen.
    Reopen,
    /// Retention up to a point chosen by `per_mille` of the way through the log.
    TruncateBefore(u16),
    /// Read the record `per_mille` of the way through the log.
    Read(u16),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => prop::collection::vec(0usize..300, 1..6).prop_map(Action::Append),
        2 => Just(Action::Sync),
        2 => any::<u64>().prop_map(Action::Crash),
        1 => Just(Action::Reopen),
        1 => (0u16..1000).prop_map(Action::TruncateBefore),
        2 => (0u16..1000).prop_map(Action::Read),
    ]
}

fn policy() -> impl Strategy<Value = SyncPolicy> {
    prop_oneof![
        Just(SyncPolicy::UnsafeNoSync),
        Just(SyncPolicy::GROUP_COMMIT_DEFAULT),
        Just(SyncPolicy::EveryRecord),
    ]
}

struct Model {
    /// Record `i` has Lsn `i + 1`.
    records: Vec<Vec<u8>>,
    /// How many leading records are durable (survive any crash).
    durable: usize,
    /// Records before this Lsn may have been removed by retention.
    retained_from: Lsn,
}

impl Model {
    fn lsn_at(&self, per_mille: u16) -> Option<Lsn> {
        let first = self.retained_from.get().max(1);
        let last = self.records.len() as u64;
        (first <= last).then(|| Lsn::new(first + (last - first) * u64::from(per_mille) / 1000))
    }
}

/// Checks the recovered log against the model, then makes the model match it.
fn check_recovered(wal: &Wal, model: &mut Model, context: &str) {
    let recovered = read_all(wal);
    let first = recovered.first().map_or(wal.next_lsn(), |r| r.0);
    let end = wal.next_lsn().get() as usize - 1; // Lsn of the last record
    assert!(
        end >= model.durable,
        "durable records lost: log ends at {end}, {} were durable; {context}",
        model.durable
    );
    assert!(
        end <= model.records.len(),
        "log ends at {end}, only {} appended; {context}",
        model.records.len()
    );
    // Nothing at or after the retention point is missing at the front. (Records before
    // it may be gone even if the model did not count them durable: sealing a segment
    // always syncs it, so retention can delete records the model thinks are volatile.)
    let must_start_by = model
        .retained_from
        .max(Lsn::FIRST)
        .min(Lsn::new(end as u64 + 1));
    assert!(
        first <= must_start_by,
        "log starts at Lsn {first}, expected by {must_start_by}; {context}"
    );
    let want: Vec<_> = (first.get()..=end as u64)
        .map(|lsn| (Lsn::new(lsn), model.records[lsn as usize - 1].clone()))
        .collect();
    assert_records(&recovered, &want, context);
    model.records.truncate(end);
    model.durable = end; // after recovery everything present is durable
}

fn run(policy: SyncPolicy, segment_size_max_bytes: u64, preallocate: bool, actions: &[Action]) {
    let backend = Sim {
        sim: SimDir::new(),
        preallocate,
    };
    let record_size_max_bytes = actions
        .iter()
        .filter_map(|a| match a {
            Action::Append(lens) => lens.iter().max().copied(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
        .max(300) as u64;
    let config = Config {
        segment_size_max_bytes: segment_size_max_bytes.max(record_size_max_bytes + 48),
        record_size_max_bytes,
        sync_policy: policy,
        index_interval_bytes: 100,
        append_bytes_in_flight_max: 1 << 20,
        ..Config::default()
    };
    let mut wal = Some(backend.open(config).unwrap());
    let mut model = Model {
        records: Vec::new(),
        durable: 0,
        retained_from: Lsn::new(0),
    };
    let syncs_each_append = !matches!(policy, SyncPolicy::UnsafeNoSync);
    for (step, action) in actions.iter().enumerate() {
        let context = format!(
            "step {step} ({action:?}) of {actions:?}, {policy:?}, segments of {segment_size_max_bytes} bytes"
        );
        let log = wal.as_ref().unwrap();
        match action {
            Action::Append(lens) => {
                for &len in lens {
                    let n = model.records.len() as u64;
                    let bytes = common::payload(step as u64, n, len);
                    let lsn = log
                        .append_blocking(bytes.clone())
                        .unwrap_or_else(|e| panic!("append: {e}; {context}"));
                    assert_eq!(lsn, Lsn::new(n + 1), "{context}");
                    model.records.push(bytes);
                    if syncs_each_append {
                        model.durable = model.records.len();
                    }
                }
            }
            Action::Sync => {
                let durable = log.sync_blocking().unwrap();
                assert_eq!(
                    durable.map_or(0, Lsn::get),
                    model.records.len() as u64,
                    "{context}"
                );
                model.durable = model.records.len();
            }
            Action::Crash(seed) => {
                // Crash first, then drop: dropping first would be a clean close.
                let report = backend.sim.crash(*seed);
                drop(wal.take());
                let reopened = backend
                    .open(config)
                    .unwrap_or_else(|e| panic!("reopen after crash ({report}): {e}; {context}"));
                check_recovered(
                    &reopened,
                    &mut model,
                    &format!("{context}; crash: {report}"),
                );
                wal = Some(reopened);
            }
            Action::Reopen => {
                wal.take().unwrap().close().unwrap();
                model.durable = model.records.len();
                let reopened = backend.open(config).unwrap();
                check_recovered(&reopened, &mut model, &context);
                wal = Some(reopened);
            }
            Action::TruncateBefore(per_mille) => {
                if let Some(lsn) = model.lsn_at(*per_mille) {
                    log.truncate_before(lsn).unwrap();
                    model.retained_from = model.retained_from.max(lsn);
                    let first = log.first_lsn().unwrap();
                    assert!(
                        first <= lsn,
                        "retention removed Lsn {lsn} or later (first is now {first}); {context}"
                    );
                }
            }
            Action::Read(per_mille) => {
                if let Some(lsn) = model.lsn_at(*per_mille) {
                    let first = log.first_lsn().unwrap();
                    if lsn >= first {
                        let got = log
                            .read(lsn)
                            .unwrap_or_else(|e| panic!("read({lsn}): {e}; {context}"));
                        assert_eq!(
                            &got[..],
                            &model.records[lsn.get() as usize - 1][..],
                            "{context}"
                        );
                    }
                }
            }
        }
    }
    // A final crash: whatever the sequence did, recovery still holds.
    let report = backend.sim.crash(0x00DD_BA11);
    drop(wal.take());
    let reopened = backend
        .open(config)
        .unwrap_or_else(|e| panic!("final reopen ({report}): {e}"));
    check_recovered(
        &reopened,
        &mut model,
        &format!("final crash: {report}; after {actions:?}"),
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        // Relative to the package root, where `cargo test` runs: wal/proptest-regressions/.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/model.txt"),
        )),
        ..ProptestConfig::default()
    })]

    /// The same with records of several KiB too, which take the writer's other path
    /// (written without copying, hashed by the appending thread).
    #[test]
    fn with_large_records_too(
        policy in policy(),
        segment_size_max_bytes in 10_000u64..40_000,
        preallocate in any::<bool>(),
        actions in prop::collection::vec(
            prop_oneof![
                3 => prop::collection::vec(prop_oneof![0usize..300, 4000usize..9000], 1..4)
                    .prop_map(Action::Append),
                1 => action(),
            ],
            1..30,
        ),
    ) {
        run(policy, segment_size_max_bytes, preallocate, &actions);
    }

    #[test]
    fn recovered_log_is_a_prefix_holding_every_durable_record(
        policy in policy(),
        segment_size_max_bytes in 400u64..4096,
        preallocate in any::<bool>(),
        actions in prop::collection::vec(action(), 1..40),
    ) {
        run(policy, segment_size_max_bytes, preallocate, &actions);
    }
}
