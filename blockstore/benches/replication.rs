//! Placeholder, replaced by the replication benchmark.
fn main() {}
