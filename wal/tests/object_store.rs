//! The WAL on object storage, beyond the conformance suite (which runs against it from
//! `conformance.rs`): the object layout (golden), recovery's decisions for objects, the
//! create-only fence between two writers, retention, and start-up errors. In memory
//! always; on the moto S3 server when it is installed.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Backend, Object, moto, payload, read_all};
use wal::objstore::{ObjectClient, ObjectOptions, ObjectSegmentStore, RetryPolicy, StorageUrl};
use wal::{Config, Error, Lsn, SyncPolicy, Wal};

/// Memory always, S3 when moto is installed.
fn backends() -> Vec<Object> {
    let mut out = vec![Object::memory()];
    out.extend(Object::s3());
    out
}

fn config() -> Config {
    Config {
        segment_size_max_bytes: 4096,
        record_size_max_bytes: 1024,
        index_interval_bytes: 64,
        ..Config::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn object_layout_is_stable() {
    // One appender, one record per put: three objects named by 20-digit segment ids, each
    // a complete segment in the file format. The bytes of the first one are pinned.
    let url = StorageUrl::parse("memory://golden-layout/ember/wal").unwrap();
    let wal = Wal::open_url(&url, &ObjectOptions::default(), config()).unwrap();
    for record in [&b"alpha"[..], b"", b"gamma!"] {
        wal.append_blocking(record.to_vec()).unwrap();
    }
    drop(wal);
    let client = url.connect(&ObjectOptions::default()).unwrap();
    let mut names: Vec<_> = client.list().unwrap();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("segment-00000000000000000001.wal".to_owned(), 53),
            ("segment-00000000000000000002.wal".to_owned(), 48),
            ("segment-00000000000000000003.wal".to_owned(), 54),
        ]
    );
    assert_eq!(
        client.display_name("segment-00000000000000000001.wal"),
        "memory://golden-layout/ember/wal/segment-00000000000000000001.wal"
    );
    let first = client.get("segment-00000000000000000001.wal").unwrap();
    assert_eq!(
        hex(&first),
        GOLDEN_FIRST_OBJECT,
        "the object format changed; that needs a new format_version"
    );
}

/// `segment-..01.wal` holding the record `alpha` at Lsn 1 (CRCs checked independently
/// with Python's `zlib.crc32`):
const GOLDEN_FIRST_OBJECT: &str = concat!(
    "454d42455257414c", // magic "EMBERWAL"
    "01000000",         // format_version 1
    "3cbaae5a",         // header CRC = crc32(bytes 0..12 ++ bytes 16..32)
    "0100000000000000", // segment_id 1
    "0100000000000000", // base_lsn 1
    "05000000",         // len 5
    "fadeb797",         // record CRC = crc32(segment_id u64 ++ lsn u64 ++ len u32 ++ payload)
    "0100000000000000", // lsn 1
    "616c706861",       // "alpha"
);

#[test]
fn a_missing_object_in_the_middle_is_a_hard_error_naming_it() {
    for backend in backends() {
        let wal = backend.open(config()).unwrap();
        for n in 0..6 {
            wal.append_blocking(payload(1, n, 100)).unwrap();
        }
        drop(wal);
        let segments = backend.segments();
        assert_eq!(segments.len(), 6, "{}: one object per put", backend.name());
        backend.remove_raw(&segments[2]);
        let err = backend.open(config()).unwrap_err();
        match &err {
            Error::MissingSegment {
                segment,
                expected_id,
                ..
            } => {
                assert!(segment.ends_with(&segments[3]), "{err}");
                assert_eq!(expected_id.get(), 3, "{err}");
            }
            other => panic!("{}: expected MissingSegment, got {other}", backend.name()),
        }
    }
}

#[test]
fn damage_in_the_newest_object_is_corruption_not_a_torn_tail() {
    // On disk, damage at the end of the newest segment is a torn write and is cut. A put
    // is atomic, so an object can never be torn: the same damage is corruption, reported
    // with the object and offset, and nothing is cut.
    for backend in backends() {
        let wal = backend.open(config()).unwrap();
        for n in 0..4 {
            wal.append_blocking(payload(2, n, 100)).unwrap();
        }
        drop(wal);
        let newest = backend.segments().pop().unwrap();
        let len = backend.contents(&newest).len() as u64;
        backend.corrupt(&newest, len - 1, 0x01);
        let before = backend.contents(&newest);
        let err = backend.open(config()).unwrap_err();
        match &err {
            Error::Corrupt { segment, .. } => assert!(segment.ends_with(&newest), "{err}"),
            other => panic!("{}: expected Corrupt, got {other}", backend.name()),
        }
        assert_eq!(backend.contents(&newest), before, "nothing was cut");
        // An unreadable header is corruption too (on disk: a torn creation, deleted).
        backend.corrupt(&newest, len - 1, 0x01);
        backend.corrupt(&newest, 0, 0xFF);
        assert!(matches!(
            backend.open(config()).unwrap_err(),
            Error::Corrupt { .. }
        ));
    }
}

