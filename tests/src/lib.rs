//! The crash-injection suite: harness code shared by the tests in `tests/tests/`.
//!
//! The tests here use only the public APIs of the other crates and the `ember` binary.

pub mod batch_recorder;
pub mod faults;
pub mod kafka_pipeline;
pub mod moto;
pub mod processes;
pub mod servers;
pub mod wordcount_kills;
