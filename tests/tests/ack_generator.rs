//! `ember gen --ack` as the oracle of the acknowledged protocol, driven by a hand-written
//! receiver over a real socket: it resumes exactly where asked with exactly the workload's
//! lines, shrugs off a broken client, and exits non-zero, saying why, when a receiver
//! resumes before a line it had acknowledged (the lost-acknowledged-data case the kill
//! suites rely on it to catch) or acknowledges lines it was never sent.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::source::ack::{self, ToReceiver, ToSender};
use engine::workload::{Workload, WorkloadSpec};
use tests::processes::ember_bin;

const LINES: u64 = 20_000;

struct Gen {
    child: Child,
    port: u16,
    stdout: BufReader<std::process::ChildStdout>,
}

fn start_gen(linger_s: u64) -> Gen {
    let mut child = Command::new(ember_bin())
        .args([
            "gen",
            "--ack",
            "--port",
            "0",
            "--words",
            "5",
            "--threads",
            "1",
        ])
        .args([
            "--lines",
            &LINES.to_string(),
            "--linger-s",
            &linger_s.to_string(),
        ])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    let port = ready
        .split_whitespace()
        .find_map(|f| f.strip_prefix("port="))
        .unwrap_or_else(|| panic!("READY line: {ready:?}"))
        .parse()
        .unwrap();
    Gen {
        child,
        port,
        stdout,
    }
}

impl Gen {
    /// Waits for the exit; returns (success, stdout rest, stderr).
    fn exit(mut self) -> (bool, String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "ember gen --ack did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.success(), out, err)
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hand-written receiver connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16, from: u64) -> (Conn, ToReceiver) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut conn = Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        conn.send(&ToSender::Resume { from });
        let mut line = Vec::new();
        conn.reader.read_until(b'\n', &mut line).unwrap();
        let (header, used) = ack::decode_to_receiver(&line).unwrap().unwrap();
        assert_eq!(used, line.len());
        (conn, header)
    }

    fn send(&mut self, m: &ToSender) {
        let mut out = Vec::new();
        m.encode(&mut out);
        self.writer.write_all(&out).unwrap();
    }

    fn read_lines(&mut self, n: u64) -> Vec<u8> {
        let mut text = Vec::new();
        for _ in 0..n {
            let before = text.len();
            self.reader.read_until(b'\n', &mut text).unwrap();
            assert!(text.len() > before, "end of stream too early");
        }
        text
    }
}

fn workload_text(lines: std::ops::Range<u64>) -> Vec<u8> {
    let workload = Workload::new(WorkloadSpec::new(LINES, 5)).unwrap();
    let mut text = Vec::new();
    workload.write_lines(lines, &mut text);
    text
}

#[test]
fn resumes_exactly_where_the_receiver_says_with_the_workloads_lines() {
    let gen_ = start_gen(0);
    let (mut c, header) = Conn::open(gen_.port, 0);
    assert_eq!(
        header,
        ToReceiver::Header {
            from: 0,
            end: LINES
        }
    );
    assert_eq!(c.read_lines(3_000), workload_text(0..3_000));
    c.send(&ToSender::Ack { end: 2_000 });
    drop(c);

    // The receiver stored up to 2,500 (its ack of 2,500 never arrived): resume there.
    let (mut c, header) = Conn::open(gen_.port, 2_500);
    assert_eq!(
        header,
        ToReceiver::Header {
            from: 2_500,
            end: LINES
        }
    );
    let rest = c.read_lines(LINES - 2_500);
    assert_eq!(rest, workload_text(2_500..LINES));
    let mut tail = Vec::new();
    c.reader.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty(), "nothing after the last line");
    c.send(&ToSender::Ack { end: LINES });
    drop(c);

    let (ok, out, err) = gen_.exit();
    assert!(ok, "{err}");
    let stats = engine::workload::acked::AckedStats::from_line(
        out.lines().find(|l| l.starts_with("ACKSTATS")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats.acked_lines, LINES);
    assert_eq!(stats.resumed_from, vec![0, 2_500]);
}

#[test]
fn a_resume_before_an_acknowledged_line_fails_the_generator_loudly() {
    let gen_ = start_gen(30);
    let (mut c, _) = Conn::open(gen_.port, 0);
    c.read_lines(5_000);
    c.send(&ToSender::Ack { end: 4_000 });
    // The ack must reach the generator before the connection goes.
    std::thread::sleep(Duration::from_millis(200));
    drop(c);

    let (_, header) = Conn::open(gen_.port, 3_999);
    match header {
        ToReceiver::Refused { reason } => {
            assert!(reason.contains("acknowledged lines were lost"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (ok, _, err) = gen_.exit();
    assert!(!ok, "the generator must exit non-zero");
    assert!(
        err.contains("acknowledged lines were lost")
            && err.contains("resume at line 3999")
            && err.contains("before 4000"),
        "{err}"
    );
}

#[test]
fn acknowledging_lines_never_sent_fails_the_generator() {
    let gen_ = start_gen(30);
    let (mut c, _) = Conn::open(gen_.port, 0);
    c.send(&ToSender::Ack { end: LINES + 1 });
    let (ok, _, err) = gen_.exit();
    assert!(!ok);
    assert!(err.contains("acknowledged lines up to 20001"), "{err}");
}

#[test]
fn a_broken_client_is_refused_and_the_stream_goes_on() {
    let gen_ = start_gen(0);
    let mut stray = TcpStream::connect(("127.0.0.1", gen_.port)).unwrap();
    stray.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stray.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("EMBER-ACK 1 REFUSED "), "{answer:?}");
    let mut wrong_version = TcpStream::connect(("127.0.0.1", gen_.port)).unwrap();
    wrong_version.write_all(b"EMBER-ACK 2 RESUME 0\n").unwrap();
    let mut answer = String::new();
    wrong_version.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("version"), "{answer:?}");

    let (mut c, header) = Conn::open(gen_.port, 0);
    assert_eq!(
        header,
        ToReceiver::Header {
            from: 0,
            end: LINES
        }
    );
    c.read_lines(LINES);
    c.send(&ToSender::Ack { end: LINES });
    drop(c);
    let (ok, _, err) = gen_.exit();
    assert!(ok, "{err}");
}
