//! Every limit of a checkpoint store, in one validated [`Config`].

use crate::error::{Error, Result};

/// The settings of a [`crate::CheckpointStore`]. Validated when the store opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How many valid checkpoints to keep ("keep the last N"), the newest included. Older
    /// ones are deleted after each publish; corrupt ones newer than the N-th valid one are
    /// kept (for inspection) until they age out. At least 1; 2 or more lets a restart fall
    /// back when the newest is damaged. Default 3.
    pub checkpoints_retained: usize,
    /// The largest checkpoint file, envelope included, that is written or read. A bigger
    /// one is refused with [`Error::TooLarge`] naming this setting. Default 64 MiB.
    pub checkpoint_size_max_bytes: u64,
    /// The largest state snapshot, envelope included, that is written or read. Default
    /// 1 GiB.
    pub snapshot_size_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            checkpoints_retained: 3,
            checkpoint_size_max_bytes: 64 << 20,
            snapshot_size_max_bytes: 1 << 30,
        }
    }
}

/// Bounds that keep the settings meaningful: a store that keeps thousands of checkpoints
/// reads them all when it opens, and a limit beyond the address space cannot be honoured.
const CHECKPOINTS_RETAINED_MAX: usize = 1000;
const SIZE_MIN_BYTES: u64 = 1 << 10;
const SIZE_MAX_BYTES: u64 = 1 << 40;

impl Config {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if !(1..=CHECKPOINTS_RETAINED_MAX).contains(&self.checkpoints_retained) {
            return Err(Error::InvalidConfig {
                setting: "checkpoints_retained",
                value: self.checkpoints_retained.to_string(),
                reason: format!("must be between 1 and {CHECKPOINTS_RETAINED_MAX}"),
            });
        }
        for (setting, value) in [
            ("checkpoint_size_max_bytes", self.checkpoint_size_max_bytes),
            ("snapshot_size_max_bytes", self.snapshot_size_max_bytes),
        ] {
            if !(SIZE_MIN_BYTES..=SIZE_MAX_BYTES).contains(&value)
                || usize::try_from(value).is_err()
            {
                return Err(Error::InvalidConfig {
                    setting,
                    value: value.to_string(),
                    reason: format!(
                        "must be between {SIZE_MIN_BYTES} and {SIZE_MAX_BYTES} bytes (and fit in memory)"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let err = Config {
            checkpoints_retained: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("checkpoints_retained = 0"),
            "{err}"
        );
        let err = Config {
            snapshot_size_max_bytes: 10,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("snapshot_size_max_bytes = 10"),
            "{err}"
        );
    }
}
