//! The `wal::fs::Dir` contract, checked against every implementation: what the WAL and the
//! checkpoint code rely on, with the simulated page cache held to the same semantics as
//! real files.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;

use common::Backend;
use wal::fs;

for_each_backend!(
    create_new_is_exclusive,
    writes_append_and_read_back,
    write_at_overwrites_in_place,
    set_len_truncates_and_extends_with_zeros,
    rename_replaces_the_target,
    remove_and_missing_files,
    invalid_names_are_rejected,
    read_only_handles_do_not_write,
    read_immutable_sees_the_whole_file,
    write_atomic_replaces_content,
    lock_is_exclusive,
);

fn create_new_is_exclusive(backend: &dyn Backend) {
    let dir = backend.dir();
    dir.create_new("a").unwrap();
    assert_eq!(
        dir.create_new("a").unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(dir.list().unwrap(), vec!["a".to_owned()]);
}

fn writes_append_and_read_back(backend: &dyn Backend) {
    let dir = backend.dir();
    let mut file = dir.create_new("a").unwrap();
    file.write_all(b"hello ").unwrap();
    file.sync_data().unwrap();
    drop(file);
    let mut again = dir.open_append("a").unwrap();
    again.write_all(b"world").unwrap();
    assert_eq!(again.size_bytes().unwrap(), 11);
    assert_eq!(dir.size_bytes("a").unwrap(), 11);
    let mut buf = [0u8; 5];
    again.read_exact_at(6, &mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(
        again.read_at(11, &mut buf).unwrap(),
        0,
        "reading at the end gives 0 bytes"
    );
    let err = again.read_exact_at(8, &mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    assert_eq!(fs::read_all(dir.as_ref(), "a").unwrap(), b"hello world");
}

fn write_at_overwrites_in_place(backend: &dyn Backend) {
    let dir = backend.dir();
    let mut file = dir.create_new("a").unwrap();
    file.write_all(&[0u8; 10]).unwrap();
    file.write_at(2, b"ab").unwrap(); // inside: overwrites, length unchanged
    assert_eq!(file.size_bytes().unwrap(), 10);
    file.write_at(12, b"cd").unwrap(); // past the end: the gap reads as zeros
    file.write_all(b"e").unwrap(); // appends after the new end
    file.sync_data().unwrap();
    drop(file);
    let mut again = dir.open_append("a").unwrap();
    again.write_at(0, b"z").unwrap();
    assert_eq!(
        fs::read_all(dir.as_ref(), "a").unwrap(),
        b"z\0ab\0\0\0\0\0\0\0\0cde"
    );
}

fn set_len_truncates_and_extends_with_zeros(backend: &dyn Backend) {
    let dir = backend.dir();
    let mut file = dir.create_new("a").unwrap();
    file.write_all(b"0123456789").unwrap();
    file.set_len(4).unwrap();
    file.write_all(b"xy").unwrap(); // appends after the cut
    file.set_len(8).unwrap();
    file.sync_data().unwrap();
    assert_eq!(fs::read_all(dir.as_ref(), "a").unwrap(), b"0123xy\0\0");
}

fn rename_replaces_the_target(backend: &dyn Backend) {
    let dir = backend.dir();
    backend.write_raw("old", b"old content");
    backend.write_raw("new", b"new content");
    dir.rename("new", "old").unwrap();
    dir.sync_dir().unwrap();
    assert_eq!(dir.list().unwrap(), vec!["old".to_owned()]);
    assert_eq!(fs::read_all(dir.as_ref(), "old").unwrap(), b"new content");
    assert_eq!(
        dir.rename("missing", "x").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

fn remove_and_missing_files(backend: &dyn Backend) {
    let dir = backend.dir();
    backend.write_raw("a", b"x");
    let reader = dir.open_read("a").unwrap();
    dir.remove("a").unwrap();
    dir.sync_dir().unwrap();
    assert!(dir.list().unwrap().is_empty());
    // An open handle outlives the name, as with unlink(2).
    let mut buf = [0u8; 1];
    reader.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"x");
    for err in [
        dir.remove("a").unwrap_err(),
        dir.open_read("a").unwrap_err(),
        dir.open_append("a").unwrap_err(),
        dir.size_bytes("a").unwrap_err(),
        dir.read_immutable("a").unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }
}

fn invalid_names_are_rejected(backend: &dyn Backend) {
    let dir = backend.dir();
    for name in ["", ".", "..", "a/b", "../escape"] {
        assert_eq!(
            dir.create_new(name).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{name:?}"
        );
    }
}

fn read_only_handles_do_not_write(backend: &dyn Backend) {
    let dir = backend.dir();
    backend.write_raw("a", b"x");
    let mut reader = dir.open_read("a").unwrap();
    assert!(reader.write_all(b"y").is_err());
    assert_eq!(fs::read_all(dir.as_ref(), "a").unwrap(), b"x");
}

fn read_immutable_sees_the_whole_file(backend: &dyn Backend) {
    let dir = backend.dir();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    backend.write_raw("big", &content);
    assert_eq!(&dir.read_immutable("big").unwrap()[..], &content[..]);
    backend.write_raw("empty", b"");
    assert!(dir.read_immutable("empty").unwrap().is_empty());
}

fn write_atomic_replaces_content(backend: &dyn Backend) {
    let dir = backend.dir();
    fs::write_atomic(dir.as_ref(), "ckpt", b"one").unwrap();
    fs::write_atomic(dir.as_ref(), "ckpt", b"two").unwrap();
    assert_eq!(fs::read_all(dir.as_ref(), "ckpt").unwrap(), b"two");
    assert_eq!(
        dir.list().unwrap(),
        vec!["ckpt".to_owned()],
        "no temporary file left"
    );
}

fn lock_is_exclusive(backend: &dyn Backend) {
    let dir = backend.dir();
    let held = dir.lock("LOCK").unwrap();
    assert_eq!(
        backend.dir().lock("LOCK").unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    drop(held);
    backend.dir().lock("LOCK").unwrap();
}
