//! `kill -9` the word-count driver at 20 seeded moments under `--durability wal` with the
//! whole checkpoint location on the moto S3 server (`--checkpoint s3://ember-test/...`: the
//! data WAL, the metadata log and the checkpoints, S3 settings from the driver's `AWS_*`
//! environment): the final counts equal the expected counts exactly, and the generator saw
//! no acknowledged line lost. Skipped, saying so, if moto is not installed.
//! The harness and its oracles: `tests::wordcount_kills`. Rerun a failing seed with
//! `EMBER_KILL_SEED=<seed> cargo test -p tests --test kill_wordcount_s3 -- --nocapture`.

use tests::wordcount_kills::{Mode, Storage, Suite};

#[test]
fn kill_9_the_driver_20_times_with_everything_on_s3() {
    Suite::standard(Mode::Wal, Storage::S3, 5004).run_and_report();
}
