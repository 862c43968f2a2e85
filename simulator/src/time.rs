//! Virtual time: microseconds since the start of a run.
//!
//! Integer microseconds (not floats) so that the order of events, and so every output, is
//! the same on every machine and every run with the same seed.

use std::ops::Add;

/// An instant of a run's virtual time, in microseconds since its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimTime(pub u64);

/// A span of virtual time, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimDuration(pub u64);

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);

    /// The span from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: SimTime) -> SimDuration {
        SimDuration(self.0.saturating_sub(earlier.0))
    }
}

impl SimDuration {
    pub const ZERO: SimDuration = SimDuration(0);

    pub fn from_millis(ms: u64) -> SimDuration {
        SimDuration(ms.saturating_mul(1_000))
    }

    /// `ms` milliseconds, rounded to the microsecond (negative and NaN: zero).
    pub fn from_millis_f64(ms: f64) -> SimDuration {
        if ms.is_nan() || ms <= 0.0 {
            return SimDuration::ZERO;
        }
        SimDuration((ms * 1_000.0).round().min(u64::MAX as f64) as u64)
    }

    pub fn as_millis_f64(self) -> f64 {
        self.0 as f64 / 1e3
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl Add<SimDuration> for SimTime {
    type Output = SimTime;
    fn add(self, d: SimDuration) -> SimTime {
        SimTime(self.0.saturating_add(d.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_and_saturate() {
        assert_eq!(SimDuration::from_millis(200).0, 200_000);
        assert_eq!(SimDuration::from_millis_f64(0.0015).0, 2);
        assert_eq!(SimDuration::from_millis_f64(-3.0), SimDuration::ZERO);
        assert_eq!(SimDuration::from_millis_f64(f64::NAN), SimDuration::ZERO);
        assert_eq!((SimTime(u64::MAX) + SimDuration(5)).0, u64::MAX);
        assert_eq!(SimTime(5).since(SimTime(9)), SimDuration::ZERO);
        assert_eq!(SimTime(9).since(SimTime(5)), SimDuration(4));
    }
}
