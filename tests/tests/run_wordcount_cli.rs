//! `ember run wordcount`'s flags and source URLs: a bad one gets one line naming it on
//! stderr and a non-zero exit, before anything starts.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tests::processes::run_ember;

fn fails_with(args: &[&str], wanted: &str) {
    let mut all = vec![
        "run",
        "wordcount",
        "--lines",
        "10",
        "--out",
        "/nonexistent/x.tsv",
    ];
    all.extend_from_slice(args);
    let (status, _, err) = run_ember(&all, Duration::from_secs(30));
    assert!(!status.success(), "{all:?} succeeded");
    assert!(
        err.contains(wanted),
        "{all:?}: expected {wanted:?} in:\n{err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ember: error"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
}

#[test]
fn bad_sources_and_durability_flags_are_one_line_errors() {
    fails_with(
        &["--source", "udp://127.0.0.1:9"],
        "expected tcp://HOST:PORT[?ack=1]",
    );
    fails_with(&["--source", "tcp://127.0.0.1"], "missing :PORT");
    fails_with(&["--source", "tcp://:9999"], "missing HOST");
    fails_with(
        &["--source", "tcp://h:99999"],
        "port \"99999\" is not a number from 1 to 65535",
    );
    fails_with(
        &["--source", "tcp://h:9?acks=1"],
        "unknown parameter \"acks=1\"",
    );
    fails_with(
        &["--source", "tcp://h:9?ack=yes"],
        "ack=\"yes\", expected ack=1 or ack=0",
    );
    let src = ["--source", "tcp://127.0.0.1:9?ack=1"];
    fails_with(
        &[&src[..], &["--durability", "wal"]].concat(),
        "--durability wal needs --checkpoint DIR",
    );
    fails_with(
        &[
            &src[..],
            &["--durability", "replicated", "--checkpoint", "/tmp/x"],
        ]
        .concat(),
        "--durability replicated needs --executors",
    );
    fails_with(
        &[
            &src[..],
            &[
                "--durability",
                "replicated",
                "--checkpoint",
                "/tmp/x",
                "--executors",
                "a:1",
                "--replication",
                "2",
            ],
        ]
        .concat(),
        "--replication 2 must be between 1 and the 1 executors given",
    );
    fails_with(
        &[&src[..], &["--executors", "a:1"]].concat(),
        "--executors is only for --durability replicated",
    );
}
