//! `kill -9` the word-count driver at 20 seeded moments under `--durability ignore`: losses are allowed but never silent: the lost records the driver reports (its ledger across restarts) are exactly the lines missing from the final counts, and no word is ever counted twice.
//! The harness and its oracles: `tests::wordcount_kills`. Rerun a failing seed with
//! `EMBER_KILL_SEED=<seed> cargo test -p tests --test kill_wordcount_ignore -- --nocapture`.

use tests::wordcount_kills::{Mode, Storage, Suite};

#[test]
fn kill_9_the_driver_20_times() {
    Suite::standard(Mode::Ignore, Storage::Local, 5001).run_and_report();
}
