//! A segmented, CRC-checked write-ahead log of opaque records addressed by `Lsn`.
//!
//! Not built yet: this crate is the subject of the WAL issue. See ARCHITECTURE.md.
#![forbid(unsafe_code)]
