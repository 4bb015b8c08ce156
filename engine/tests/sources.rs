//! Sources against real sockets and files: bad input, dead peers, back-off, directories,
//! custom receivers, and bounded memory when the pipeline is slower than the source.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{
    BatchData, Config, DStream, Error, InvalidUtf8Policy, PostcardCodec, ReceiverContext,
    ReceiverInfo, ReceiverState, Str, StreamingContext, StreamingListener,
};

fn config(batch_ms: u64) -> Config {
    let mut c = Config::new(Duration::from_millis(batch_ms));
    c.block_interval_ms = batch_ms.min(50);
    c.partitions = 2;
    c
}

/// Serves `payload` on one connection, then closes.
fn serve_once(payload: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&payload).unwrap();
    });
    addr
}

fn collect_words(ctx: &StreamingContext, addr: &str) -> Arc<Mutex<Vec<String>>> {
    let mut options = engine::SocketOptions::default();
    options.stop_at_end_of_stream = true;
    collect_lines(&ctx.socket_text_stream_with(addr, options).unwrap())
}

/// Every line `lines` yields, in batch order.
fn collect_lines(lines: &DStream<Str>) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    lines.foreach_batch(move |data: &BatchData<Str>, _| {
        sink.lock()
            .unwrap()
            .extend(data.iter().map(|s| s.to_string()))
    });
    seen
}

/// Waits until the receiver stopped and everything it stored was processed.
fn drain(ctx: &StreamingContext) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctx.receivers().iter().any(|r| {
        !matches!(
            r.state,
            ReceiverState::Stopped | ReceiverState::Failed { .. }
        )
    }) {
        assert!(
            Instant::now() < deadline,
            "receiver did not stop: {:?}",
            ctx.receivers()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn invalid_utf8_lines_are_counted_and_skipped() {
    let addr = serve_once(b"good one\nbad \xff\xfe line\nalso good\n\xc3\nlast".to_vec());
    let ctx = StreamingContext::new(config(100)).unwrap();
    let seen = collect_words(&ctx, &addr);
    ctx.start().unwrap();
    drain(&ctx);
    ctx.stop(true).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["good one", "also good", "last"]);
    let r = &ctx.receivers()[0];
    assert_eq!((r.records, r.invalid_records), (3, 2));
}

#[test]
fn invalid_utf8_fails_the_stream_with_its_position_when_asked_to() {
    let addr = serve_once(b"one\ntwo\nthr\xffee\n".to_vec());
    let mut c = config(100);
    c.invalid_utf8 = InvalidUtf8Policy::Fail;
    let ctx = StreamingContext::new(c).unwrap();
    collect_words(&ctx, &addr);
    ctx.start().unwrap();
    let err = ctx.await_termination().unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidUtf8 {
                line: 3,
                byte_offset: 3,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&addr) && msg.contains("line 3") && msg.contains("invalid_utf8"),
        "{msg}"
    );
    assert!(matches!(
        &ctx.receivers()[0].state,
        ReceiverState::Failed { .. }
    ));
}

struct States(Mutex<Vec<ReceiverState>>);
impl StreamingListener for States {
    fn on_receiver_state(&self, r: &ReceiverInfo) {
        self.0.lock().unwrap().push(r.state.clone());
    }
}

