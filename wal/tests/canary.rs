//! The canary: the power-loss scenarios must *fail* on a store that skips fsync.
//!
//! If they passed, they would not be testing durability at all (the classic gap: a test
//! file system whose sync does nothing and never loses anything). The store here is the
//! same simulated page cache, behind a `Dir` whose `sync_data` and `sync_dir` return `Ok`
//! without doing anything.
#![allow(clippy::unwrap_used)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::scenarios::*;
use common::{Backend, SkipSync};
use wal::fs::SimDir;

/// Runs a scenario and reports whether it failed (panicked), keeping its panic message.
fn fails(scenario: fn(&dyn Backend)) -> Option<String> {
    let backend = SkipSync { sim: SimDir::new() };
    catch_unwind(AssertUnwindSafe(|| scenario(&backend)))
        .err()
        .map(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
                .chars()
                .take(400)
                .collect()
        })
}

#[test]
fn crash_suite_fails_on_a_store_that_skips_fsync() {
    // The failing scenarios print their panics; keep the output readable by silencing
    // the default hook while they run (this binary runs only this test).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let results = [
        (
            "acknowledged_records_survive_power_loss_during_concurrent_appends",
            fails(acknowledged_records_survive_power_loss_during_concurrent_appends),
        ),
        (
            "new_segment_is_durable_before_its_records_are_acknowledged",
            fails(new_segment_is_durable_before_its_records_are_acknowledged),
        ),
        (
            "power_loss_keeps_a_prefix_of_unsynced_writes",
            fails(power_loss_keeps_a_prefix_of_unsynced_writes),
        ),
    ];
    std::panic::set_hook(hook);
    for (name, failure) in &results {
        eprintln!(
            "canary: {name}: {}",
            failure
                .as_deref()
                .map_or("passed".to_owned(), |m| format!("failed as it must: {m}"))
        );
    }
    // Every scenario whose point is "acknowledged means durable" must notice.
    assert!(
        results[0].1.is_some(),
        "concurrent power-loss scenario passed without fsync"
    );
    assert!(
        results[1].1.is_some(),
        "segment-creation scenario passed without directory fsync"
    );
    assert!(
        results[2].1.is_some(),
        "unsynced-prefix scenario passed without fsync"
    );
}
