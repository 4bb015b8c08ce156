//! The workload generator against reference data produced by the Java generator of the
//! Spark baseline (`tests/data/README.md`), and its chunked and served forms against the
//! direct one.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::workload::serve::{DataMode, LineServer, ServeConfig};
use engine::workload::{Error, StreamConfig, Workload, WorkloadSpec};

fn data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn baseline() -> Workload {
    Workload::new(WorkloadSpec::new(2_000_000, 10)).unwrap()
}

fn text(workload: &Workload, lines: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    workload.write_lines(lines, &mut out);
    out
}

#[test]
fn first_thousand_lines_equal_the_reference() {
    let reference = data("lines-n1000-k10-s42.txt");
    let workload = baseline();
    assert_eq!(text(&workload, 0..1000), reference);
    // Word i of the stream, by rank, is the i-th word of the text.
    let words: Vec<&[u8]> = reference.split(|&b| b == b' ' || b == b'\n').collect();
    for i in [0, 1, 9, 10, 4_321, 9_999] {
        let word = workload.word(workload.rank_at(i)).unwrap();
        assert_eq!(word.as_bytes(), words[i as usize], "word {i}");
    }
    assert_eq!(workload.word(10_000), None);
    // The vocabulary of seed 42 has duplicates drawn again, so that rule is exercised.
    assert!(workload.vocabulary_redraws() > 0);
}

#[test]
fn expected_counts_for_two_million_lines_equal_the_reference() {
    let expected = baseline().expected_counts(4);
    assert_eq!(expected.to_tsv(), data("expected-n2000000-k10-s42.tsv"));
    // The facts the workload's README states.
    assert_eq!(expected.len(), 10_000);
    assert_eq!(expected.total_words(), 20_000_000);
    assert_eq!(expected.top(1), vec![("bkquuxmr", 2_043_475)]);
    assert_eq!(expected.text_bytes(), 152_350_068);
}

/// Parses `{lines|expected}-n{N}-k{K}-seed{S}-v{V}-s{X}.{txt|tsv}` into a spec.
fn spec_from_name(name: &str) -> WorkloadSpec {
    let stem = name.rsplit_once('.').unwrap().0;
    let (_, rest) = stem.split_once("-n").unwrap();
    let (n, rest) = rest.split_once("-k").unwrap();
    let (k, rest) = rest.split_once("-seed").unwrap();
    let (seed, rest) = rest.split_once("-v").unwrap();
    let (v, s) = rest.split_once("-s").unwrap();
    WorkloadSpec::new(n.parse().unwrap(), k.parse().unwrap())
        .with_seed(seed.parse().unwrap())
        .with_vocab_size(v.parse().unwrap())
        .with_zipf_s(s.parse().unwrap())
}

#[test]
fn other_exponents_seeds_and_sizes_equal_the_java_reference() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.contains("-seed") {
            continue;
        }
        let spec = spec_from_name(&name);
        let workload = Workload::new(spec).unwrap();
        if name.starts_with("lines-") {
            assert_eq!(text(&workload, 0..spec.lines), data(&name), "{name}");
        } else {
            assert_eq!(workload.expected_counts(2).to_tsv(), data(&name), "{name}");
        }
        checked += 1;
    }
    assert_eq!(checked, 8, "all reference files were found");
    assert_eq!(
        spec_from_name("expected-n50000-k4-seed5-v500-s-0.5.tsv").zipf_s,
        -0.5
    );
}

#[test]
fn chunked_streams_equal_direct_generation() {
    let workload = Workload::new(WorkloadSpec::new(5_000, 10).with_seed(9)).unwrap();
    let whole = text(&workload, 1_234..5_000);
    for (lines_per_chunk, threads, ahead) in [(1, 1, 1), (7, 2, 1), (1000, 3, 2), (10_000, 2, 4)] {
        let config = StreamConfig {
            lines_per_chunk,
            threads,
            chunks_ahead_per_thread: ahead,
        };
        let mut next_line = 1_234;
        let mut joined = Vec::new();
        for chunk in workload.stream(1_234..5_000, config) {
            assert_eq!(chunk.first_line(), next_line);
            assert!(chunk.line_count() <= lines_per_chunk);
            let newlines = chunk.bytes().iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(newlines, chunk.line_count());
            next_line = chunk.lines().end;
            joined.extend_from_slice(chunk.bytes());
        }
        assert_eq!(next_line, 5_000);
        assert_eq!(joined, whole, "{config:?}");
    }
    // Ranges compose, and the pre-generated run is the stream of 0..N.
    let mut parts = text(&workload, 0..1_234);
    parts.extend_from_slice(&whole);
    let pre = workload.pregenerate(StreamConfig {
        lines_per_chunk: 333,
        ..StreamConfig::default()
    });
    let pre_bytes: Vec<u8> = pre
        .chunks()
        .iter()
        .flat_map(|c| c.bytes().to_vec())
        .collect();
    assert_eq!(pre_bytes, parts);
    assert_eq!((pre.lines(), pre.bytes()), (5_000, parts.len() as u64));
    assert!(
        workload
            .stream(10..10, StreamConfig::default())
            .next()
            .is_none()
    );
}

