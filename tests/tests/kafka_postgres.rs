//! Kafka → word count → PostgreSQL (and files), exactly once, against a real broker (tansu)
//! and a real PostgreSQL, with real `ember` processes killed with `kill -9`.
//!
//! The setup and the oracles live in `tests::kafka_pipeline`: the expected counts come from
//! the workload definition (`ember gen --expected`), the end offsets from the broker, and
//! the results from PostgreSQL (or the batch files) themselves.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tests::kafka_pipeline::{KafkaPipeline, Kills, execute_sql, query_sql, wait_exit};
use tests::processes::ember_bin;
use tests::servers::Tansu;

/// The kill test's workload: the 1 M lines in 4 partitions, 10 lines per Kafka record
/// (100,000 records). tansu (sqlite storage) costs per record: one line per record it takes
/// about 30,000 lines/s in and serves about 11,000 out, which held this test to 200,000 lines;
/// with 10 lines per record it takes about 100,000 lines/s in and the test fits in about a
/// minute. One-line records stay covered by the other tests here.
const KILL_TEST_LINES: u64 = 1_000_000;
/// See [`KILL_TEST_LINES`].
const KILL_TEST_LINES_PER_RECORD: u32 = 10;

#[test]
fn kill9_at_20_seeded_moments_gives_exact_counts_and_offsets() {
    let Some(p) =
        KafkaPipeline::start_batched("lines", KILL_TEST_LINES, KILL_TEST_LINES_PER_RECORD, true)
    else {
        return;
    };
    // 1,000 records (10,000 lines) per partition per second: a killed run gets about a
    // second of reading in, so the 20 kills spread over most of the topic's 100,000 records
    // and the final run reads the rest.
    let kills = Kills {
        kill_rate: 1_000,
        ..Kills::new(20)
    };
    p.kill_rounds(&p.postgres_sink(), kills);
    p.check_postgres();
}

#[test]
fn broker_and_postgres_restarts_mid_run_give_exact_counts() {
    let Some(mut p) = KafkaPipeline::start("restarts", 100_000, true) else {
        return;
    };
    let mut child = p.spawn_wordcount(&p.postgres_sink(), 5_000, &[]);
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the restarts"
    );
    p.pg.as_mut().unwrap().restart(); // immediate stop: connections die mid-transaction
    std::thread::sleep(Duration::from_millis(1_000));
    p.tansu.kill9();
    std::thread::sleep(Duration::from_millis(1_500));
    p.tansu.restart();
    let status = wait_exit(&mut child, Duration::from_secs(240));
    assert!(
        status.success(),
        "the run did not survive the restarts ({status}); log:\n{}\ntansu:\n{}",
        p.log(),
        p.tansu.log()
    );
    p.check_postgres();
}

#[test]
fn unknown_topic_and_unreachable_broker_are_clear_errors() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    let out = Command::new(ember_bin())
        .args(["run", "wordcount", "--source"])
        .arg(format!("kafka://{}/no-such-topic", tansu.bootstrap()))
        .args([
            "--sink",
            "file:///nonexistent-unused",
            "--lines",
            "1",
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no-such-topic"), "{err}");

    let port = tests::servers::free_port();
    let out = Command::new(ember_bin())
        .args(["run", "wordcount", "--source"])
        .arg(format!("kafka://127.0.0.1:{port}/t"))
        .args([
            "--sink",
            "file:///nonexistent-unused",
            "--lines",
            "1",
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot reach Kafka at 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn kill9_with_the_files_sink_gives_exact_counts_and_offsets() {
    let Some(p) = KafkaPipeline::start("files", 100_000, false) else {
        return;
    };
    p.kill_rounds(&p.files_sink(), Kills::new(10));
    p.check_files();
}

/// A batch whose last partition fails to commit (a trigger in PostgreSQL raises for it) is
/// left partly committed; the next run must re-run exactly that batch, skip the committed
/// partitions and write the missing one, and the counts must still be exact.
#[test]
fn a_partly_committed_batch_is_finished_from_postgres_alone() {
    let Some(p) = KafkaPipeline::start("partial", 40_000, true) else {
        return;
    };
    let url = p.postgres().url();
    // The sink's own table (same DDL as engine::sink::postgres), then a trigger that fails
    // partition 3 once two batches are stored.
    execute_sql(
        &url,
        "CREATE TABLE ember_batches (
            pipeline text NOT NULL, batch_time_ms bigint NOT NULL, partition integer NOT NULL,
            partitions integer NOT NULL, offsets text NOT NULL, records bigint NOT NULL,
            committed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (pipeline, batch_time_ms, partition));
         CREATE FUNCTION ember_test_fail() RETURNS trigger AS $$ BEGIN
             IF NEW.partition = 3 AND (SELECT count(*) FROM ember_batches) >= 8 THEN
                 RAISE EXCEPTION 'injected failure for partition 3';
             END IF;
             RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER ember_test_fail BEFORE INSERT ON ember_batches
             FOR EACH ROW EXECUTE FUNCTION ember_test_fail();",
    );
    let sink = p.postgres_sink();
    let mut child = p.spawn_wordcount(&sink, 5_000, &[]);
    let status = wait_exit(&mut child, Duration::from_secs(120));
    assert!(
        !status.success(),
        "the injected failure did not fail the run"
    );
    let rows = query_sql(
        &url,
        "SELECT batch_time_ms, count(*) FROM ember_batches GROUP BY 1 ORDER BY 1 DESC LIMIT 1",
    );
    assert_eq!(
        rows[0].get::<_, i64>(1),
        3,
        "the newest batch should be committed for 3 of 4 partitions"
    );
    execute_sql(&url, "DROP TRIGGER ember_test_fail ON ember_batches");
    let mut child = p.spawn_wordcount(&sink, 5_000, &[]);
    let status = wait_exit(&mut child, Duration::from_secs(120));
    let text = p.log();
    assert!(
        status.success(),
        "the resumed run failed ({status}); log:\n{text}"
    );
    assert!(
        text.contains("Partial {"),
        "the restart did not see the partial batch; log:\n{text}"
    );
    assert!(
        text.contains("skipped=3"),
        "the re-run did not skip the 3 committed partitions; log:\n{text}"
    );
    p.check_postgres();
}
