//! `ember gen` as a process: the protocol a benchmark reads (through
//! `engine::workload::process`), its output files, and its errors.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use engine::workload::process::GeneratorProcess;
use engine::workload::{Workload, WorkloadSpec};

fn reference(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

fn gen_output(args: &[&str]) -> Output {
    ember().arg("gen").args(args).output().unwrap()
}

fn read_all(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).unwrap();
    let mut received = Vec::new();
    socket.read_to_end(&mut received).unwrap();
    received
}

#[test]
fn serves_the_reference_lines_and_reports_the_baselines_stats() {
    let dir = tempfile::tempdir().unwrap();
    let expected_path = dir.path().join("expected.tsv");
    for stream in [false, true] {
        let mut command = ember();
        command
            .arg("gen")
            .args(WorkloadSpec::new(1000, 10).to_gen_args())
            .args(["--port", "0", "--threads", "2"])
            .arg("--expected")
            .arg(&expected_path);
        if stream {
            command.arg("--stream");
        }
        let generator = GeneratorProcess::spawn(command, Duration::from_secs(60)).unwrap();
        let ready = generator.ready().clone();
        assert_ne!(ready.addr.port(), 0);
        assert_eq!((ready.lines, ready.words), (1000, 10));
        assert_eq!(ready.bytes, if stream { None } else { Some(76_215) });
        // The expected counts are written before READY.
        let expected = Workload::new(WorkloadSpec::new(1000, 10))
            .unwrap()
            .expected_counts(1);
        assert_eq!(std::fs::read(&expected_path).unwrap(), expected.to_tsv());

        assert_eq!(
            read_all(ready.addr),
            reference("lines-n1000-k10-s42.txt"),
            "stream {stream}"
        );
        let stats = generator.wait().unwrap();
        assert_eq!((stats.gen_lines, stats.gen_bytes), (1000, 76_215));
        assert!(stats.gen_write_s <= stats.gen_client_close_s);
    }
}

#[test]
fn writes_the_reference_expected_counts_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("expected.tsv");
    let output = gen_output(&[
        "--lines",
        "2000000",
        "--expected-only",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        reference("expected-n2000000-k10-s42.tsv")
    );

    let output = gen_output(&["--lines", "1000", "--words", "10", "--dump", "--out", "-"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, reference("lines-n1000-k10-s42.txt"));

    let output = gen_output(&[
        "--lines", "300", "--words", "7", "--seed", "7", "--vocab", "1000", "--zipf-s", "0.8",
        "--dump", "--out", "-",
    ]);
    assert_eq!(
        output.stdout,
        reference("lines-n300-k7-seed7-v1000-s0.8.txt")
    );
}

#[test]
fn bad_arguments_fail_with_a_message_naming_them() {
    let cases: &[(&[&str], &str)] = &[
        (&["--lines", "10", "--words", "0", "--port", "0"], "--words"),
        (
            &["--lines", "10", "--zipf-s", "nan", "--port", "0"],
            "--zipf-s",
        ),
        (&["--lines", "10"], "--port"),
        (&["--lines", "10", "--port", "0", "--out", "x"], "--out"),
        (&["--lines", "10", "--expected-only"], "--out"),
        (
            &[
                "--lines",
                "10",
                "--expected-only",
                "--out",
                "/nonexistent-dir/x.tsv",
            ],
            "/nonexistent-dir/x.tsv",
        ),
    ];
    for (args, named) in cases {
        let output = gen_output(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_port_in_use_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = gen_output(&["--lines", "10", "--port", &port]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn a_generator_that_dies_before_ready_is_reported() {
    let mut command = ember();
    command.args(["gen", "--lines", "10", "--vocab", "0", "--port", "0"]);
    let err = GeneratorProcess::spawn(command, Duration::from_secs(60)).unwrap_err();
    assert!(
        err.to_string().contains("exited before printing READY"),
        "{err}"
    );
}

#[test]
fn a_generator_that_is_not_ready_in_time_is_killed() {
    // Pre-generating 300 M lines takes far longer than the timeout.
    let mut command = ember();
    command.args([
        "gen",
        "--lines",
        "300000000",
        "--port",
        "0",
        "--threads",
        "1",
    ]);
    let started = Instant::now();
    let err = GeneratorProcess::spawn(command, Duration::from_millis(300)).unwrap_err();
    assert!(err.to_string().contains("no READY line within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn wait_reports_a_generator_killed_while_serving() {
    let mut command = ember();
    command.args(["gen", "--lines", "10", "--port", "0"]);
    let generator = GeneratorProcess::spawn(command, Duration::from_secs(60)).unwrap();
    let pid = generator.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let err = generator.wait().unwrap_err();
    assert!(
        err.to_string().contains("exited before printing GENSTATS"),
        "{err}"
    );
    assert!(err.to_string().contains("SIGKILL"), "{err}");
}