#[test]
fn counting_the_generated_text_gives_the_expected_counts() {
    // An independent path: split the text and count, against the generator's rank counts.
    let spec = WorkloadSpec::new(30_000, 6)
        .with_seed(77)
        .with_vocab_size(700)
        .with_zipf_s(0.9);
    let workload = Workload::new(spec).unwrap();
    let body = text(&workload, 0..spec.lines);
    let mut counted: BTreeMap<&[u8], u64> = BTreeMap::new();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert_eq!(line.split(|&b| b == b' ').count(), 6);
        for word in line.split(|&b| b == b' ') {
            *counted.entry(word).or_default() += 1;
        }
    }
    let mut tsv = Vec::new();
    for (word, count) in counted {
        tsv.extend_from_slice(word);
        tsv.extend_from_slice(format!("\t{count}\n").as_bytes());
    }
    let expected = workload.expected_counts(3);
    assert_eq!(expected.verify_tsv(&tsv), Ok(()));
    assert_eq!(expected.text_bytes(), body.len() as u64);
    assert!((workload.mean_line_bytes() - body.len() as f64 / 30_000.0).abs() < 1.0);
}

#[test]
fn dropping_a_stream_early_stops_its_threads() {
    let workload = baseline();
    let started = Instant::now();
    let mut stream = workload.stream(0..u64::MAX / 100, StreamConfig::default());
    assert_eq!(stream.next().unwrap().first_line(), 0);
    drop(stream);
    // Generous: dropping only waits for the chunk each thread is writing.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn invalid_parameters_are_named() {
    let cases = [
        (WorkloadSpec::new(10, 0), "--words"),
        (WorkloadSpec::new(10, 10).with_vocab_size(0), "--vocab"),
        (
            WorkloadSpec::new(10, 10).with_vocab_size(20_000_000),
            "--vocab",
        ),
        (
            WorkloadSpec::new(10, 10).with_zipf_s(f64::INFINITY),
            "--zipf-s",
        ),
        (WorkloadSpec::new(10, 10).with_zipf_s(-500.0), "--zipf-s"),
        (WorkloadSpec::new(u64::MAX, 10), "--lines"),
    ];
    for (spec, flag) in cases {
        let err = Workload::new(spec).unwrap_err();
        assert!(matches!(err, Error::InvalidSpec { .. }), "{err}");
        assert!(err.to_string().contains(flag), "{err} should name {flag}");
    }
}

fn serve_in_thread(
    workload: &Workload,
    mode: DataMode,
) -> (
    std::net::SocketAddr,
    std::thread::JoinHandle<engine::workload::Result<engine::workload::serve::ServeStats>>,
) {
    let config = ServeConfig {
        mode,
        client_close_timeout: Duration::from_secs(30),
        ..ServeConfig::default()
    };
    let server = LineServer::bind(workload, config, Duration::ZERO).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    (addr, std::thread::spawn(move || server.serve_one()))
}

#[test]
fn server_sends_every_line_then_half_closes() {
    let workload = Workload::new(WorkloadSpec::new(50_000, 10).with_seed(3)).unwrap();
    let reference = text(&workload, 0..50_000);
    let small = StreamConfig {
        lines_per_chunk: 4_096,
        threads: 2,
        chunks_ahead_per_thread: 1,
    };
    for mode in [DataMode::Pregenerate(small), DataMode::Stream(small)] {
        let (addr, server) = serve_in_thread(&workload, mode);
        let before_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut socket = TcpStream::connect(addr).unwrap();
        let mut received = Vec::new();
        // read_to_end returns only at the server's half-close.
        socket.read_to_end(&mut received).unwrap();
        drop(socket);
        let stats = server.join().unwrap().unwrap();
        assert_eq!(received, reference, "{mode:?}");
        assert_eq!(stats.gen_lines, 50_000);
        assert_eq!(stats.gen_bytes, reference.len() as u64);
        assert!(
            stats.gen_accept_epoch_ms >= before_ms
                && stats.gen_accept_epoch_ms < before_ms + 10_000
        );
        assert!(stats.gen_client_close_s >= stats.gen_write_s);
    }
}

#[test]
fn a_client_that_leaves_early_is_an_error_with_the_amount_sent() {
    let workload = Workload::new(WorkloadSpec::new(400_000, 10)).unwrap();
    let (addr, server) = serve_in_thread(&workload, DataMode::Pregenerate(StreamConfig::default()));
    let mut socket = TcpStream::connect(addr).unwrap();
    let mut first = [0u8; 1000];
    socket.read_exact(&mut first).unwrap();
    // Closing with unread data sends a reset; the server's next writes fail.
    drop(socket);
    match server.join().unwrap() {
        Err(Error::Send {
            bytes_sent,
            lines_sent,
            ..
        }) => {
            assert!((1000..30_000_000).contains(&bytes_sent), "{bytes_sent}");
            assert!(lines_sent <= 400_000 && lines_sent as f64 * 70.0 < bytes_sent as f64 + 100.0);
        }
        other => panic!("expected a send error, got {other:?}"),
    }
}

#[test]
fn the_server_waits_for_the_client_to_close() {
    let workload = Workload::new(WorkloadSpec::new(10, 10)).unwrap();
    let (addr, server) = serve_in_thread(&workload, DataMode::Pregenerate(StreamConfig::default()));
    let mut socket = TcpStream::connect(addr).unwrap();
    let mut received = Vec::new();
    socket.read_to_end(&mut received).unwrap();
    // Still open: the server must not have finished.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!server.is_finished());
    socket.write_all(b"ignored").unwrap();
    drop(socket);
    let stats = server.join().unwrap().unwrap();
    assert!(stats.gen_client_close_s >= 0.3, "{stats:?}");
}
