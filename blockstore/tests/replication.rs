//! Replication between in-process servers on 127.0.0.1: placement, failover, corrupt
//! frames (injected by a raw socket client and by a bit-flipping proxy), a peer cut off
//! mid-transfer, a slow peer, a restarted peer, and a restarted driver. The same
//! scenarios with real `ember executor` processes and `kill -9` are in the `tests` crate.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use blockstore::protocol::{self, Frame, Message, NodeIdentity};
use blockstore::{
    BlockServer, Config, Error, ErrorCode, PeerClient, PeerOutcome, ReplicatedStore, Tier,
};
use common::{Fault, Proxy, addrs, block, eventually, fast_config, start_servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PUT: u8 = 0x10;
const PUT_ACK: u8 = 0x11;

fn driver_config(replicas: usize) -> Config {
    Config {
        peer_replicas: replicas,
        ..fast_config("driver")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_three_peers_are_where_the_receipts_say() {
    let servers = start_servers(3).await;
    let store = ReplicatedStore::open(driver_config(2), &addrs(&servers))
        .await
        .unwrap();
    let blocks: Vec<_> = (0..30).map(|i| block(1, i, 10_000 + i as usize)).collect();
    for b in &blocks {
        let receipt = store.put(b.clone()).await.unwrap();
        assert_eq!(receipt.replicas.len(), 2);
        let holders: HashSet<&str> = receipt.replicas.iter().map(|r| r.peer.as_str()).collect();
        assert_eq!(holders.len(), 2, "replicas on distinct peers");
        // Check the servers themselves, not the store's bookkeeping.
        for server in &servers {
            let listed = holders.contains(server.local_addr().to_string().as_str());
            assert_eq!(
                server.manager().contains(&b.id()),
                listed,
                "block {} on {}",
                b.id(),
                server.local_addr()
            );
        }
        assert!(store.local().contains(&b.id()));
    }
    // Round-robin placement spreads the load evenly: 60 replicas over 3 peers.
    for server in &servers {
        assert_eq!(server.manager().list().len(), 20, "{}", server.local_addr());
        assert_eq!(server.stats().corrupt_frames, 0);
    }
    // With one peer gone and the driver's memory gone (a new store), every block is
    // still readable from a surviving replica, byte for byte.
    let mut servers = servers;
    servers.remove(0).shutdown().await;
    drop(store);
    let mut all = addrs(&servers);
    all.insert(0, common::dead_addr()); // the dead peer's slot
    let fresh = ReplicatedStore::open(driver_config(1), &all).await.unwrap();
    for b in &blocks {
        assert_eq!(&fresh.get(&b.id()).await.unwrap(), b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_live_peers_fails_the_put_saying_which_and_why() {
    let mut servers = start_servers(2).await;
    let all = addrs(&servers);
    let store = ReplicatedStore::open(driver_config(2), &all).await.unwrap();
    store.put(block(1, 1, 1000)).await.unwrap();
    servers.remove(1).shutdown().await;
    assert!(eventually(Duration::from_secs(2), || !store.peers()[1].connected).await);
    let b = block(1, 2, 1000);
    let err = store.put(b.clone()).await.unwrap_err();
    match &err {
        Error::InsufficientReplicas {
            block,
            needed,
            stored_on,
            failures,
        } => {
            assert_eq!((*block, *needed), (b.id(), 2));
            assert_eq!(stored_on, &vec![all[0].clone()]);
            assert_eq!(failures.0.len(), 1);
            assert_eq!(failures.0[0].peer, all[1]);
            assert!(
                matches!(&failures.0[0].outcome, PeerOutcome::Failed(e) if matches!(**e, Error::PeerUnavailable { .. }))
            );
        }
        other => panic!("unexpected {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&all[1]) && text.contains("not connected") && text.contains("peer_replicas"),
        "{text}"
    );
    // Not stored: not kept locally, and the partial replica is taken back.
    assert!(!store.local().contains(&b.id()));
    assert!(
        eventually(Duration::from_secs(2), || !servers[0]
            .manager()
            .contains(&b.id()))
        .await
    );
    // The earlier, acknowledged block is untouched.
    assert!(store.local().contains(&block(1, 1, 1).id()));
    assert!(servers[0].manager().contains(&block(1, 1, 1).id()));
}

#[tokio::test]
async fn corrupt_frames_from_a_raw_client_are_counted_and_nothing_is_stored() {
    let servers = start_servers(1).await;
    let server = &servers[0];
    let body_max = Config::default().frame_body_max_bytes;
    let hello = Frame {
        request_id: 0,
        message: Message::Hello {
            version: 1,
            node: NodeIdentity {
                name: "raw".into(),
                instance: 1,
            },
        },
    };
    let b = block(1, 1, 5000);
    let put = protocol::encode(
        &Frame {
            request_id: 1,
            message: Message::Put(b.clone()),
        },
        body_max,
    )
    .unwrap()
    .to_vec();
    // One connection per damage: a data bit (frame CRC), a length bit that shrinks the
    // frame (CRC over the wrong bytes), a length bit that makes it exceed
    // `frame_body_max_bytes` (refused before reading on).
    for (what, flip_at, mask) in [
        ("data byte", put.len() - 10, 0x04),
        ("length shrunk", 4, 0x08),
        ("length beyond the limit", 7, 0x04),
    ] {
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        stream
            .write_all(&protocol::encode(&hello, body_max).unwrap().to_vec())
            .await
            .unwrap();
        let mut corrupt = put.clone();
        corrupt[flip_at] ^= mask;
        stream.write_all(&corrupt).await.unwrap();
        // The server answers the hello, then an error frame for the corrupt one, then closes.
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap();
        let (ack, used) = protocol::decode_frame(&received, body_max)
            .unwrap()
            .unwrap();
        assert!(matches!(ack.message, Message::HelloAck { .. }), "{what}");
        let (reply, rest) = protocol::decode_frame(&received[used..], body_max)
            .unwrap()
            .unwrap();
        match reply.message {
            Message::Error {
                code: ErrorCode::CorruptFrame,
                message,
            } => {
                assert!(
                    message.contains("corrupt frame at byte"),
                    "{what}: {message}"
                );
            }
            other => panic!("{what}: unexpected {other:?}"),
        }
        assert_eq!(
            used + rest,
            received.len(),
            "{what}: nothing after the error frame"
        );
    }
    assert_eq!(server.stats().corrupt_frames, 3);
    assert!(
        server.manager().list().is_empty(),
        "a corrupt put must store nothing"
    );

    // A length bit that grows the frame within the limit: the server waits for bytes that
    // never come, for at most `frame_read_timeout_ms`, then drops the connection.
    let patient = BlockServer::bind(
        "127.0.0.1:0",
        Config {
            frame_read_timeout_ms: 300,
            ..fast_config("p")
        },
    )
    .await
    .unwrap();
    let mut stream = TcpStream::connect(patient.local_addr()).await.unwrap();
    stream
        .write_all(&protocol::encode(&hello, body_max).unwrap().to_vec())
        .await
        .unwrap();
    let mut corrupt = put.clone();
    corrupt[6] ^= 0x01;
    stream.write_all(&corrupt).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(patient.manager().list().is_empty());
}

#[tokio::test]
async fn a_wrong_version_or_first_frame_is_refused_with_a_reason() {
    let servers = start_servers(1).await;
    let body_max = Config::default().frame_body_max_bytes;
    for (first, code, needle) in [
        (
            Message::Hello {
                version: 99,
                node: NodeIdentity {
                    name: "future".into(),
                    instance: 1,
                },
            },
            ErrorCode::UnsupportedVersion,
            "version 99",
        ),
        (
            Message::Ping,
            ErrorCode::ProtocolViolation,
            "expected a hello",
        ),
    ] {
        let mut stream = TcpStream::connect(servers[0].local_addr()).await.unwrap();
        stream
            .write_all(
                &protocol::encode(
                    &Frame {
                        request_id: 5,
                        message: first,
                    },
                    body_max,
                )
                .unwrap()
                .to_vec(),
            )
            .await
            .unwrap();
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap();
        let (reply, _) = protocol::decode_frame(&received, body_max)
            .unwrap()
            .unwrap();
        assert_eq!(reply.request_id, 5);
        match reply.message {
            Message::Error { code: c, message } => {
                assert_eq!(c, code);
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(servers[0].stats().protocol_errors, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_in_transit_fails_over_and_stores_nothing_on_that_peer() {
    let servers = start_servers(2).await;
    let proxy = Proxy::start(servers[0].local_addr()).await;
    let peers = vec![proxy.addr.to_string(), servers[1].local_addr().to_string()];
    let store = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    proxy.fault_to_server(Fault::FlipInFrame {
        kind: PUT,
        at: 1000,
    });
    // The first put goes to peer 0 (through the proxy), is corrupted on the way, and
    // lands on peer 1 instead.
    let b = block(1, 1, 64 * 1024);
    let receipt = store.put(b.clone()).await.unwrap();
    assert_eq!(receipt.replicas.len(), 1);
    assert_eq!(receipt.replicas[0].peer, peers[1]);
    assert!(servers[1].manager().contains(&b.id()));
    assert!(!servers[0].manager().contains(&b.id()));
    assert_eq!(servers[0].stats().corrupt_frames, 1);
    // The client reconnects to the proxied peer and it serves again.
    assert!(
        eventually(Duration::from_secs(3), || {
            let status = &store.peers()[0];
            status.connected && status.connects >= 2
        })
        .await
    );
    // Round robin: of the next two puts, one goes to the reconnected peer.
    let next: Vec<_> = (2..4).map(|i| block(1, i, 1000)).collect();
    for b in &next {
        store.put(b.clone()).await.unwrap();
    }
    assert_eq!(
        next.iter()
            .filter(|b| servers[0].manager().contains(&b.id()))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_reply_is_not_counted_as_a_replica() {
    let servers = start_servers(2).await;
    let proxy = Proxy::start(servers[0].local_addr()).await;
    let peers = vec![proxy.addr.to_string(), servers[1].local_addr().to_string()];
    let store = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    // Corrupt the put-ack on its way back: the peer stored the block, but the driver
    // cannot know that, so it must not count it.
    proxy.fault_to_client(Fault::FlipInFrame {
        kind: PUT_ACK,
        at: 3,
    });
    let b = block(1, 1, 1000);
    let receipt = store.put(b.clone()).await.unwrap();
    assert_eq!(receipt.replicas[0].peer, peers[1]);
    assert!(
        eventually(Duration::from_secs(2), || store.peers()[0].corrupt_frames
            == 1)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cut_off_mid_transfer_fails_over_and_keeps_nothing_partial() {
    let servers = start_servers(2).await;
    let proxy = Proxy::start(servers[0].local_addr()).await;
    let peers = vec![proxy.addr.to_string(), servers[1].local_addr().to_string()];
    let store = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    proxy.fault_to_server(Fault::CutInFrame {
        kind: PUT,
        after: 300_000,
    });
    let b = block(1, 1, 1 << 20);
    let started = Instant::now();
    let receipt = store.put(b.clone()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failover must not wait for a timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(receipt.replicas[0].peer, peers[1]);
    assert!(!servers[0].manager().contains(&b.id()));
    assert_eq!(
        servers[0].stats().corrupt_frames,
        0,
        "a cut is not corruption"
    );
    // And when it is the only peer, the put fails and says why.
    let store1 = ReplicatedStore::open(driver_config(1), &peers[..1])
        .await
        .unwrap();
    proxy.fault_to_server(Fault::CutInFrame {
        kind: PUT,
        after: 300_000,
    });
    let err = store1.put(block(1, 2, 1 << 20)).await.unwrap_err();
    assert!(matches!(err, Error::InsufficientReplicas { .. }), "{err}");
    assert!(
        err.to_string().contains("connection lost") || err.to_string().contains("closed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_is_bounded_then_failed_over_or_reported() {
    let servers = start_servers(2).await;
    let proxy = Proxy::start(servers[0].local_addr()).await;
    let peers = vec![proxy.addr.to_string(), servers[1].local_addr().to_string()];
    let config = driver_config(1);
    let put_timeout = Duration::from_millis(config.peer_put_timeout_ms);
    let store = ReplicatedStore::open(config, &peers).await.unwrap();
    proxy.stall(true);
    let started = Instant::now();
    let receipt = store.put(block(1, 1, 10_000)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(receipt.replicas[0].peer, peers[1]);
    // Either the put waited out `peer_put_timeout_ms` on the stalled peer, or heartbeats
    // had already marked it down; never longer than the bound plus slack.
    assert!(took < put_timeout + Duration::from_secs(1), "took {took:?}");
    // New blocks go to the healthy peer without waiting.
    assert!(eventually(Duration::from_secs(2), || !store.peers()[0].connected).await);
    let started = Instant::now();
    for i in 2..10 {
        let r = store.put(block(1, i, 10_000)).await.unwrap();
        assert_eq!(r.replicas[0].peer, peers[1]);
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    // With only the slow peer, the put fails within the bound, naming the setting.
    let store1 = ReplicatedStore::open(driver_config(1), &peers[..1])
        .await
        .unwrap();
    let started = Instant::now();
    let err = store1.put(block(1, 99, 10_000)).await.unwrap_err();
    assert!(started.elapsed() < put_timeout + Duration::from_secs(1));
    let text = err.to_string();
    assert!(text.contains(&peers[0]), "{text}");
    assert!(
        text.contains("peer_put_timeout_ms")
            || text.contains("not connected")
            || text.contains("handshake"),
        "{text}"
    );
    proxy.stall(false);
    assert!(
        eventually(Duration::from_secs(3), || store.peers()[0].connected).await,
        "the peer rejoins once it answers again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_peer_is_skipped() {
    let full = BlockServer::bind(
        "127.0.0.1:0",
        Config {
            memory_max_bytes: 1024,
            ..fast_config("full")
        },
    )
    .await
    .unwrap();
    let roomy = start_servers(1).await;
    let peers = vec![
        full.local_addr().to_string(),
        roomy[0].local_addr().to_string(),
    ];
    let store = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    let receipt = store.put(block(1, 1, 10_000)).await.unwrap();
    assert_eq!(receipt.replicas[0].peer, peers[1]);
    // With replicas on both required, the error carries the peer's own reason.
    let store2 = ReplicatedStore::open(driver_config(2), &peers)
        .await
        .unwrap();
    let err = store2.put(block(1, 2, 10_000)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("too large") || text.contains("store full"),
        "{text}"
    );
    assert!(text.contains(&peers[0]), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_rejoins_and_lost_replicas_are_repaired() {
    let mut servers = start_servers(2).await;
    let peers = addrs(&servers);
    let store = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    let blocks: Vec<_> = (0..10).map(|i| block(1, i, 5000)).collect();
    for b in &blocks {
        store.put(b.clone()).await.unwrap();
    }
    let on_b: Vec<_> = servers[1].manager().list();
    assert_eq!(on_b.len(), 5);
    // Kill peer B (its memory is gone) and restart it on the same address.
    servers.remove(1).shutdown().await;
    assert!(eventually(Duration::from_secs(2), || !store.peers()[1].connected).await);
    // Meanwhile new blocks go to A.
    for i in 10..14 {
        let r = store.put(block(1, i, 5000)).await.unwrap();
        assert_eq!(r.replicas[0].peer, peers[0]);
    }
    let restarted = BlockServer::bind(&peers[1], fast_config("executor-1"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || store.peers()[1].connected).await,
        "reconnects with backoff"
    );
    assert_eq!(store.peers()[1].restarts_seen, 1);
    assert!(restarted.manager().list().is_empty());
    // The five replicas that were on B are lost; repair makes new ones.
    let report = store.repair().await;
    assert_eq!(report.replicas_dropped, 5, "{report:?}");
    assert_eq!(report.replicas_made, 5, "{report:?}");
    assert!(report.under_replicated.is_empty(), "{report:?}");
    for id in on_b {
        let live = store.live_replicas(&id);
        assert_eq!(live.len(), 1, "{id}");
        let holder = if live[0] == peers[0] {
            servers[0].manager()
        } else {
            restarted.manager()
        };
        assert!(holder.contains(&id), "{id} on {}", live[0]);
    }
    // A second pass finds nothing to do.
    let again = store.repair().await;
    assert_eq!((again.replicas_made, again.replicas_dropped), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_driver_finds_and_fetches_its_blocks_by_id() {
    let servers = start_servers(3).await;
    let peers = addrs(&servers);
    let blocks: Vec<_> = (0..12)
        .map(|i| block(4, i, 3000 + i as usize * 100))
        .collect();
    {
        let store = ReplicatedStore::open(driver_config(1), &peers)
            .await
            .unwrap();
        for b in &blocks {
            store.put(b.clone()).await.unwrap();
        }
    } // the driver is gone, and its memory with it
    let restarted = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    assert!(restarted.local().list().is_empty());
    let listing = restarted.list_remote().await;
    assert!(listing.failures.0.is_empty(), "{}", listing.failures);
    let ids: Vec<_> = listing.blocks.keys().copied().collect();
    assert_eq!(ids, blocks.iter().map(|b| b.id()).collect::<Vec<_>>());
    for b in &blocks {
        assert_eq!(&restarted.get(&b.id()).await.unwrap(), b);
    }
    // An id nobody has is reported with what each place said.
    let missing = block(4, 999, 1).id();
    let err = restarted.get(&missing).await.unwrap_err();
    match &err {
        Error::BlockUnavailable { attempts, .. } => assert_eq!(attempts.0.len(), 4, "{err}"),
        other => panic!("unexpected {other}"),
    }
    // Cleanup reaches every peer.
    let report = restarted.remove(&ids).await;
    assert!(report.failures.0.is_empty());
    assert_eq!(report.peer_removed.iter().map(|(_, n)| n).sum::<u64>(), 12);
    for s in &servers {
        assert!(s.manager().list().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_extra_clients_clearly() {
    let server = BlockServer::bind(
        "127.0.0.1:0",
        Config {
            server_connections_max: 1,
            ..fast_config("small")
        },
    )
    .await
    .unwrap();
    let first = PeerClient::start(server.local_addr().to_string(), fast_config("a")).unwrap();
    assert!(first.wait_connected(Duration::from_secs(2)).await);
    let second = PeerClient::start(server.local_addr().to_string(), fast_config("b")).unwrap();
    assert!(!second.wait_connected(Duration::from_millis(500)).await);
    let status = second.status();
    let reason = status.down_reason.unwrap();
    assert!(
        reason.contains("too many connections") && reason.contains("server_connections_max"),
        "{reason}"
    );
    assert!(server.stats().connections_rejected >= 1);
    // The first client is unaffected.
    assert_eq!(first.put(block(1, 1, 100)).await.unwrap(), Tier::Memory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_too_large_for_a_frame_is_refused_before_sending() {
    let servers = start_servers(1).await;
    let config = Config {
        frame_body_max_bytes: 64 * 1024,
        ..driver_config(1)
    };
    let store = ReplicatedStore::open(config, &addrs(&servers))
        .await
        .unwrap();
    let err = store.put(block(1, 1, 100_000)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("frame_body_max_bytes"), "{text}");
    assert_eq!(servers[0].stats().corrupt_frames, 0);
    assert!(!store.local().contains(&block(1, 1, 1).id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_for_an_unreachable_peer_are_delivered_when_it_is_back() {
    let servers = start_servers(2).await;
    let proxy = Proxy::start(servers[0].local_addr()).await;
    let peers = vec![proxy.addr.to_string(), servers[1].local_addr().to_string()];
    let store = ReplicatedStore::open(driver_config(1), &peers)
        .await
        .unwrap();
    let blocks: Vec<_> = (0..6).map(|i| block(3, i, 2000)).collect();
    for b in &blocks {
        store.put(b.clone()).await.unwrap();
    }
    assert_eq!(servers[0].manager().list().len(), 3);
    proxy.stall(true);
    assert!(eventually(Duration::from_secs(3), || !store.peers()[0].connected).await);
    let ids: Vec<_> = blocks.iter().map(|b| b.id()).collect();
    let report = store.remove(&ids).await;
    assert_eq!(report.local_removed, 6);
    assert_eq!(report.failures.0.len(), 1, "{}", report.failures);
    assert_eq!(report.failures.0[0].peer, peers[0]);
    assert_eq!(report.peer_removed, vec![(peers[1].clone(), 3)]);
    assert_eq!(
        servers[0].manager().list().len(),
        3,
        "the unreachable peer still holds its copies"
    );
    proxy.stall(false);
    assert!(eventually(Duration::from_secs(3), || store.peers()[0].connected).await);
    let repair = store.repair().await;
    assert_eq!(repair.removals_delivered, 6, "{repair:?}");
    assert!(servers[0].manager().list().is_empty());
    // Delivered once: the next pass has nothing left to send.
    assert_eq!(store.repair().await.removals_delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_local_copies_are_read_from_replicas_and_still_repaired() {
    let mut servers = start_servers(3).await;
    let peers = addrs(&servers);
    let store = ReplicatedStore::open(driver_config(2), &peers)
        .await
        .unwrap();
    let blocks: Vec<_> = (0..6).map(|i| block(8, i, 4000)).collect();
    for b in &blocks {
        store.put(b.clone()).await.unwrap();
    }
    let ids: Vec<_> = blocks.iter().map(|b| b.id()).collect();
    assert_eq!(store.release_local(&ids).await.unwrap(), 6);
    assert!(store.local().list().is_empty());
    for b in &blocks {
        assert_eq!(&store.get(&b.id()).await.unwrap(), b, "read from a replica");
    }
    // A peer dies: repair copies from a surviving replica, since there is no local copy.
    servers.remove(0).shutdown().await;
    assert!(eventually(Duration::from_secs(3), || !store.peers()[0].connected).await);
    tokio::time::sleep(Duration::from_millis(600)).await; // past `peer_dead_after_ms`
    let report = store.repair().await;
    assert!(report.under_replicated.is_empty(), "{report:?}");
    for b in &blocks {
        let live = store.live_replicas(&b.id());
        assert_eq!(live.len(), 2, "{}: {live:?}", b.id());
        assert!(!live.contains(&peers[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_memory_budget_of_one_frame_serves_many_clients() {
    // The server may hold only one frame body at a time across all connections; four
    // clients putting near-maximal frames concurrently must all get through, in turn.
    let body_max = 256 * 1024;
    let config = Config {
        frame_body_max_bytes: body_max,
        server_frame_bytes_in_flight_max: u64::from(body_max),
        ..fast_config("tight")
    };
    let server = BlockServer::bind("127.0.0.1:0", config.clone())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..4u32 {
        let client = PeerClient::start(server.local_addr().to_string(), config.clone()).unwrap();
        assert!(client.wait_connected(Duration::from_secs(2)).await);
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                client.put(block(c, i, 250 * 1024)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.manager().list().len(), 40);
}
