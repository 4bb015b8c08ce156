//! The `ember` word-count commands as an operator runs them: the benchmark's JSON line, the
//! demo, and a graceful stop of a real process by SIGTERM (and its timeout).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engine::workload::process::GeneratorProcess;

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

/// Runs `ember bench wordcount ARGS --json`, checks that it succeeded, and returns its JSON
/// line, raw and parsed.
fn bench_wordcount_json(args: &[&str]) -> (String, serde_json::Value) {
    let out = ember()
        .args(["bench", "wordcount"])
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let r = serde_json::from_str(line).unwrap();
    (line.to_owned(), r)
}

#[test]
fn bench_wordcount_prints_the_baselines_keys_and_checks_the_counts() {
    let (line, r) = bench_wordcount_json(&[
        "--lines",
        "30000",
        "--words",
        "5",
        "--vocab",
        "500",
        "--batch-ms",
        "200",
    ]);
    for key in [
        "lines_per_s",
        "lines_per_s_connect_to_end",
        "connect_to_last_batch_end_s",
        "peak_rss_mb",
        "launch_to_connect_s",
        "batches",
        "proc_ms_mean",
        "proc_ms_max",
        "sched_delay_ms_mean",
        "sched_delay_ms_max",
        "gen_accept_epoch_ms",
        "batch_detail_time_records_proc_sched",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {line}");
    }
    assert_eq!(r["counts_match_expected"], true);
    assert_eq!(r["lines"], 30000);
    assert_eq!(r["words_counted"], 150000);
    assert!(r["peak_rss_mb"].as_f64().unwrap() > 1.0);
}

/// With 10-minute batches, the run can end within its timeout only if its last batch runs
/// when the generator's stream ends rather than at its grid time (10 minutes after the
/// pipeline started; the timeout is 5 minutes).
#[test]
fn bench_wordcount_ends_with_the_stream_not_at_the_next_grid_point() {
    let (line, r) = bench_wordcount_json(&[
        "--lines",
        "20000",
        "--words",
        "5",
        "--vocab",
        "500",
        "--batch-ms",
        "600000",
        "--timeout-s",
        "300",
    ]);
    assert_eq!(r["counts_match_expected"], true, "{line}");
    assert_eq!(r["lines"], 20000, "{line}");
    assert_eq!(r["stop_at_end_of_stream"], true, "{line}");
    // One batch holds every line, and it ended before its batch time.
    let batches = r["batch_detail_time_records_proc_sched"]
        .as_array()
        .unwrap();
    assert_eq!(batches.len(), 1, "{line}");
    let batch_time = batches[0][0].as_u64().unwrap();
    assert!(
        r["last_batch_end_epoch_ms"].as_u64().unwrap() < batch_time,
        "{line}"
    );
}

#[test]
fn demo_runs_the_word_count_and_checks_it() {
    let out = ember()
        .args([
            "demo",
            "--lines",
            "50000",
            "--batch-ms",
            "100",
            "--top",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = demo_checked_ok(out);
    assert!(
        stdout.contains("top 3 words:") && stdout.contains("1. bkquuxmr"),
        "{stdout}"
    );
}

/// The demo's standard output, after checking that it exited 0 and that its counts
/// matched the generator's.
fn demo_checked_ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every count equals the generator's expected count")
            && stdout.contains("OK"),
        "{stdout}"
    );
    stdout
}

