//! Kafka → word count → PostgreSQL, exactly once, against a real broker (tansu) and a real
//! PostgreSQL, with real `ember` processes killed with `kill -9`.
//!
//! The oracle is independent of the pipeline: the expected counts come from the workload
//! definition (`ember gen --expected`), the end offsets from the broker, and the results from
//! PostgreSQL itself.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tests::processes::ember_bin;
use tests::servers::{Postgres, Tansu};

const PARTITIONS: u32 = 4;

fn gen_topic(bootstrap: &str, topic: &str, lines: u64, expected: &Path) {
    let out = Command::new(ember_bin())
        .args(["gen", "--kafka", &format!("{bootstrap}/{topic}")])
        .args(["--partitions", &PARTITIONS.to_string()])
        .args(["--lines", &lines.to_string(), "--expected"])
        .arg(expected)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ember gen --kafka failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_wordcount(
    bootstrap: &str,
    topic: &str,
    sink: &str,
    lines: u64,
    max_rate: u32,
    out: &Path,
    log: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(ember_bin())
        .args([
            "run",
            "wordcount",
            "--source",
            &format!("kafka://{bootstrap}/{topic}"),
        ])
        .args(["--sink", sink])
        .args([
            "--lines",
            &lines.to_string(),
            "--batch-ms",
            "200",
            "--partitions",
            "4",
        ])
        .args([
            "--max-rate-per-partition",
            &max_rate.to_string(),
            "--timeout-s",
            "240",
        ])
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn,engine::sink=info,ember::kafka=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn wait(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ember run wordcount did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The table and the offsets of the newest complete batch, read from PostgreSQL.
fn read_results(pg: &str, pipeline: &str) -> (BTreeMap<String, i64>, BTreeMap<i32, i64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let counts = client
            .query("SELECT key, value FROM word_counts", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        // Every partition of every batch committed exactly once: the newest batch is
        // complete, and its offsets are where the stream ends.
        let newest = client
            .query(
                "SELECT partition, partitions, offsets FROM ember_batches WHERE pipeline = $1 \
                 AND batch_time_ms = (SELECT max(batch_time_ms) FROM ember_batches WHERE pipeline = $1)",
                &[&pipeline],
            )
            .await
            .unwrap();
        assert!(!newest.is_empty(), "no batch stored for {pipeline}");
        let partitions: i32 = newest[0].get(1);
        assert_eq!(newest.len(), partitions as usize, "the newest batch is only partly committed");
        let offsets: String = newest[0].get(2);
        let stored = parse_offsets(&offsets);
        (counts, stored)
    })
}

/// `[{"topic":..,"partition":p,"from":f,"until":u},...]` into partition -> until.
fn parse_offsets(offsets: &str) -> BTreeMap<i32, i64> {
    let mut stored = BTreeMap::new();
    for range in offsets.split('{').skip(1) {
        let field = |name: &str| -> i64 {
            let at = range.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
            range[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect::<String>()
                .parse()
                .unwrap()
        };
        stored.insert(field("partition") as i32, field("until"));
    }
    stored
}

fn end_offsets(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ember-test-oracle")
        .create()
        .unwrap();
    (0..PARTITIONS as i32)
        .map(|p| {
            (
                p,
                c.fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1,
            )
        })
        .collect()
}

fn expected_counts(path: &Path) -> BTreeMap<String, i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (w, c) = l.split_once('\t').unwrap();
            (w.to_owned(), c.parse().unwrap())
        })
        .collect()
}

fn check_exact(pg: &Postgres, tansu: &Tansu, topic: &str, expected: &Path, log: &Path) {
    let (counts, stored) = read_results(&pg.url(), &format!("wc-{topic}"));
    let expected = expected_counts(expected);
    let log = std::fs::read_to_string(log).unwrap_or_default();
    if counts != expected {
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(w, c)| counts.get(*w) != Some(c))
            .take(5)
            .map(|(w, c)| format!("{w}: expected {c}, stored {:?}", counts.get(w)))
            .collect();
        panic!(
            "PostgreSQL counts differ from the workload's ({} vs {} words): {wrong:?}\nlog:\n{log}",
            counts.len(),
            expected.len()
        );
    }
    assert_eq!(
        stored,
        end_offsets(&tansu.bootstrap(), topic),
        "stored offsets are not the topic's end offsets"
    );
}