#[test]
fn a_dead_socket_source_backs_off_reports_its_state_and_recovers() {
    // A port with nobody listening yet.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut c = config(100);
    c.reconnect_backoff_initial_ms = 20;
    c.reconnect_backoff_max_ms = 80;
    let ctx = StreamingContext::new(c).unwrap();
    let seen = collect_words(&ctx, &addr);
    let states = Arc::new(States(Mutex::new(Vec::new())));
    ctx.add_listener(states.clone());
    ctx.start().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    {
        let states = states.0.lock().unwrap();
        let backoffs: Vec<u64> = states
            .iter()
            .filter_map(|s| match s {
                ReceiverState::Backoff {
                    retry_in_ms,
                    reason,
                    ..
                } => {
                    assert!(
                        reason.contains(&addr) && reason.contains("connect to"),
                        "{reason}"
                    );
                    Some(*retry_in_ms)
                }
                _ => None,
            })
            .collect();
        assert!(backoffs.len() >= 3, "{states:?}");
        assert_eq!(&backoffs[..3], [20, 40, 80], "exponential back-off");
        assert!(backoffs.iter().all(|&b| b <= 80), "capped at the maximum");
    }
    // The server appears: the receiver connects and the data flows.
    let listener = TcpListener::bind(&addr).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(b"finally here\n").unwrap();
    drop(s);
    drain(&ctx);
    ctx.stop(true).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["finally here"]);
    // Refused attempts before any connection are errors, counted once each.
    let info = &ctx.receivers()[0];
    assert!(info.errors >= 3, "{info:?}");
    assert_eq!(info.ends_of_stream, 1, "{info:?}");
    assert!(
        states
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, ReceiverState::Receiving { source } if *source == addr))
    );
}

#[test]
fn a_clean_end_of_stream_then_a_stop_is_not_an_error() {
    // The sender serves two lines and goes away (its listener closes too), as `ember gen`
    // does: the receiver reconnects (refused) until the context stops.
    let addr = serve_once(b"one two\nthree\n".to_vec());
    let mut c = config(100);
    c.reconnect_backoff_initial_ms = 20;
    c.reconnect_backoff_max_ms = 40;
    let ctx = StreamingContext::new(c).unwrap();
    let seen = collect_lines(&ctx.socket_text_stream(&addr).unwrap());
    let states = Arc::new(States(Mutex::new(Vec::new())));
    ctx.add_listener(states.clone());
    ctx.start().unwrap();
    // Wait for two refused reconnects after the end of stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after_end = |states: &[ReceiverState]| -> Vec<(u32, String)> {
        states
            .iter()
            .filter_map(|s| match s {
                ReceiverState::Backoff {
                    attempt,
                    reason,
                    after_end_of_stream: true,
                    ..
                } => Some((*attempt, reason.clone())),
                _ => None,
            })
            .collect()
    };
    while after_end(&states.0.lock().unwrap()).len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", states.0.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "lines not processed");
        std::thread::sleep(Duration::from_millis(10));
    }
    ctx.stop(true).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["one two", "three"]);
    let reconnects = after_end(&states.0.lock().unwrap());
    // The end itself (no failed attempt yet), then refused attempts, reported as such.
    assert_eq!(reconnects[0].0, 0, "{reconnects:?}");
    assert!(reconnects[0].1.contains("closed"), "{reconnects:?}");
    assert!(
        reconnects[1..]
            .iter()
            .all(|(attempt, reason)| *attempt >= 1 && reason.contains("connect to")),
        "{reconnects:?}"
    );
    let info = &ctx.receivers()[0];
    assert_eq!(info.ends_of_stream, 1, "{info:?}");
    assert_eq!(
        info.errors, 0,
        "a clean end and its reconnects are not errors: {info:?}"
    );
    assert_eq!(info.records, 2);
}

#[test]
fn a_socket_source_gives_up_after_the_configured_attempts_and_says_where() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = config(100);
    c.reconnect_backoff_initial_ms = 10;
    c.reconnect_attempts_max = Some(3);
    let ctx = StreamingContext::new(c).unwrap();
    collect_words(&ctx, &format!("127.0.0.1:{port}"));
    ctx.start().unwrap();
    let err = ctx.await_termination().unwrap_err().to_string();
    assert!(
        err.contains(&format!("connect to 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn the_directory_source_picks_new_visible_files_once() {
    let dir = tempfile::tempdir().unwrap();
    // Modified before the context started: ignored (only new files).
    std::fs::write(dir.path().join("old.txt"), "old\n").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3_600);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("old.txt"))
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let ctx = StreamingContext::new(config(100)).unwrap();
    let seen = collect_lines(&ctx.text_file_stream(dir.path()).unwrap());
    ctx.start().unwrap();
    std::fs::write(dir.path().join(".hidden"), "hidden\n").unwrap();
    std::fs::write(dir.path().join(".a.tmp"), "a1\na2\n").unwrap();
    std::fs::rename(dir.path().join(".a.tmp"), dir.path().join("a.txt")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.path().join("b.txt"), "b1\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // a few more batches: nothing is read twice
    ctx.stop(true).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["a1", "a2", "b1"]);
    let records: u64 = ctx.batches().iter().map(|b| b.records()).sum();
    assert_eq!(
        records, 3,
        "batches count the records of the files they picked"
    );
}

