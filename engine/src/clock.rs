//! Time for the scheduler driver: the system clock, or a manual one for tests.
//!
//! The scheduler core never reads a clock; the driver asks a [`Clock`] for the time and
//! sleeps on it until the next batch time. With a [`ManualClock`] a test moves time forward
//! explicitly, so a schedule of many batch intervals runs in milliseconds and without races.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A boxed, sendable future (the shape of [`Clock::sleep_until`]).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A source of time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now_ms(&self) -> u64;

    /// A future that completes once `now_ms() >= deadline_ms`.
    fn sleep_until(&self, deadline_ms: u64) -> BoxFuture<()>;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_epoch_ms()
    }

    fn sleep_until(&self, deadline_ms: u64) -> BoxFuture<()> {
        Box::pin(async move {
            // Re-check after waking: the wall clock may have been stepped while we slept,
            // and tokio's timer runs on the monotonic clock.
            loop {
                let now = now_epoch_ms();
                if now >= deadline_ms {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(deadline_ms - now)).await;
            }
        })
    }
}

/// Milliseconds since the Unix epoch on the system clock.
pub fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told to. Cloning shares the clock.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<u64>>,
}

impl ManualClock {
    /// A manual clock showing `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now: Arc::new(watch::Sender::new(start_ms)),
        }
    }

    /// Moves the clock forward by `ms`, waking every sleeper whose deadline has come.
    pub fn advance(&self, ms: u64) {
        self.now.send_modify(|now| *now += ms);
    }

    /// Sets the clock to `ms` (never backwards: an earlier time is ignored).
    pub fn set(&self, ms: u64) {
        self.now.send_modify(|now| *now = (*now).max(ms));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_ms: u64) -> BoxFuture<()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= deadline_ms {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock is gone: time never moves again.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new(1_000);
        let sleeper = tokio::spawn(clock.sleep_until(1_500));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(499);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(1);
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke")
            .expect("sleeper ran");
        clock.set(10);
        assert_eq!(clock.now_ms(), 1_500, "a manual clock never goes backwards");
    }

    #[tokio::test]
    async fn system_clock_sleeps_until_the_deadline() {
        let clock = SystemClock;
        let deadline = clock.now_ms() + 20;
        clock.sleep_until(deadline).await;
        assert!(clock.now_ms() >= deadline);
    }
}