fn pg_sink(pg: &Postgres, topic: &str) -> String {
    format!("{}?table=word_counts&pipeline=wc-{topic}", pg.url())
}

/// Starts the word count `rounds` times and kills each with `kill -9` at a seeded moment,
/// then runs it to completion.
fn kill_rounds(
    tansu: &Tansu,
    topic: &str,
    sink: &str,
    lines: u64,
    rounds: u32,
    out: &Path,
    log: &Path,
) {
    let seed: u64 = std::env::var("EMBER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x006b_6166_6b61);
    eprintln!("kill seed {seed} (EMBER_KILL_SEED to reproduce)");
    let mut rng = seed;
    let mut kills = 0;
    for round in 0..rounds {
        // The rate cap (2,500 offsets per partition per second) keeps each run short of the
        // end, so the kills land in every phase: start-up, reading, counting, committing.
        let mut child = spawn_wordcount(&tansu.bootstrap(), topic, sink, lines, 2_500, out, log);
        // Between 0.4 s (during start-up) and 2.4 s (mid-batch, mid-commit).
        let delay = Duration::from_millis(400 + splitmix(&mut rng) % 2_000);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            eprintln!("round {round}: finished before the kill");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let mut child = spawn_wordcount(&tansu.bootstrap(), topic, sink, lines, 25_000, out, log);
    let status = wait(&mut child, Duration::from_secs(300));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "the final run failed ({status}); log:\n{text}"
    );
    eprintln!(
        "{kills} kills; {} restarts re-ran a partly written batch; {} partition writes skipped as already committed",
        text.matches("Partial {").count(),
        text.matches("already committed by an earlier run").count()
    );
    assert!(
        kills >= rounds / 2,
        "only {kills} kills happened before the run completed: the test is too short to prove anything"
    );
}

/// A tiny seeded generator (splitmix64) for the kill moments.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn kill9_at_20_seeded_moments_gives_exact_counts_and_offsets() {
    let (Some(tansu), Some(pg)) = (Tansu::start(), Postgres::start()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.tsv");
    let log = dir.path().join("ember.log");
    let out = dir.path().join("counts.tsv");
    // Scaled down from the 1 M lines to keep CI time to a minute or two: the
    // broker here (tansu on sqlite) takes about 15,000 lines/s in, 11,000 out.
    let lines = 200_000u64;
    gen_topic(&tansu.bootstrap(), "lines", lines, &expected);

    let sink = pg_sink(&pg, "lines");
    kill_rounds(&tansu, "lines", &sink, lines, 20, &out, &log);
    check_exact(&pg, &tansu, "lines", &expected, &log);
}

#[test]
fn broker_and_postgres_restarts_mid_run_give_exact_counts() {
    let (Some(mut tansu), Some(mut pg)) = (Tansu::start(), Postgres::start()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.tsv");
    let log = dir.path().join("ember.log");
    let out = dir.path().join("counts.tsv");
    let lines = 100_000u64;
    gen_topic(&tansu.bootstrap(), "restarts", lines, &expected);
    let mut child = spawn_wordcount(
        &tansu.bootstrap(),
        "restarts",
        &pg_sink(&pg, "restarts"),
        lines,
        5_000,
        &out,
        &log,
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the restarts"
    );
    pg.restart(); // immediate stop: connections die mid-transaction
    std::thread::sleep(Duration::from_millis(1_000));
    tansu.kill9();
    std::thread::sleep(Duration::from_millis(1_500));
    tansu.restart();
    let status = wait(&mut child, Duration::from_secs(240));
    assert!(
        status.success(),
        "the run did not survive the restarts ({status}); log:\n{}\ntansu:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        tansu.log()
    );
    check_exact(&pg, &tansu, "restarts", &expected, &log);
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

/// The files sink: the sum over every complete batch directory, and the newest complete
/// batch's offsets.
fn read_files(dir: &Path) -> (BTreeMap<String, i64>, BTreeMap<i32, i64>) {
    let mut totals = BTreeMap::new();
    let mut newest: Option<(u64, String)> = None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let batch = entry.unwrap().path();
        let name = batch.file_name().unwrap().to_string_lossy().into_owned();
        let Some(ms) = name
            .strip_prefix("batch-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if !batch.join("_SUCCESS").exists() {
            continue;
        }
        if newest.as_ref().is_none_or(|(t, _)| ms > *t) {
            newest = Some((ms, std::fs::read_to_string(batch.join("_OFFSETS")).unwrap()));
        }
        for part in std::fs::read_dir(&batch).unwrap() {
            let part = part.unwrap().path();
            if !part
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
            {
                continue;
            }
            for line in std::fs::read_to_string(&part).unwrap().lines() {
                let (word, count) = line[1..line.len() - 1].rsplit_once(',').unwrap();
                *totals.entry(word.to_owned()).or_insert(0) += count.parse::<i64>().unwrap();
            }
        }
    }
    let (_, offsets) = newest.expect("no complete batch directory");
    (totals, parse_offsets(&offsets))
}

#[test]
fn kill9_with_the_files_sink_gives_exact_counts_and_offsets() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.tsv");
    let log = dir.path().join("ember.log");
    let out = dir.path().join("counts.tsv");
    let batches = dir.path().join("batches");
    let lines = 100_000u64;
    gen_topic(&tansu.bootstrap(), "files", lines, &expected);
    let sink = format!("file://{}", batches.display());
    kill_rounds(&tansu, "files", &sink, lines, 10, &out, &log);
    let (counts, stored) = read_files(&batches);
    assert!(
        counts == expected_counts(&expected),
        "summed batch files differ from the workload's counts"
    );
    assert_eq!(stored, end_offsets(&tansu.bootstrap(), "files"));
}

/// A batch whose last partition fails to commit (a trigger in PostgreSQL raises for it) is
/// left partly committed; the next run must re-run exactly that batch, skip the committed
/// partitions and write the missing one, and the counts must still be exact.
#[test]
fn a_partly_committed_batch_is_finished_from_postgres_alone() {
    let (Some(tansu), Some(pg)) = (Tansu::start(), Postgres::start()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.tsv");
    let log = dir.path().join("ember.log");
    let out = dir.path().join("counts.tsv");
    let lines = 40_000u64;
    gen_topic(&tansu.bootstrap(), "partial", lines, &expected);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sql = |text: String| {
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(&text).await.unwrap();
        })
    };
    // The sink's own table (same DDL as engine::sink::postgres), then a trigger that fails
    // partition 3 once two batches are stored.
    sql("CREATE TABLE ember_batches (
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
             FOR EACH ROW EXECUTE FUNCTION ember_test_fail();"
        .to_owned());
    let sink = pg_sink(&pg, "partial");
    let mut child = spawn_wordcount(
        &tansu.bootstrap(),
        "partial",
        &sink,
        lines,
        5_000,
        &out,
        &log,
    );
    let status = wait(&mut child, Duration::from_secs(120));
    assert!(
        !status.success(),
        "the injected failure did not fail the run"
    );
    let rows: Vec<(i64, i64)> = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(
                "SELECT batch_time_ms, count(*) FROM ember_batches GROUP BY 1 ORDER BY 1 DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    });
    assert_eq!(
        rows[0].1, 3,
        "the newest batch should be committed for 3 of 4 partitions"
    );
    sql("DROP TRIGGER ember_test_fail ON ember_batches".to_owned());
    let mut child = spawn_wordcount(
        &tansu.bootstrap(),
        "partial",
        &sink,
        lines,
        5_000,
        &out,
        &log,
    );
    let status = wait(&mut child, Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
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
    check_exact(&pg, &tansu, "partial", &expected, &log);
}