/// A custom receiver storing single records (buffered into blocks every block interval).
struct Counter {
    upto: u64,
}

impl engine::Receiver for Counter {
    type Record = u64;
    fn codec(&self) -> Arc<dyn engine::BlockCodec<u64>> {
        Arc::new(PostcardCodec::<u64>::new())
    }
    async fn run(self, ctx: ReceiverContext<u64>) -> engine::Result<()> {
        for i in 1..=self.upto {
            ctx.store(i).await?;
        }
        ctx.stopped().await;
        Ok(())
    }
}

#[test]
fn a_custom_receiver_storing_single_records_gets_them_into_batches() {
    let ctx = StreamingContext::new(config(100)).unwrap();
    let n = ctx
        .receiver_stream("counter", Counter { upto: 10_000 })
        .unwrap();
    let sum = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&sum);
    n.reduce(|a, b| a + b).foreach_batch(move |d, _| {
        s.fetch_add(d.iter().sum::<u64>(), Ordering::SeqCst);
    });
    ctx.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sum.load(Ordering::SeqCst) < 10_000 * 10_001 / 2 {
        assert!(
            Instant::now() < deadline,
            "sum {}",
            sum.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ctx.stop(true).unwrap();
    assert_eq!(sum.load(Ordering::SeqCst), 10_000 * 10_001 / 2);
    assert!(ctx.receivers()[0].blocks >= 1);
}

#[test]
fn a_slow_pipeline_pushes_back_on_an_unthrottled_sender() {
    // The sender writes as fast as the socket takes it; the pipeline takes 300 ms per
    // 100 ms batch. Memory stays bounded by the configuration: the receiver stops reading,
    // TCP flow control stops the sender.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, st) = (Arc::clone(&written), Arc::clone(&stop));
    let sender = std::thread::spawn(move || {
        let (mut s, _): (TcpStream, _) = listener.accept().unwrap();
        s.set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let line = b"the quick brown fox jumps over the lazy dog\n".repeat(1_000);
        while !st.load(Ordering::SeqCst) {
            match s.write(&line) {
                Ok(n) => {
                    w.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(_) => continue, // timed out: the receiver is not reading
            }
        }
    });
    let mut c = config(100);
    c.block_size_max_bytes = 64 << 10;
    c.receiver_queue_blocks_max = 2;
    c.blocks_retained_max = 8;
    c.backpressure_enabled = true;
    let ctx = StreamingContext::new(c).unwrap();
    let lines = ctx.socket_text_stream(&addr).unwrap();
    lines
        .count()
        .foreach_batch(|_, _| std::thread::sleep(Duration::from_millis(300)));
    ctx.start().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let sent = written.load(Ordering::SeqCst);
    let stored = ctx.receivers()[0].bytes;
    let rate = ctx.receivers()[0].rate_limit_records_per_sec;
    stop.store(true, Ordering::SeqCst);
    ctx.stop(false).unwrap();
    sender.join().unwrap();
    // Unthrottled, loopback moves gigabytes in 3 s; here the sender is held to what the
    // retained blocks and the kernel's socket buffers can take.
    assert!(
        sent < 64 << 20,
        "sender was not pushed back: {sent} bytes in 3 s"
    );
    assert!(stored <= sent);
    assert!(rate.is_some(), "the PID estimator set a rate limit");
}

#[test]
fn the_rate_limit_caps_records_per_second() {
    let payload = b"x\n".repeat(200_000);
    let addr = serve_once(payload);
    let mut c = config(100);
    c.receiver_max_rate_records_per_sec = Some(20_000);
    let ctx = StreamingContext::new(c).unwrap();
    let lines = ctx.socket_text_stream(&addr).unwrap();
    lines.count().foreach_batch(|_, _| {});
    ctx.start().unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    let records = ctx.receivers()[0].records;
    ctx.stop(false).unwrap();
    assert!(
        (5_000..=45_000).contains(&records),
        "{records} records in 1 s at 20,000/s"
    );
}

#[test]
fn long_words_kept_in_state_do_not_keep_their_block_alive() {
    // Words longer than `Str::INLINE_CAPACITY` are ranges of the received block; the
    // stateful operators must keep copies of their own, or one word in state pins the
    // whole block for as long as the key lives.
    let words: Vec<String> = (0..40)
        .map(|i| format!("a-word-longer-than-the-inline-capacity-{i:03}"))
        .collect();
    assert!(words.iter().all(|w| w.len() > Str::INLINE_CAPACITY));
    let mut payload = String::new();
    for line in 0..500 {
        let a = &words[line % words.len()];
        let b = &words[(line * 7 + 3) % words.len()];
        payload.push_str(&format!("{a} {b}\n"));
    }
    let addr = serve_once(payload.into_bytes());
    let ctx = StreamingContext::new(config(100)).unwrap();
    let mut options = engine::SocketOptions::default();
    options.stop_at_end_of_stream = true;
    let lines = ctx.socket_text_stream_with(&addr, options).unwrap();
    let pairs = lines
        .flat_map(|line| line.split(' '))
        .map(|word| (word, 1u64));
    // What a key looks like on its way into state: a range of its block.
    let incoming = Arc::new(Mutex::new(Vec::<Str>::new()));
    let sink = Arc::clone(&incoming);
    pairs.foreach_batch(move |data: &BatchData<(Str, u64)>, _| {
        sink.lock()
            .unwrap()
            .extend(data.iter().map(|(k, _)| k.clone()))
    });
    let totals = pairs.update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
        Some(total.unwrap_or(0) + new.iter().sum::<u64>())
    });
    let mapped = pairs.map_with_state(engine::StateSpec::function(
        |_: &Str, v: Option<u64>, state: &mut engine::State<u64>| {
            let n = state.get().copied().unwrap_or(0) + v.unwrap_or(0);
            state.update(n);
            n
        },
    ));
    let windowed = pairs
        .reduce_by_key_and_window_inv(
            |a, b| a + b,
            |a, b| a - b,
            Duration::from_millis(10_000),
            Duration::from_millis(100),
            None::<fn(&Str, &u64) -> bool>,
        )
        .unwrap();
    type Latest = Arc<Mutex<Vec<(Str, u64)>>>;
    let kept: Vec<Latest> = [totals, mapped.state_snapshots(), windowed]
        .iter()
        .map(|stream| {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&seen);
            stream.foreach_batch(move |data: &BatchData<(Str, u64)>, _| {
                *sink.lock().unwrap() = data.to_vec();
            });
            seen
        })
        .collect();
    ctx.start().unwrap();
    drain(&ctx);
    ctx.stop(true).unwrap();

    let incoming = incoming.lock().unwrap();
    assert_eq!(incoming.len(), 1_000);
    assert!(
        incoming
            .iter()
            .all(|k| k.shared_buffer_len().is_some_and(|n| n > k.len())),
        "the test's words should arrive as ranges of their block"
    );
    for (name, seen) in ["update_state_by_key", "map_with_state", "window_inv"]
        .iter()
        .zip(&kept)
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), words.len(), "{name}: every word is a key");
        assert_eq!(seen.iter().map(|(_, n)| n).sum::<u64>(), 1_000, "{name}");
        for (key, _) in seen.iter() {
            assert_eq!(
                key.shared_buffer_len(),
                Some(key.len()),
                "{name}: the key {key} keeps a buffer larger than itself alive"
            );
        }
    }
}
