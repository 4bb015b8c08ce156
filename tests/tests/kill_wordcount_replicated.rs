//! `kill -9` the word-count driver at 20 seeded moments under `--durability replicated` on three `ember executor`s with replication 2, one of which is also killed and restarted every fourth run: the final counts equal the expected counts exactly, and the generator saw no acknowledged line lost.
//! The harness and its oracles: `tests::wordcount_kills`. Rerun a failing seed with
//! `EMBER_KILL_SEED=<seed> cargo test -p tests --test kill_wordcount_replicated -- --nocapture`.

use tests::wordcount_kills::{Mode, Suite, run};

#[test]
fn kill_9_the_driver_20_times() {
    let outcome = run(&Suite {
        mode: Mode::Replicated,
        seed: 5003,
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
