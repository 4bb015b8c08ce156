//! `ember wal` and `ember demo` as an operator runs them: exit codes, one clear line on
//! errors, the location of damage.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use wal::{Config, Lsn, Wal};

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failure is one clear line on stderr, naming `needle`, with a non-zero exit.
#[track_caller]
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains(needle),
        "stderr should name {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

fn small_log(dir: &Path, records: u64) -> Vec<Vec<u8>> {
    let config = Config {
        segment_size_max_bytes: 8192,
        record_size_max_bytes: 1024,
        ..Config::default()
    };
    let wal = Wal::open_dir(dir, config).unwrap();
    let payloads: Vec<Vec<u8>> = (0..records)
        .map(|n| format!("record number {n}").into_bytes())
        .collect();
    for p in &payloads {
        wal.append_blocking(p.clone()).unwrap();
    }
    payloads
}

fn segment(dir: &Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("segment-{id:020}.wal"))
}

#[test]
fn demo_kills_the_writer_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let out = ember(&[
        "wal",
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--seed",
        "7",
        "--writers",
        "4",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("kill -9 after"), "{stdout}");
    assert!(stdout.contains("nothing acknowledged was lost"), "{stdout}");
    // The log it left is a valid log, independently of the demo's own check.
    let verify = ember(&["wal", "verify", dir.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    // Running it again continues the same log (the top-level `ember demo` is the word count).
    let again = ember(&[
        "wal",
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--seed",
        "8",
        "--writers",
        "2",
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("continuing an existing log"));
}

#[test]
fn inspect_and_verify_a_clean_log() {
    let tmp = tempfile::tempdir().unwrap();
    small_log(tmp.path(), 2000);
    let dir = tmp.path().to_str().unwrap();
    let inspect = ember(&["wal", "inspect", dir]);
    let stdout = text(&inspect.stdout);
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    assert!(stdout.contains("Lsn 1..=2000, 2000 records"), "{stdout}");
    assert!(
        stdout.contains("sealed") && stdout.contains("open"),
        "{stdout}"
    );
    assert!(stdout.contains("recovery verdict: clean"), "{stdout}");
    let verify = ember(&["wal", "verify", dir]);
    assert!(verify.status.success());
    assert!(
        text(&verify.stdout).contains("clean"),
        "{}",
        text(&verify.stdout)
    );
}

#[test]
fn verify_reports_a_torn_tail_with_exit_3() {
    use std::io::Write as _;
    let tmp = tempfile::tempdir().unwrap();
    small_log(tmp.path(), 10);
    let seg = segment(tmp.path(), 1);
    let len = std::fs::metadata(&seg).unwrap().len();
    let open = || std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    // A write cut by a crash: part of a frame.
    open().write_all(&[0x55; 5]).unwrap();
    let out = ember(&["wal", "verify", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("torn tail") && stdout.contains(&format!("at byte {len}")),
        "{stdout}"
    );
    // Zeros after the last record: preallocated space of a log that was not closed.
    open().set_len(len).unwrap();
    open().set_len(len + 4096).unwrap();
    let out = ember(&["wal", "verify", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("unwritten tail"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn verify_names_segment_and_offset_of_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    small_log(tmp.path(), 2000);
    let seg = segment(tmp.path(), 2);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let out = ember(&["wal", "verify", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &format!("{} at byte", seg.display()));
    let inspect = ember(&["wal", "inspect", tmp.path().to_str().unwrap()]);
    assert_eq!(inspect.status.code(), Some(1));
    assert!(
        text(&inspect.stdout).contains("BAD at byte"),
        "{}",
        text(&inspect.stdout)
    );
    // dump refuses too, with the same location.
    assert_one_line_error(
        &ember(&["wal", "dump", tmp.path().to_str().unwrap()]),
        "at byte",
    );
}

#[test]
fn dump_prints_records_in_each_format() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads = small_log(tmp.path(), 50);
    let dir = tmp.path().to_str().unwrap();
    let out = ember(&["wal", "dump", dir, "--from", "10", "--limit", "3"]);
    assert!(out.status.success());
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        format!("10 {} {}", payloads[9].len(), text(&payloads[9]))
    );
    let hex = ember(&["wal", "dump", dir, "--from", "1", "--limit", "1", "--hex"]);
    let expected_hex: String = payloads[0].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        text(&hex.stdout).trim_end(),
        format!("1 {} {expected_hex}", payloads[0].len())
    );
    let utf8 = ember(&["wal", "dump", dir, "--from", "50", "--utf8"]);
    assert_eq!(text(&utf8.stdout).trim_end(), "50 16 record number 49");
    // Beyond the end: nothing, with a note.
    let beyond = ember(&["wal", "dump", dir, "--from", "51"]);
    assert!(beyond.status.success());
    assert!(beyond.stdout.is_empty());
    assert!(text(&beyond.stderr).contains("newest is Lsn 50"));
}

#[test]
fn dump_after_retention_starts_at_the_oldest_record() {
    let tmp = tempfile::tempdir().unwrap();
    small_log(tmp.path(), 2000);
    {
        let config = Config {
            segment_size_max_bytes: 8192,
            record_size_max_bytes: 1024,
            ..Config::default()
        };
        let wal = Wal::open_dir(tmp.path(), config).unwrap();
        assert!(wal.truncate_before(Lsn::new(1000)).unwrap() > 0);
    }
    let out = ember(&[
        "wal",
        "dump",
        tmp.path().to_str().unwrap(),
        "--from",
        "1",
        "--limit",
        "1",
    ]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("removed by retention"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_directories_and_arguments_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    for sub in ["inspect", "verify", "dump"] {
        assert_one_line_error(
            &ember(&["wal", sub, missing.to_str().unwrap()]),
            "does not exist",
        );
    }
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert_one_line_error(
        &ember(&["wal", "inspect", file.to_str().unwrap()]),
        "is not a directory",
    );
    let not_wal = tmp.path().join("not-a-wal");
    std::fs::create_dir(&not_wal).unwrap();
    std::fs::write(not_wal.join("notes.txt"), b"hello").unwrap();
    assert_one_line_error(
        &ember(&["wal", "verify", not_wal.to_str().unwrap()]),
        "is not a WAL directory",
    );
    // Argument errors come from clap: non-zero exit, the flag named, no panic.
    for (args, flag) in [
        (vec!["wal", "dump", ".", "--from", "0"], "--from"),
        (vec!["wal", "dump", ".", "--limit", "many"], "--limit"),
        (vec!["wal", "dump", ".", "--hex", "--utf8"], "--utf8"),
        (vec!["wal", "inspect"], "<DIR>"),
    ] {
        let out = ember(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(flag),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"));
    }
}

#[test]
fn unreadable_segment_names_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    small_log(tmp.path(), 10);
    let seg = segment(tmp.path(), 1);
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&seg).is_ok() {
        // Running as root: permissions do not stop us, so there is nothing to test.
        eprintln!("skipped: this user can read files with mode 000 (root)");
        return;
    }
    assert_one_line_error(
        &ember(&["wal", "verify", tmp.path().to_str().unwrap()]),
        &seg.display().to_string(),
    );
}

/// `ember wal verify` on a log over the bar's 64 MiB threshold: attached to a terminal
/// (a pseudo-terminal from util-linux `script`, present on every Debian system) it draws a
/// progress bar on stderr and erases it before the verdict; with stderr redirected, as in
/// scripts and CI logs, it draws nothing.
#[test]
fn verify_shows_a_progress_bar_only_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("big");
    {
        let config = Config {
            sync_policy: wal::SyncPolicy::UnsafeNoSync, // a test fixture, not a durability test
            ..Config::default()
        };
        let wal = Wal::open_dir(&dir, config).unwrap();
        let payload = vec![b'x'; 60_000];
        for _ in 0..1_200 {
            wal.append_blocking(payload.clone()).unwrap(); // 72 MB of records
        }
        wal.sync_blocking().unwrap();
        wal.close().unwrap();
    }
    let dir = dir.to_str().unwrap();

    let piped = ember(&["wal", "verify", dir]);
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(text(&piped.stdout).starts_with("verify: clean"));
    assert!(
        piped.stderr.is_empty(),
        "no bar when stderr is not a terminal: {:?}",
        text(&piped.stderr)
    );

    let command = format!("'{}' wal verify '{dir}'", env!("CARGO_BIN_EXE_ember"));
    let tty = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs the command on a pseudo-terminal");
    let seen = text(&tty.stdout);
    assert!(tty.status.success(), "{seen}{}", text(&tty.stderr));
    assert!(
        seen.contains("\r[#") || seen.contains("\r[."),
        "a bar: {seen:?}"
    );
    assert!(seen.contains("% "), "a percentage: {seen:?}");
    assert!(
        seen.contains("of 6") || seen.contains("of 7"),
        "the total: {seen:?}"
    );
    // The bar is erased before the verdict is printed, so the verdict line is clean.
    // (The terminal turns "\n" into "\r\n".)
    let verdict = seen.trim_end().rsplit('\r').next().unwrap_or_default();
    assert!(
        verdict.trim_start().starts_with("verify: clean"),
        "{seen:?}"
    );
}
