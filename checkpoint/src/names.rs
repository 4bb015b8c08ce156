//! The naming rule: which names in a checkpoint location are checkpoints, which are state
//! snapshots, and how the newest checkpoint is found from a listing alone.
//!
//! ```text
//! checkpoint-<sequence, 20 decimal digits>.ckpt       e.g. checkpoint-00000000000000000042.ckpt
//! state-<taken at ms, 20 digits>-<crc32, 8 lowercase hex>-<operator id>.snap
//! <either of the above>.tmp                            a local publish in progress (never read)
//! checkpoint.lock                                      the local writer lock
//! ```
//!
//! - A checkpoint's *sequence* is 1 for the first publish to a location and one more than
//!   the highest sequence present for every later one. **The newest checkpoint is the one
//!   with the highest sequence**; the zero-padded digits make name order equal sequence
//!   order, so an object-store listing (sorted by key) finds it without a pointer object.
//! - Names are written once, with create-only semantics (local: checked under the writer
//!   lock; object stores: a conditional put), and never rewritten. Two writers that pick the
//!   same sequence collide, and the second gets [`crate::Error::Conflict`].
//! - Why a sequence and not the batch time: batch times repeat (a checkpoint before and
//!   after a batch) and go backwards (after a restart falls back past a damaged checkpoint,
//!   it republishes older batch times), while "newest" must mean "published last". The batch
//!   time is inside the checkpoint; [`crate::CheckpointStore::describe`] shows it.
//! - A snapshot's name carries the batch time it was taken at, the CRC-32 of its body and
//!   the operator: the same state of the same operator at the same batch (a recomputation
//!   after a restart) gets the same name, different state gets a different name, so a name
//!   is never rewritten with other bytes.
//! - Any other name is not ours and is ignored (a location may be shared, for example with
//!   the driver's metadata log).

/// Prefix of checkpoint names.
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// Suffix of checkpoint names.
pub const CHECKPOINT_SUFFIX: &str = ".ckpt";
/// Prefix of snapshot names.
pub const SNAPSHOT_PREFIX: &str = "state-";
/// Suffix of snapshot names.
pub const SNAPSHOT_SUFFIX: &str = ".snap";
/// Suffix of a local publish in progress ([`wal::fs::write_atomic`]'s temporary file).
pub const TEMP_SUFFIX: &str = ".tmp";
/// The writer lock of a local checkpoint directory.
pub const LOCK_NAME: &str = "checkpoint.lock";

const SEQ_DIGITS: usize = 20;
const CRC_DIGITS: usize = 8;

/// The name of checkpoint number `seq`.
pub fn checkpoint_name(seq: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{seq:020}{CHECKPOINT_SUFFIX}")
}

/// The sequence of a checkpoint name; `None` for any other name (temporary files included).
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(CHECKPOINT_PREFIX)?
        .strip_suffix(CHECKPOINT_SUFFIX)?;
    parse_digits(digits, SEQ_DIGITS)
}

/// What a snapshot's name says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotName {
    /// The batch time it was taken at.
    pub taken_at_ms: u64,
    /// CRC-32 of its body.
    pub crc32: u32,
    /// The operator whose state it is.
    pub operator: String,
}

/// The name of a snapshot. `operator` must pass [`crate::model::check_operator_id`].
pub fn snapshot_name(operator: &str, taken_at_ms: u64, crc32: u32) -> String {
    format!("{SNAPSHOT_PREFIX}{taken_at_ms:020}-{crc32:08x}-{operator}{SNAPSHOT_SUFFIX}")
}

/// Parses a snapshot name; `None` for any other name.
pub fn parse_snapshot_name(name: &str) -> Option<SnapshotName> {
    let rest = name
        .strip_prefix(SNAPSHOT_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?;
    let (time, rest) = rest.split_at_checked(SEQ_DIGITS)?;
    let rest = rest.strip_prefix('-')?;
    let (crc, rest) = rest.split_at_checked(CRC_DIGITS)?;
    let operator = rest.strip_prefix('-')?;
    let crc_ok = crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !crc_ok || crate::model::check_operator_id(operator).is_err() {
        return None;
    }
    Some(SnapshotName {
        taken_at_ms: parse_digits(time, SEQ_DIGITS)?,
        crc32: u32::from_str_radix(crc, 16).ok()?,
        operator: operator.to_owned(),
    })
}

/// True for the temporary file of an interrupted local publish of one of our names.
pub fn is_temporary(name: &str) -> bool {
    name.strip_suffix(TEMP_SUFFIX).is_some_and(|stem| {
        parse_checkpoint_name(stem).is_some() || parse_snapshot_name(stem).is_some()
    })
}

fn parse_digits(digits: &str, len: usize) -> Option<u64> {
    if digits.len() != len || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks that `name` is a plain name inside the location (no `/`, not `.` or `..`).
pub(crate) fn check_plain_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!("{name:?} is not a plain name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_are_fixed_width_and_round_trip() {
        assert_eq!(checkpoint_name(42), "checkpoint-00000000000000000042.ckpt");
        assert_eq!(
            checkpoint_name(u64::MAX),
            "checkpoint-18446744073709551615.ckpt"
        );
        for seq in [0, 1, 9, 10, 12345, u64::MAX] {
            assert_eq!(parse_checkpoint_name(&checkpoint_name(seq)), Some(seq));
        }
        // Name order is sequence order: what an object-store listing relies on.
        let mut names: Vec<String> = [10u64, 9, 100, 1]
            .iter()
            .map(|s| checkpoint_name(*s))
            .collect();
        names.sort();
        let seqs: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_checkpoint_name(n))
            .collect();
        assert_eq!(seqs, vec![1, 9, 10, 100]);
    }

    #[test]
    fn other_names_are_not_checkpoints() {
        for name in [
            "checkpoint-42.ckpt",
            "checkpoint-00000000000000000042.ckpt.tmp",
            "checkpoint-0000000000000000004x.ckpt",
            "checkpoint-+0000000000000000042.ckpt",
            "checkpoint-99999999999999999999.ckpt", // more than u64::MAX
            "checkpoint.lock",
            "metadata",
            "",
        ] {
            assert_eq!(parse_checkpoint_name(name), None, "{name}");
        }
    }

    #[test]
    fn snapshot_names_round_trip() {
        let name = snapshot_name("op-1.a_b", 1_700_000_000_000, 0xdead_beef);
        assert_eq!(name, "state-00000001700000000000-deadbeef-op-1.a_b.snap");
        assert_eq!(
            parse_snapshot_name(&name),
            Some(SnapshotName {
                taken_at_ms: 1_700_000_000_000,
                crc32: 0xdead_beef,
                operator: "op-1.a_b".to_owned()
            })
        );
        for bad in [
            "state-00000001700000000000-DEADBEEF-op.snap",
            "state-00000001700000000000-deadbeef-.snap",
            "state-00000001700000000000-deadbeef-a/b.snap",
            "state-1700000000000-deadbeef-op.snap",
            "state-00000001700000000000-deadbeef-op.snap.tmp",
        ] {
            assert_eq!(parse_snapshot_name(bad), None, "{bad}");
        }
        assert!(is_temporary(&format!("{name}.tmp")));
        assert!(is_temporary("checkpoint-00000000000000000001.ckpt.tmp"));
        assert!(!is_temporary("other.tmp"));
    }
}
