//! The checkpoint backend on object storage: the backend conformance suite and the
//! fallback and conflict stories, in memory and on the moto S3 server (a real S3
//! implementation that enforces conditional puts), started by the fixture on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

#[allow(dead_code)] // the shared fixture; not every test file uses all of it
#[path = "../../tests/src/moto.rs"]
mod moto;

use std::sync::Arc;

use checkpoint::{CheckpointBackend, CheckpointStore, Error, ObjectBackend, names};
use common::*;
use wal::objstore::{ObjectOptions, StorageUrl};

fn memory(test: &str) -> Arc<ObjectBackend> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = StorageUrl::parse(&format!("memory://checkpoint-{test}-{n}/loc")).unwrap();
    Arc::new(ObjectBackend::new(
        url.connect(&ObjectOptions::default()).unwrap(),
    ))
}

fn s3(moto: &moto::Moto) -> Arc<ObjectBackend> {
    let url = StorageUrl::parse(&moto.fresh_url("checkpoint")).unwrap();
    let options = ObjectOptions {
        s3: moto.s3_settings(),
        ..Default::default()
    };
    Arc::new(ObjectBackend::new(url.connect(&options).unwrap()))
}

/// Every backend under test: memory always, S3 when moto is installed.
fn backends(test: &str) -> Vec<Arc<ObjectBackend>> {
    let mut out = vec![memory(test)];
    if let Some(moto) = moto::Moto::shared() {
        out.push(s3(moto));
    }
    out
}

#[test]
fn conformance_object_memory() {
    checkpoint::conformance::run_all(&|| memory("conformance") as Arc<dyn CheckpointBackend>);
}

#[test]
fn conformance_object_s3() {
    let Some(moto) = moto::Moto::shared() else {
        return;
    };
    checkpoint::conformance::run_all(&|| s3(moto) as Arc<dyn CheckpointBackend>);
}

/// Replaces an object's bytes (objects cannot be changed in place).
fn rewrite(backend: &ObjectBackend, name: &str, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = backend.get(name).unwrap();
    change(&mut bytes);
    backend.delete(name).unwrap();
    backend.put_new(name, &bytes).unwrap();
}

#[test]
fn damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    // The story: checkpoint 3's object was damaged after it was written (a bit flipped by
    // a faulty proxy, an operator's mistake). A restart must skip it, say why, and restore
    // checkpoint 2 with its state; a checkpoint whose snapshot object is gone is skipped
    // the same way.
    for backend in backends("fallback") {
        let store = CheckpointStore::open(
            Arc::clone(&backend) as Arc<dyn CheckpointBackend>,
            config(5),
        )
        .unwrap();
        for k in 1..=3 {
            publish_with_state(&store, k).unwrap();
        }
        drop(store);
        rewrite(&backend, &names::checkpoint_name(3), |b| {
            let last = b.len() - 1;
            b[last] ^= 0x20;
        });
        let store = CheckpointStore::open(
            Arc::clone(&backend) as Arc<dyn CheckpointBackend>,
            config(5),
        )
        .unwrap();
        let restored = store.restore().unwrap().unwrap();
        assert_eq!(restored.sequence, 2, "{}", backend.location());
        assert_eq!(restored.skipped.len(), 1);
        assert_eq!(restored.skipped[0].name, names::checkpoint_name(3));
        assert!(
            matches!(restored.skipped[0].error, Error::ChecksumMismatch { .. }),
            "{:?}",
            restored.skipped[0].error
        );
        assert_eq!(restored.state["counts"], state_body(2));
        assert_eq!(
            restored.checkpoint,
            checkpoint_at(2, restored.checkpoint.parts().state_snapshots.clone())
        );

        // Checkpoint 2's snapshot object disappears too: fall back to 1.
        let snapshot = &restored.checkpoint.parts().state_snapshots[0].object;
        backend.delete(snapshot).unwrap();
        let restored = store.restore().unwrap().unwrap();
        assert_eq!(restored.sequence, 1, "{}", backend.location());
        assert_eq!(restored.state["counts"], state_body(1));
    }
}

#[test]
fn a_writer_on_another_machine_collides_instead_of_overwriting() {
    // The story: two drivers (a zombie and its replacement) publish to one prefix. Object
    // stores have no locks; the create-only put of the next sequence is the fence. The
    // loser gets `Conflict` and its checkpoint is not taken; the winner's bytes stay.
    for backend in backends("fence") {
        let a = CheckpointStore::open(
            Arc::clone(&backend) as Arc<dyn CheckpointBackend>,
            config(3),
        )
        .unwrap();
        let b = CheckpointStore::open(
            Arc::clone(&backend) as Arc<dyn CheckpointBackend>,
            config(3),
        )
        .unwrap();
        publish_with_state(&a, 1).unwrap();
        let winner = backend.get(&names::checkpoint_name(1)).unwrap();
        // B saw no checkpoint when it opened, so it publishes its batch as sequence 1 too.
        // (Byte-identical content would be accepted as the same put: nothing to lose.)
        let err = publish_with_state(&b, 2).unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        assert_eq!(backend.get(&names::checkpoint_name(1)).unwrap(), winner);
        let restored = CheckpointStore::open_read_only(
            Arc::clone(&backend) as Arc<dyn CheckpointBackend>,
            config(3),
        )
        .unwrap()
        .restore()
        .unwrap()
        .unwrap();
        assert_eq!(restored.sequence, 1);
        assert_eq!(restored.state["counts"], state_body(1));
    }
}

#[test]
fn start_up_errors_name_the_url_and_the_setting() {
    let err = checkpoint::backend_for_url(
        &StorageUrl::parse("memory://x/ok").unwrap(),
        &ObjectOptions::default(),
    );
    assert!(err.is_ok());
    let Some(moto) = moto::Moto::shared() else {
        return;
    };
    let options = ObjectOptions {
        s3: moto.s3_settings(),
        ..Default::default()
    };
    let err = checkpoint::backend_for_url(
        &StorageUrl::parse("s3://no-such-bucket-here/ckpt").unwrap(),
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("s3://no-such-bucket-here/ckpt"), "{err}");
    assert!(err.contains("bucket does not exist"), "{err}");
}