#[test]
fn two_writers_never_overwrite_each_other() {
    // The story: a writer on another machine (a zombie driver) recovered the same log. No
    // lock reaches it; the create-only put does. Both try to create the next segment; the
    // first put wins, the other writer's append fails, is not acknowledged, and poisons it.
    for backend in backends() {
        let a = backend.open(config()).unwrap();
        a.append_blocking(b"before".to_vec()).unwrap();
        // A second client with another name for the same prefix gets past the in-process
        // guard, as a writer in another process would.
        let b_client = {
            let c = backend.client();
            ObjectClient::new(
                Arc::clone(c.store()),
                c.prefix().clone(),
                format!("{}#other-process", c.location()),
                RetryPolicy::default(),
            )
        };
        let b = Wal::open(Arc::new(ObjectSegmentStore::new(b_client)), config()).unwrap();
        assert_eq!(a.append_blocking(b"from a".to_vec()).unwrap(), Lsn::new(2));
        let err = b.append_blocking(b"from b".to_vec()).unwrap_err();
        assert!(err.is_poisoned(), "{}: {err}", backend.name());
        assert!(err.to_string().contains("another writer"), "{err}");
        assert!(
            b.append_blocking(b"again".to_vec())
                .unwrap_err()
                .is_poisoned()
        );
        drop((a, b));
        let wal = backend.open(config()).unwrap();
        let records: Vec<_> = read_all(&wal).into_iter().map(|(_, r)| r).collect();
        assert_eq!(records, vec![b"before".to_vec(), b"from a".to_vec()]);
    }
}

#[test]
fn retention_deletes_objects_below_the_truncation_point() {
    for backend in backends() {
        let wal = backend.open(config()).unwrap();
        for n in 0..10 {
            wal.append_blocking(payload(3, n, 50)).unwrap();
        }
        assert_eq!(backend.segments().len(), 10);
        let deleted = wal.truncate_before(Lsn::new(7)).unwrap();
        assert_eq!(deleted, 6, "{}", backend.name());
        assert_eq!(
            backend.segments().first().unwrap(),
            &common::segment_name(7),
            "objects 1..=6 are gone"
        );
        drop(wal);
        let wal = backend.open(config()).unwrap();
        assert_eq!(wal.first_lsn(), Some(Lsn::new(7)));
        assert_eq!(wal.append_blocking(b"next".to_vec()).unwrap(), Lsn::new(11));
    }
}

#[test]
fn group_commit_puts_one_object_per_window() {
    // 16 concurrent appenders: their appends share puts, so far fewer objects than records.
    for backend in backends() {
        let config = Config {
            segment_size_max_bytes: 1 << 20,
            sync_policy: SyncPolicy::GroupCommit {
                delay_us_max: 2000,
                bytes_max: 1 << 20,
            },
            ..config()
        };
        let wal = Arc::new(backend.open(config).unwrap());
        let threads: Vec<_> = (0..16u64)
            .map(|w| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    for n in 0..25 {
                        wal.append_blocking(payload(w, n, 200)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let objects = backend.segments().len();
        assert!(
            objects < 400 / 2,
            "{}: 400 records in {objects} objects",
            backend.name()
        );
        assert_eq!(read_all(&wal).len(), 400);
    }
}

#[test]
fn start_up_errors_name_the_url_and_the_setting() {
    let err = Wal::open_url(
        &StorageUrl::parse("memory://x/y").unwrap(),
        &ObjectOptions::default(),
        Config {
            segment_size_max_bytes: 1,
            ..Config::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let err = StorageUrl::parse("s3://Bad_Bucket/x")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("s3://Bad_Bucket/x") && err.contains("bucket"),
        "{err}"
    );

    // A server that does not answer: the error says which setting to check.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = ObjectOptions {
        retry: RetryPolicy {
            attempt_timeout: std::time::Duration::from_secs(5),
            ..RetryPolicy::default()
        },
        s3: vec![
            (
                "aws_endpoint".into(),
                format!("http://127.0.0.1:{closed_port}"),
            ),
            ("aws_allow_http".into(), "true".into()),
            ("aws_access_key_id".into(), "testing".into()),
            ("aws_secret_access_key".into(), "testing".into()),
            ("aws_region".into(), "us-east-1".into()),
        ],
    };
    let url = StorageUrl::parse("s3://ember-test/nowhere").unwrap();
    let err = Wal::open_url(&url, &options, config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("s3://ember-test/nowhere"), "{err}");
    assert!(err.contains("AWS_ENDPOINT"), "{err}");

    let Some(moto) = moto::Moto::shared() else {
        return;
    };
    let options = ObjectOptions {
        s3: moto.s3_settings(),
        ..Default::default()
    };
    let url = StorageUrl::parse("s3://no-such-bucket-here/wal").unwrap();
    let err = Wal::open_url(&url, &options, config()).unwrap_err();
    assert!(matches!(err, Error::StorageUnavailable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("s3://no-such-bucket-here/wal"), "{text}");
    assert!(text.contains("bucket does not exist"), "{text}");
    // Credentials the server does not know: refused, and the error names the settings.
    if let Some(auth) = moto::Moto::with_auth() {
        let options = ObjectOptions {
            s3: auth.s3_settings(),
            ..Default::default()
        };
        let url = StorageUrl::parse("s3://ember-test/denied").unwrap();
        let err = Wal::open_url(&url, &options, config()).unwrap_err();
        assert!(matches!(err, Error::StorageUnavailable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("s3://ember-test/denied"), "{text}");
        assert!(
            text.contains("credentials were refused") && text.contains("AWS_ACCESS_KEY_ID"),
            "{text}"
        );
    }
    // And an http endpoint without AWS_ALLOW_HTTP is refused with the setting named.
    let mut no_http = moto.s3_settings();
    no_http.retain(|(k, _)| k != "aws_allow_http");
    let options = ObjectOptions {
        s3: no_http,
        ..Default::default()
    };
    let text = Wal::open_url(
        &StorageUrl::parse("s3://ember-test/x").unwrap(),
        &options,
        config(),
    )
    .unwrap_err()
    .to_string();
    assert!(text.contains("AWS_ALLOW_HTTP"), "{text}");
}