/// The demo's last batch runs when the generator's stream ends: with 10-minute batches it
/// would otherwise wait for its grid time, 10 minutes after the start (the test gives up,
/// and kills it, after 2).
#[test]
fn demo_ends_with_the_stream_not_at_the_next_grid_point() {
    let mut child = ember()
        .args(["demo", "--lines", "20000", "--batch-ms", "600000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ember demo still running after 120 s: it waited for the batch grid");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    demo_checked_ok(child.wait_with_output().unwrap());
}

#[test]
fn sigterm_stops_a_running_pipeline_gracefully() {
    signal_stops_a_running_pipeline_gracefully("TERM", 143);
}

#[test]
fn sigint_stops_a_running_pipeline_gracefully() {
    signal_stops_a_running_pipeline_gracefully("INT", 130);
}

/// A streaming `ember run wordcount` over `ember gen --stream` that has completed two
/// non-empty batches (logging at info, so its stderr says so).
struct RunningWordcount {
    /// Holds `out` and `metrics`.
    _dir: tempfile::TempDir,
    run: std::process::Child,
    stderr: std::io::Lines<BufReader<std::process::ChildStderr>>,
    out: std::path::PathBuf,
    metrics: std::path::PathBuf,
    /// The line server (`ember gen`); declared last, so dropped after the run.
    _generator: GeneratorProcess,
}

impl RunningWordcount {
    /// Starts the pair, `extra` added to `ember run wordcount`'s flags, and waits for two
    /// completed batches.
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut gen_command = ember();
        gen_command
            .args(["gen", "--port", "0", "--lines", "20000000", "--stream"])
            .args(["--close-timeout-s", "5"])
            .stderr(Stdio::null());
        // Killed when dropped, after the run.
        let generator = GeneratorProcess::spawn(gen_command, Duration::from_secs(60)).unwrap();
        let (out, metrics) = (
            dir.path().join("counts.tsv"),
            dir.path().join("metrics.json"),
        );
        let mut run = ember()
            .args([
                "run",
                "wordcount",
                "--source",
                &format!("tcp://{}", generator.ready().addr),
                "--lines",
                "20000000",
                "--batch-ms",
                "200",
            ])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .arg("--metrics")
            .arg(&metrics)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(run.stderr.take().unwrap()).lines();
        let mut completed = 0;
        while completed < 2 {
            let line = stderr.next().unwrap().unwrap();
            if line.contains("batch completed") && !line.contains("records=0") {
                completed += 1;
            }
        }
        RunningWordcount {
            _dir: dir,
            run,
            stderr,
            out,
            metrics,
            _generator: generator,
        }
    }

    /// Sends SIG`signal` to the run and waits for it: its exit status and the rest of its
    /// stderr.
    fn signal_and_wait(&mut self, signal: &str) -> (std::process::ExitStatus, Vec<String>) {
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &self.run.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let rest: Vec<String> = self.stderr.by_ref().map(|l| l.unwrap()).collect();
        let status = self.run.wait().unwrap();
        (status, rest)
    }
}

/// Sends SIG`signal` to a running `ember run wordcount` after two batches; it must stop
/// gracefully (every received line processed and counted once) with exit 128 + signo.
fn signal_stops_a_running_pipeline_gracefully(signal: &str, exit_code: i32) {
    let mut running = RunningWordcount::start(&[]);
    let sent = Instant::now();
    let (status, rest) = running.signal_and_wait(signal);
    let (out, metrics) = (&running.out, &running.metrics);
    assert_eq!(status.code(), Some(exit_code), "{}", rest.join("\n"));
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "graceful stop took {:?}",
        sent.elapsed()
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("stopping on signal") && l.contains(&format!("SIG{signal}"))),
        "{}",
        rest.join("\n")
    );
    // Everything received was processed: the counts add up to exactly the lines processed.
    let m: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(metrics).unwrap().trim()).unwrap();
    let lines_done = m["lines"].as_u64().unwrap();
    assert!(lines_done > 0 && lines_done < 20_000_000, "{lines_done}");
    let words: u64 = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        words,
        lines_done * 10,
        "every processed line counted, each exactly once"
    );
}

/// `--graceful-stop-timeout-ms` reaches the driver: a graceful stop that cannot finish in
/// 1 ms (the receiver must stop, flush its block, and the last batch must run) becomes an
/// immediate one, and the run fails naming the setting, instead of exiting as stopped.
#[test]
fn a_graceful_stop_past_its_timeout_fails_and_names_the_setting() {
    let mut running = RunningWordcount::start(&["--graceful-stop-timeout-ms", "1"]);
    let (status, rest) = running.signal_and_wait("TERM");
    let stderr = rest.join("\n");
    assert!(
        !status.success() && status.code() != Some(143),
        "{status}: {stderr}"
    );
    assert!(
        stderr.contains("graceful stop timed out after 1 ms")
            && stderr.contains("graceful_stop_timeout_ms"),
        "{stderr}"
    );
}
