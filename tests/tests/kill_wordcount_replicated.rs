//! `kill -9` the word-count driver at 20 seeded moments under `--durability replicated` on three `ember executor`s with replication 2, one of which is also killed and restarted every fourth run: the final counts equal the expected counts exactly, and the generator saw no acknowledged line lost.
//! The harness and its oracles: `tests::wordcount_kills`. Rerun a failing seed with
//! `EMBER_KILL_SEED=<seed> cargo test -p tests --test kill_wordcount_replicated -- --nocapture`.

use tests::wordcount_kills::{Mode, Storage, Suite};

#[test]
fn kill_9_the_driver_20_times() {
    Suite::standard(Mode::Replicated, Storage::Local, 5003).run_and_report();
}
