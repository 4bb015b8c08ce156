//! Batch times and the batch grid.
//!
//! A batch time is a point on a fixed grid: `zero + k * interval` for `k >= 1`, in
//! milliseconds since the Unix epoch (the same unit Spark uses, so output directories are
//! named alike: `prefix-<batch time ms>`). The batch at time `t` holds the data received in
//! `(t - interval, t]`. The grid is fixed for the life of a pipeline, across restarts: a
//! restarted pipeline re-runs its pending batches at their original times.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A batch time in milliseconds since the Unix epoch (see the module docs).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BatchTime(u64);

impl BatchTime {
    /// The batch time `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        BatchTime(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`.
    pub const fn plus_millis(self, ms: u64) -> Self {
        BatchTime(self.0 + ms)
    }

    /// `self - ms`, or `None` before the epoch.
    pub const fn checked_minus_millis(self, ms: u64) -> Option<Self> {
        match self.0.checked_sub(ms) {
            Some(t) => Some(BatchTime(t)),
            None => None,
        }
    }

    /// `self - ms`, saturating at the epoch.
    pub const fn saturating_minus_millis(self, ms: u64) -> Self {
        BatchTime(self.0.saturating_sub(ms))
    }

    /// Whether `self` lies on the grid `zero + k * step` (k >= 0).
    pub const fn is_on_grid(self, zero: BatchTime, step_ms: u64) -> bool {
        self.0 >= zero.0 && (self.0 - zero.0).is_multiple_of(step_ms)
    }
}

impl fmt::Display for BatchTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

/// Milliseconds of a duration, saturating (durations in the API are whole milliseconds).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_membership() {
        let zero = BatchTime::from_millis(1_000);
        assert!(BatchTime::from_millis(1_000).is_on_grid(zero, 500));
        assert!(BatchTime::from_millis(3_000).is_on_grid(zero, 500));
        assert!(!BatchTime::from_millis(3_001).is_on_grid(zero, 500));
        assert!(!BatchTime::from_millis(500).is_on_grid(zero, 500));
        assert_eq!(BatchTime::from_millis(5).checked_minus_millis(6), None);
        assert_eq!(
            BatchTime::from_millis(5)
                .saturating_minus_millis(6)
                .as_millis(),
            0
        );
        assert_eq!(BatchTime::from_millis(7).to_string(), "7 ms");
    }
}
