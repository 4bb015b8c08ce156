//! Ember's engine: the `DStream` API, the micro-batch scheduler, sources and sinks.
//!
//! Not built yet: this crate is the subject of the engine issue. It also holds the
//! `ember` command-line tool (`src/bin/ember/`). See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod workload;
