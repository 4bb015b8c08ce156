//! Real-process crash test: a child process appends with group commit from several threads
//! and reports every resolved Lsn on a pipe; the parent `kill -9`s it at a seeded moment
//! (after a seeded number of acknowledgements, read from the pipe, so no sleeps), reopens
//! the log and checks that every reported Lsn is there with its exact bytes.
//!
//! The child is this test binary itself, re-executed to run the ignored test
//! `kill9_child` with the directory and seed in environment variables.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use wal::{Config, Lsn, Wal};

const CHILD_DIR: &str = "WAL_KILL9_CHILD_DIR";
const CHILD_SEED: &str = "WAL_KILL9_CHILD_SEED";
const WRITERS: u64 = 4;
const RECORD_LEN_MAX: usize = 3000;

fn config() -> Config {
    // Small segments, so kills land around rotations too.
    Config {
        segment_size_max_bytes: 256 << 10,
        record_size_max_bytes: 4096,
        ..Config::default()
    }
}

/// The child: appends until killed, printing `ACK <lsn> <writer> <n>` for every append
/// that resolved (is durable).
#[test]
#[ignore = "helper process for kill9_loses_no_acknowledged_record"]
fn kill9_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by kill9_loses_no_acknowledged_record");
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let wal = Arc::new(Wal::open_dir(dir, config()).unwrap());
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                // Bounded, in case the parent dies without killing us.
                for n in 0..200_000u64 {
                    let lsn = wal
                        .append_blocking(common::payload(seed ^ w, n, RECORD_LEN_MAX))
                        .unwrap();
                    // One write(2) per line: pipe writes this short are atomic, so a kill
                    // never leaves half a line.
                    let line = format!("ACK {lsn} {w} {n}\n");
                    std::io::stdout().lock().write_all(line.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill9_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let base = common::seed(0x0009_1111);
    let mut acked_total = Vec::new();
    for round in 0..3u64 {
        let seed = base.wrapping_add(round);
        let context = common::rerun("kill9", "kill9_loses_no_acknowledged_record", base);
        let kill_after = 50 + seed % 400;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill9_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir)
            .env(CHILD_SEED, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut acked = Vec::new();
        let mut line = String::new();
        let mut killed = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break; // EOF: the child is gone and the pipe drained
            }
            let Some(fields) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK ")) else {
                continue; // libtest's own output, or a line cut by the kill
            };
            let parts: Vec<u64> = fields.split(' ').map(|f| f.parse().unwrap()).collect();
            acked.push((Lsn::new(parts[0]), parts[1], parts[2]));
            if !killed && acked.len() as u64 >= kill_after {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "child exited before the kill ({status}); {context}");
        assert!(!status.success(), "{context}");

        let wal = Wal::open_dir(&dir, config())
            .unwrap_or_else(|e| panic!("reopen after kill -9: {e}; {context}"));
        eprintln!(
            "round {round}: killed after {} acks, recovered {} records, verdict: {}",
            acked.len(),
            wal.last_lsn().map_or(0, Lsn::get),
            wal.recovery().verdict
        );
        for &(lsn, w, n) in &acked {
            let got = wal
                .read(lsn)
                .unwrap_or_else(|e| panic!("acknowledged Lsn {lsn} lost: {e}; {context}"));
            assert_eq!(
                &got[..],
                &common::payload(seed ^ w, n, RECORD_LEN_MAX)[..],
                "Lsn {lsn}; {context}"
            );
        }
        // The log is dense from 1, and earlier rounds' acknowledged records are intact.
        let all = common::read_all(&wal);
        assert_eq!(all.first().map(|r| r.0), Some(Lsn::FIRST), "{context}");
        for &(lsn, bytes_len) in &acked_total {
            assert_eq!(wal.read(lsn).unwrap().len(), bytes_len, "{context}");
        }
        acked_total.extend(
            acked
                .iter()
                .map(|&(lsn, w, n)| (lsn, common::payload(seed ^ w, n, RECORD_LEN_MAX).len())),
        );
        drop(wal);
    }
}
