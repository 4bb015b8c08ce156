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

/// Runs `ember run wordcount` with `env` added, expecting a failure whose stderr holds each
/// of `wanted` on its one error line.
fn fails_with_env(args: &[&str], env: &[(String, String)], wanted: &[&str]) {
    let mut all = vec![
        "run",
        "wordcount",
        "--lines",
        "10",
        "--out",
        "/nonexistent/x.tsv",
        // Nothing listens there: a storage error must come before the source is used.
        "--source",
        "tcp://127.0.0.1:9?ack=1",
    ];
    all.extend_from_slice(args);
    let output = std::process::Command::new(tests::processes::ember_bin())
        .args(&all)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{all:?} succeeded:\n{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ember: error"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line:\n{err}");
    for w in wanted {
        assert!(lines[0].contains(w), "{all:?}: expected {w:?} in:\n{err}");
    }
}

fn moto_env(moto: &tests::moto::Moto) -> Vec<(String, String)> {
    moto.s3_settings()
        .into_iter()
        .map(|(k, v)| (k.to_uppercase(), v))
        .collect()
}

#[test]
fn bad_storage_locations_fail_at_start_up_naming_them() {
    fails_with_env(
        &["--wal", "/tmp/x", "--checkpoint", "/tmp/y"],
        &[],
        &["--wal is only for --durability wal"],
    );
    fails_with_env(
        &["--durability", "wal", "--checkpoint", "s3://Bad_Bucket/p"],
        &[],
        &[
            "--checkpoint \"s3://Bad_Bucket/p\"",
            "not a valid S3 bucket name",
        ],
    );
    fails_with_env(
        &[
            "--durability",
            "wal",
            "--checkpoint",
            "/tmp/y",
            "--wal",
            "ftp://h/p",
        ],
        &[],
        &["--wal \"ftp://h/p\"", "unknown scheme"],
    );
    fails_with_env(
        &["--checkpoint", "s3://ember-test/p"],
        &[],
        &["--durability ignore with --checkpoint s3://ember-test/p"],
    );
    let Some(moto) = tests::moto::Moto::shared() else {
        return;
    };
    let env = moto_env(moto);
    // A missing bucket, for the whole checkpoint location and for the data WAL alone.
    fails_with_env(
        &[
            "--durability",
            "wal",
            "--checkpoint",
            "s3://no-such-bucket-here/run",
        ],
        &env,
        &["s3://no-such-bucket-here/run", "the bucket does not exist"],
    );
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("ckpt").display().to_string();
    fails_with_env(
        &[
            "--durability",
            "wal",
            "--checkpoint",
            &local,
            "--wal",
            "s3://no-such-bucket-here/wal",
        ],
        &env,
        &["s3://no-such-bucket-here/wal", "the bucket does not exist"],
    );
    // Refused credentials (a server that checks them).
    if let Some(auth) = tests::moto::Moto::with_auth() {
        let mut env = moto_env(auth);
        for (k, v) in &mut env {
            if k == "AWS_ACCESS_KEY_ID" {
                *v = "AKIAWRONGWRONGWRONG0".into();
            }
        }
        fails_with_env(
            &[
                "--durability",
                "wal",
                "--checkpoint",
                &moto.fresh_url("cli-denied"),
            ],
            &env,
            &["the credentials were refused"],
        );
    }
}
