//! Receiver rate limiting and the PID rate estimator (backpressure).
//!
//! A [`RateLimiter`] caps the records per second a receiver stores (it waits, so the
//! receiver stops reading and TCP flow control pushes back on the sender). Its rate is the
//! configured maximum, lowered by the [`PidRateEstimator`] when backpressure is on: after
//! every batch the estimator compares the rate the receiver was allowed with the rate the
//! batch was processed at, and with the backlog (scheduling delay), exactly as Spark's
//! `PIDRateEstimator`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::dstream::node::lock;

/// A smooth token-bucket limiter of records per second (0 = unlimited). Cheap when
/// unlimited: one atomic load.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: AtomicU64,
    /// When the next record may be stored.
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter at `rate_per_sec` (`None` for no limit).
    pub fn new(rate_per_sec: Option<u64>) -> Self {
        RateLimiter {
            rate_per_sec: AtomicU64::new(rate_per_sec.unwrap_or(0)),
            next_free: Mutex::new(None),
        }
    }

    /// The current rate (`None` if unlimited).
    pub fn rate(&self) -> Option<u64> {
        match self.rate_per_sec.load(Ordering::Relaxed) {
            0 => None,
            r => Some(r),
        }
    }

    /// Changes the rate (`None` for no limit).
    pub fn set_rate(&self, rate_per_sec: Option<u64>) {
        self.rate_per_sec
            .store(rate_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// How long to wait before storing `records` more records (and reserves them).
    pub fn reserve(&self, records: u64, now: Instant) -> Duration {
        let rate = self.rate_per_sec.load(Ordering::Relaxed);
        if rate == 0 || records == 0 {
            return Duration::ZERO;
        }
        let mut next_free = lock(&self.next_free);
        let start = next_free.map_or(now, |t| t.max(now));
        let cost = Duration::from_secs_f64(records as f64 / rate as f64);
        *next_free = Some(start + cost);
        start.saturating_duration_since(now)
    }

    /// Waits until `records` more records may be stored.
    pub async fn acquire(&self, records: u64) {
        let wait = self.reserve(records, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Spark's PID rate estimator (`spark.streaming.backpressure.pid.*`).
#[derive(Clone, Debug)]
pub struct PidRateEstimator {
    batch_interval_ms: u64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    latest: Option<Latest>,
}

#[derive(Clone, Copy, Debug)]
struct Latest {
    time_ms: u64,
    rate: f64,
    error: f64,
}

impl PidRateEstimator {
    /// An estimator with the given gains and floor.
    pub fn new(
        batch_interval_ms: u64,
        proportional: f64,
        integral: f64,
        derivative: f64,
        min_rate: u64,
    ) -> Self {
        PidRateEstimator {
            batch_interval_ms,
            proportional,
            integral,
            derivative,
            min_rate: min_rate as f64,
            latest: None,
        }
    }

    /// Feeds one completed batch (end time, records, processing and scheduling delay in
    /// ms); returns the new rate in records per second, if there is one. The first batch
    /// only seeds the estimator; batches with no records or no processing time are ignored.
    pub fn compute(
        &mut self,
        time_ms: u64,
        records: u64,
        processing_ms: u64,
        scheduling_ms: u64,
    ) -> Option<u64> {
        if records == 0 || processing_ms == 0 {
            return None;
        }
        if self.latest.is_some_and(|l| time_ms <= l.time_ms) {
            return None;
        }
        let processing_rate = records as f64 / processing_ms as f64 * 1_000.0;
        let Some(latest) = self.latest else {
            self.latest = Some(Latest {
                time_ms,
                rate: processing_rate,
                error: -1.0,
            });
            return None;
        };
        let delay_sec = (time_ms - latest.time_ms) as f64 / 1_000.0;
        let error = latest.rate - processing_rate;
        // The backlog, as records that should have been processed in one interval.
        let historical_error =
            scheduling_ms as f64 * processing_rate / self.batch_interval_ms as f64;
        let d_error = (error - latest.error) / delay_sec;
        let new_rate = (latest.rate
            - self.proportional * error
            - self.integral * historical_error
            - self.derivative * d_error)
            .max(self.min_rate);
        self.latest = Some(Latest {
            time_ms,
            rate: new_rate,
            error,
        });
        Some(new_rate.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_spaces_out_reservations() {
        let l = RateLimiter::new(Some(1_000));
        let now = Instant::now();
        assert_eq!(l.reserve(500, now), Duration::ZERO);
        let wait = l.reserve(500, now);
        assert!((499..=501).contains(&wait.as_millis()), "{wait:?}");
        l.set_rate(None);
        assert_eq!(l.reserve(1_000_000, now), Duration::ZERO);
    }

    #[test]
    fn pid_follows_spark() {
        // The numbers of Spark's PIDRateEstimatorSuite "with no accumulated or positive error,
        // |I| > 0, follow the processing speed".
        let mut p = PidRateEstimator::new(100, 1.0, 0.2, 0.0, 10);
        assert_eq!(
            p.compute(1_000, 20, 10, 0),
            None,
            "the first batch only seeds"
        );
        // Processing at 2000 rec/s, no backlog: the rate settles on the processing rate.
        assert_eq!(p.compute(2_000, 20, 10, 0), Some(2_000));
        // Processing slows to 1000 rec/s with a 100 ms backlog: rate drops below 1000.
        let r = p.compute(3_000, 10, 10, 100).unwrap();
        assert_eq!(r, 2_000 - 1_000 - 200);
        // Never below the floor.
        let r = p.compute(4_000, 1, 100, 10_000).unwrap();
        assert_eq!(r, 10);
        assert_eq!(p.compute(4_000, 1, 100, 0), None, "time must advance");
        assert_eq!(p.compute(5_000, 0, 100, 0), None, "no records, no estimate");
    }
}
