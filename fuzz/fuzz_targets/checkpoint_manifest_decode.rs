//! Fuzzes the checkpoint decoder: never panic on arbitrary bytes, and for any checkpoint
//! the decoder accepts, encoding it again gives bytes that decode to the same value.
//!
//! The input is tried twice: as a whole checkpoint file (envelope and body), and as a body
//! sealed in a valid envelope, so the fuzzer reaches the JSON parser and the validation
//! rules without having to forge a CRC.
#![no_main]

use checkpoint::StoredCheckpoint;
use checkpoint::format::{self, Kind};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(decoded) = StoredCheckpoint::decode("fuzz", bytes) {
        let encoded = decoded.encode();
        let again = StoredCheckpoint::decode("fuzz", &encoded)
            .expect("a decoded checkpoint must encode to bytes that decode");
        assert_eq!(again, decoded, "encode-then-decode changed the checkpoint");
        assert_eq!(again.encode(), encoded, "encoding is not deterministic");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&format::seal(Kind::Checkpoint, data));
    let _ = format::open(Kind::Snapshot, "fuzz", data);
});
