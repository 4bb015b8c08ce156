//! `kill -9` the word-count driver at 20 seeded moments under `--durability ignore`: losses are allowed but never silent: the lost records the driver reports (its ledger across restarts) are exactly the lines missing from the final counts, and no word is ever counted twice.
//! The harness and its oracles: `tests::wordcount_kills`. Rerun a failing seed with
//! `EMBER_KILL_SEED=<seed> cargo test -p tests --test kill_wordcount_ignore -- --nocapture`.

use tests::wordcount_kills::{Mode, Suite, run};

#[test]
fn kill_9_the_driver_20_times() {
    let outcome = run(&Suite {
        mode: Mode::Ignore,
        seed: 5001,
        lines: 500_000,
        words: 10,
        kills: 20,
        max_rate: 20_000,
        kill_after_ms: 300..1_200,
    });
    eprintln!(
        "kills landed: {}, lost records: {}, generator: {}",
        outcome.kills_landed, outcome.lost_records, outcome.ack_stats
    );
}
