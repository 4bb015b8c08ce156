//! Every limit of a [`crate::Wal`], in one validated [`Config`], units last in the names.

use crate::error::{Error, Result};
use crate::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// When an append counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every record is written and `fdatasync`ed on its own before its append resolves.
    /// The slowest policy; one sync per record.
    EveryRecord,
    /// Group commit: concurrent appends share one `fdatasync`. An append resolves when a
    /// sync covering it has completed, so it is exactly as durable as with `EveryRecord`.
    ///
    /// The writer starts a group as soon as a record is queued and the previous sync has
    /// finished. When fewer records are queued than were in the previous group (appenders
    /// that were just acknowledged are likely to append again) it waits for more, at most
    /// a quarter of the previous sync's duration and at most `delay_us_max` microseconds,
    /// and closes the group once it holds `bytes_max` bytes. See the protocol in
    /// [`crate::writer`].
    GroupCommit {
        /// Longest a group waits for more records before it is written, in microseconds.
        delay_us_max: u64,
        /// Largest group written with one sync, in bytes of record frames (a single
        /// larger record still forms a group of its own).
        bytes_max: u64,
    },
    /// **Benchmarks only: loses acknowledged records on a crash.** Appends resolve once
    /// the record is written to the operating system, without any sync. Sealing a segment
    /// and closing the log still sync, and [`crate::Wal::sync`] forces one.
    UnsafeNoSync,
}

impl SyncPolicy {
    /// Group commit with the default window.
    pub const GROUP_COMMIT_DEFAULT: SyncPolicy = SyncPolicy::GroupCommit {
        delay_us_max: 100,
        bytes_max: 8 << 20,
    };
}

/// The limits of one [`crate::Wal`]. Construct with `Config { field: value,
/// ..Config::default() }`; [`crate::Wal::open`] calls [`Config::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest segment, header included. A segment that cannot take the next record is
    /// sealed and a new one started. Default 64 MiB.
    pub segment_size_max_bytes: u64,
    /// Largest record payload. Larger appends fail with [`Error::RecordTooLarge`].
    /// Default 16 MiB.
    pub record_size_max_bytes: u64,
    /// When an append resolves. Default: group commit.
    pub sync_policy: SyncPolicy,
    /// Most appends accepted but not yet resolved; further appenders wait (backpressure).
    /// Default 4096.
    pub appends_in_flight_max: u64,
    /// Most bytes (record frames) accepted but not yet resolved; further appenders wait.
    /// Default 64 MiB.
    pub append_bytes_in_flight_max: u64,
    /// Spacing of the in-memory offset index within a segment: a read by Lsn scans at
    /// most this many bytes (plus one record) after a binary search. Default 4 KiB, which
    /// costs 16 bytes of memory per 4 KiB of log.
    pub index_interval_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size_max_bytes: 64 << 20,
            record_size_max_bytes: 16 << 20,
            sync_policy: SyncPolicy::GROUP_COMMIT_DEFAULT,
            appends_in_flight_max: 4096,
            append_bytes_in_flight_max: 64 << 20,
            index_interval_bytes: 4096,
        }
    }
}

/// Upper bound on `record_size_max_bytes`: far below the format's 4 GiB length field,
/// and the most a single append may hold in memory.
pub const RECORD_SIZE_LIMIT_BYTES: u64 = 1 << 30;
/// Upper bound on `segment_size_max_bytes`.
pub const SEGMENT_SIZE_LIMIT_BYTES: u64 = 1 << 32;
/// Upper bound on the group-commit delay: one second.
pub const GROUP_COMMIT_DELAY_LIMIT_US: u64 = 1_000_000;

impl Config {
    /// Checks every limit and how they relate; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        let smallest_segment = (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN) as u64 + 1;
        check(
            "segment_size_max_bytes",
            self.segment_size_max_bytes,
            (smallest_segment..=SEGMENT_SIZE_LIMIT_BYTES).contains(&self.segment_size_max_bytes),
            format!("must be between {smallest_segment} and {SEGMENT_SIZE_LIMIT_BYTES}"),
        )?;
        check(
            "record_size_max_bytes",
            self.record_size_max_bytes,
            (1..=RECORD_SIZE_LIMIT_BYTES).contains(&self.record_size_max_bytes),
            format!("must be between 1 and {RECORD_SIZE_LIMIT_BYTES}"),
        )?;
        let largest_frame = self.record_size_max_bytes + RECORD_HEADER_LEN as u64;
        check(
            "record_size_max_bytes",
            self.record_size_max_bytes,
            SEGMENT_HEADER_LEN as u64 + largest_frame <= self.segment_size_max_bytes,
            format!(
                "a largest record ({largest_frame} bytes framed) must fit in an empty segment \
                 (segment_size_max_bytes = {}, header {SEGMENT_HEADER_LEN} bytes)",
                self.segment_size_max_bytes
            ),
        )?;
        check(
            "appends_in_flight_max",
            self.appends_in_flight_max,
            (1..=1 << 20).contains(&self.appends_in_flight_max),
            "must be between 1 and 1048576".to_owned(),
        )?;
        check(
            "append_bytes_in_flight_max",
            self.append_bytes_in_flight_max,
            (largest_frame..=1 << 40).contains(&self.append_bytes_in_flight_max),
            format!(
                "must hold at least one largest record ({largest_frame} bytes framed) and be \
                 at most 1 TiB"
            ),
        )?;
        check(
            "index_interval_bytes",
            self.index_interval_bytes,
            (1..=self.segment_size_max_bytes).contains(&self.index_interval_bytes),
            "must be between 1 and segment_size_max_bytes".to_owned(),
        )?;
        if let SyncPolicy::GroupCommit {
            delay_us_max,
            bytes_max,
        } = self.sync_policy
        {
            check(
                "sync_policy.delay_us_max",
                delay_us_max,
                delay_us_max <= GROUP_COMMIT_DELAY_LIMIT_US,
                format!("must be at most {GROUP_COMMIT_DELAY_LIMIT_US} (one second)"),
            )?;
            check(
                "sync_policy.bytes_max",
                bytes_max,
                (1..=1 << 40).contains(&bytes_max),
                "must be between 1 and 1 TiB".to_owned(),
            )?;
        }
        Ok(())
    }
}

fn check(setting: &'static str, value: u64, ok: bool, reason: String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            setting,
            value: value.to_string(),
            reason,
        })
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
    fn errors_name_the_setting() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    segment_size_max_bytes: 10,
                    ..Config::default()
                },
                "segment_size_max_bytes",
            ),
            (
                Config {
                    record_size_max_bytes: 0,
                    ..Config::default()
                },
                "record_size_max_bytes",
            ),
            (
                Config {
                    record_size_max_bytes: 64 << 20,
                    ..Config::default()
                },
                "record_size_max_bytes",
            ),
            (
                Config {
                    appends_in_flight_max: 0,
                    ..Config::default()
                },
                "appends_in_flight_max",
            ),
            (
                Config {
                    append_bytes_in_flight_max: 1024,
                    ..Config::default()
                },
                "append_bytes_in_flight_max",
            ),
            (
                Config {
                    index_interval_bytes: 0,
                    ..Config::default()
                },
                "index_interval_bytes",
            ),
            (
                Config {
                    sync_policy: SyncPolicy::GroupCommit {
                        delay_us_max: 5_000_000,
                        bytes_max: 1,
                    },
                    ..Config::default()
                },
                "sync_policy.delay_us_max",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidConfig { setting: s, .. } if *s == setting),
                "{setting}: {err}"
            );
            assert!(err.to_string().contains(setting), "{err}");
        }
    }
}
