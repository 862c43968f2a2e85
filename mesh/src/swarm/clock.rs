//! The drivers' clocks. Pure cores take time as a `Duration`: since the driver's [`Epoch`]
//! (a process-local start; the simulator's is virtual zero), or, where a time is compared
//! across machines (signed records' expiry), since the unix epoch ([`unix_now`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The instant a driver's time counts from, on tokio's clock (the real one, or a test's paused
/// one).
#[derive(Clone, Copy, Debug)]
pub struct Epoch(Instant);

impl Epoch {
    /// An epoch starting now.
    pub fn start() -> Epoch {
        Epoch(Instant::now())
    }

    /// Time since the epoch.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }

    /// The instant `since` after the epoch (for timers: a core's next deadline).
    pub fn instant(&self, since: Duration) -> Instant {
        self.0 + since
    }
}

/// The wall clock since the unix epoch (zero if it reads before 1970: everything then looks
/// issued in the future and is refused).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_time_and_instants_agree() {
        let epoch = Epoch::start();
        let a = epoch.now();
        let b = epoch.now();
        assert!(b >= a);
        assert!(epoch.instant(b) <= Instant::now());
        assert!(unix_now() > Duration::from_secs(1_600_000_000));
    }
}
