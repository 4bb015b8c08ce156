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
    pg: &str,
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
        .args([
            "--sink",
            &format!("{pg}?table=word_counts&pipeline=wc-{topic}"),
        ])
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
        let mut stored = BTreeMap::new();
        // [{"topic":..,"partition":p,"from":f,"until":u},...]
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
        (counts, stored)
    })
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
    // broker here (tansu on sqlite) takes about 15,000 lines/s in, 11,000 out. The rate cap
    // (2,500 offsets per partition per second) keeps each run short of the end, so the
    // kills land in every phase: start-up, reading, counting, committing.
    let lines = 200_000u64;
    gen_topic(&tansu.bootstrap(), "lines", lines, &expected);

    let seed: u64 = std::env::var("EMBER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x006b_6166_6b61);
    eprintln!("kill seed {seed} (EMBER_KILL_SEED to reproduce)");
    let mut rng = seed;
    let mut kills = 0;
    for round in 0..20 {
        let mut child = spawn_wordcount(
            &tansu.bootstrap(),
            "lines",
            &pg.url(),
            lines,
            2_500,
            &out,
            &log,
        );
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
    eprintln!("{kills} kills");
    let mut child = spawn_wordcount(
        &tansu.bootstrap(),
        "lines",
        &pg.url(),
        lines,
        25_000,
        &out,
        &log,
    );
    let status = wait(&mut child, Duration::from_secs(300));
    assert!(
        status.success(),
        "the final run failed ({status}); log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        kills >= 10,
        "only {kills} kills happened before the run completed: the test is too short to prove anything"
    );
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
        &pg.url(),
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
