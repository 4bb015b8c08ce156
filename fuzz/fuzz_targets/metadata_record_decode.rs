//! The driver metadata log's records (`engine::durability::metadata`), read back from a WAL
//! on every restart: arbitrary bytes never panic the decoder or the replay of what decodes,
//! and a decoded record re-encodes to bytes that decode to the same record.
#![no_main]

use engine::durability::metadata::{Mirror, decode, encode};
use libfuzzer_sys::fuzz_target;
use wal::Lsn;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode("fuzz", Lsn::new(1), data) else {
        return;
    };
    let again = encode(&record).expect("a decoded record encodes");
    assert_eq!(
        decode("fuzz", Lsn::new(1), &again).expect("re-encoded decodes"),
        record
    );
    // Replay applies whatever the log holds; a record with odd contents must not panic it.
    let mut mirror = Mirror::default();
    mirror.apply(&record);
});
