//! Named crash scenarios (see `common/scenarios.rs` for each story), against every backend
//! they apply to: damage written into real files and the simulated page cache alike, and
//! power losses on the simulated page cache (real files cannot lose their page cache in a
//! test; the real-process `kill -9` test is `kill9.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::Backend;
use common::scenarios::*;

macro_rules! on {
    ($module:ident = $make:expr; $($scenario:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    let backend = $make;
                    super::$scenario(&backend as &dyn Backend);
                }
            )*
        }
    };
}

mod every_backend {
    use super::*;
    on!(local = common::Local::new();
        torn_tail_after_last_sync_is_truncated,
        zero_filled_tail_is_truncated,
        corrupt_record_before_valid_records_fails_recovery,
        impossible_length_before_valid_records_fails_recovery,
        damage_at_the_end_of_a_sealed_segment_fails_recovery,
        missing_middle_segment_fails_recovery,
        torn_header_of_newest_segment_is_discarded,
        unreadable_header_followed_by_records_fails_recovery,
        segment_of_a_newer_format_version_is_refused,
        segment_copied_under_another_name_is_refused,
        record_with_a_valid_checksum_but_wrong_lsn_is_refused,
    );
    on!(local_preallocated = common::Local::preallocated();
        torn_tail_after_last_sync_is_truncated,
        zero_filled_tail_is_truncated,
        corrupt_record_before_valid_records_fails_recovery,
        impossible_length_before_valid_records_fails_recovery,
        damage_at_the_end_of_a_sealed_segment_fails_recovery,
        missing_middle_segment_fails_recovery,
        torn_header_of_newest_segment_is_discarded,
        unreadable_header_followed_by_records_fails_recovery,
        segment_of_a_newer_format_version_is_refused,
        segment_copied_under_another_name_is_refused,
        record_with_a_valid_checksum_but_wrong_lsn_is_refused,
    );
    on!(sim = common::Sim::new();
        torn_tail_after_last_sync_is_truncated,
        zero_filled_tail_is_truncated,
        corrupt_record_before_valid_records_fails_recovery,
        impossible_length_before_valid_records_fails_recovery,
        damage_at_the_end_of_a_sealed_segment_fails_recovery,
        missing_middle_segment_fails_recovery,
        torn_header_of_newest_segment_is_discarded,
        unreadable_header_followed_by_records_fails_recovery,
        segment_of_a_newer_format_version_is_refused,
        segment_copied_under_another_name_is_refused,
        record_with_a_valid_checksum_but_wrong_lsn_is_refused,
    );
    on!(sim_preallocated = common::Sim::preallocated();
        torn_tail_after_last_sync_is_truncated,
        zero_filled_tail_is_truncated,
        corrupt_record_before_valid_records_fails_recovery,
        impossible_length_before_valid_records_fails_recovery,
        damage_at_the_end_of_a_sealed_segment_fails_recovery,
        missing_middle_segment_fails_recovery,
        torn_header_of_newest_segment_is_discarded,
        unreadable_header_followed_by_records_fails_recovery,
        segment_of_a_newer_format_version_is_refused,
        segment_copied_under_another_name_is_refused,
        record_with_a_valid_checksum_but_wrong_lsn_is_refused,
    );
}

mod power_loss {
    use super::*;
    on!(sim = common::Sim::new();
        acknowledged_records_survive_power_loss_during_concurrent_appends,
        new_segment_is_durable_before_its_records_are_acknowledged,
        power_loss_keeps_a_prefix_of_unsynced_writes,
        failed_fsync_poisons_the_log_and_is_never_retried,
        failed_directory_fsync_poisons_the_log,
        full_disk_fails_appends_clearly_and_recovers_when_space_frees,
        crash_during_retention_leaves_a_contiguous_log,
        recycled_segments_never_resurface_after_power_loss,
    );
    on!(sim_preallocated = common::Sim::preallocated();
        acknowledged_records_survive_power_loss_during_concurrent_appends,
        new_segment_is_durable_before_its_records_are_acknowledged,
        power_loss_keeps_a_prefix_of_unsynced_writes,
        failed_fsync_poisons_the_log_and_is_never_retried,
        failed_directory_fsync_poisons_the_log,
        full_disk_fails_appends_clearly_and_recovers_when_space_frees,
        crash_during_retention_leaves_a_contiguous_log,
        recycled_segments_never_resurface_after_power_loss,
    );
}
