//! Time windows: the hours of the day VMs may run, as BOINC's `start_hour`/`end_hour` and
//! its per-weekday `day_prefs`.
//!
//! Whole hours only (BOINC accepts fractions; a YAML integer keeps the config exact). The
//! window of the current weekday decides, also for a window that wraps past midnight:
//! Monday 22-7 and Tuesday 9-17 means Tuesday 0:00-7:00 is outside (Tuesday's own window
//! applies), as in BOINC.

use serde::Deserialize;

use super::policy_error::PolicyError;

/// From `start` to `end` (hours, 0-24, local time). `end < start` wraps past midnight;
/// `start == end` (and 0-24) is always; 24-0 is never.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    pub start_hour: u8,
    pub end_hour: u8,
}

impl TimeWindow {
    pub const fn new(start_hour: u8, end_hour: u8) -> Self {
        TimeWindow {
            start_hour,
            end_hour,
        }
    }

    pub fn is_always(self) -> bool {
        self.start_hour == self.end_hour || (self.start_hour == 0 && self.end_hour == 24)
    }

    /// Whether `hour:minute` is inside (start inclusive, end exclusive).
    pub fn contains(self, hour: u8, minute: u8) -> bool {
        if self.is_always() {
            return true;
        }
        let now = u32::from(hour) * 60 + u32::from(minute);
        let start = u32::from(self.start_hour) * 60;
        let end = u32::from(self.end_hour) * 60;
        if start < end {
            start <= now && now < end
        } else {
            now >= start || now < end
        }
    }

    /// `Err((0 = start / 1 = end, reason))` when an hour is past 24.
    pub(super) fn check(self) -> Result<(), (u8, String)> {
        for (which, h) in [(0, self.start_hour), (1, self.end_hour)] {
            if h > 24 {
                return Err((which, format!("{h} is not an hour from 0 to 24")));
            }
        }
        Ok(())
    }
}

/// Windows that replace the everyday one on their weekday.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DayWindows {
    pub sun: Option<TimeWindow>,
    pub mon: Option<TimeWindow>,
    pub tue: Option<TimeWindow>,
    pub wed: Option<TimeWindow>,
    pub thu: Option<TimeWindow>,
    pub fri: Option<TimeWindow>,
    pub sat: Option<TimeWindow>,
}

/// The config keys of each day's hours, by `tm_wday`.
const KEYS: [[&str; 2]; 7] = [
    [
        "politeness.days.sun.startHour",
        "politeness.days.sun.endHour",
    ],
    [
        "politeness.days.mon.startHour",
        "politeness.days.mon.endHour",
    ],
    [
        "politeness.days.tue.startHour",
        "politeness.days.tue.endHour",
    ],
    [
        "politeness.days.wed.startHour",
        "politeness.days.wed.endHour",
    ],
    [
        "politeness.days.thu.startHour",
        "politeness.days.thu.endHour",
    ],
    [
        "politeness.days.fri.startHour",
        "politeness.days.fri.endHour",
    ],
    [
        "politeness.days.sat.startHour",
        "politeness.days.sat.endHour",
    ],
];

impl DayWindows {
    /// The override of `weekday` (0 = Sunday .. 6 = Saturday).
    pub fn get(&self, weekday: u8) -> Option<TimeWindow> {
        match weekday {
            0 => self.sun,
            1 => self.mon,
            2 => self.tue,
            3 => self.wed,
            4 => self.thu,
            5 => self.fri,
            6 => self.sat,
            _ => None,
        }
    }

    pub(super) fn check(&self) -> Result<(), PolicyError> {
        for (day, keys) in KEYS.iter().enumerate() {
            if let Some(w) = self.get(day as u8) {
                w.check().map_err(|(which, reason)| PolicyError {
                    key: keys[usize::from(which)],
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_window_is_start_inclusive_end_exclusive() {
        let w = TimeWindow::new(9, 17);
        assert!(!w.contains(8, 59));
        assert!(w.contains(9, 0));
        assert!(w.contains(16, 59));
        assert!(!w.contains(17, 0));
        assert!(!w.contains(23, 30));
    }

    #[test]
    fn window_wraps_past_midnight() {
        let w = TimeWindow::new(22, 7);
        assert!(w.contains(22, 0));
        assert!(w.contains(23, 59));
        assert!(w.contains(0, 0));
        assert!(w.contains(6, 59));
        assert!(!w.contains(7, 0));
        assert!(!w.contains(12, 0));
        assert!(!w.contains(21, 59));
    }

    #[test]
    fn always_and_never() {
        for w in [
            TimeWindow::new(0, 0),
            TimeWindow::new(5, 5),
            TimeWindow::new(0, 24),
        ] {
            assert!(w.is_always());
            assert!((0..24).all(|h| w.contains(h, 30)), "{w:?}");
        }
        let never = TimeWindow::new(24, 0);
        assert!(!never.is_always());
        assert!((0..24).all(|h| !never.contains(h, 0) && !never.contains(h, 59)));
    }

    #[test]
    fn day_overrides_and_their_keys() {
        let days = DayWindows {
            sat: Some(TimeWindow::new(0, 24)),
            wed: Some(TimeWindow::new(3, 99)),
            ..DayWindows::default()
        };
        assert_eq!(days.get(6), Some(TimeWindow::new(0, 24)));
        assert_eq!(days.get(1), None);
        assert_eq!(days.get(7), None);
        let err = days.check().unwrap_err();
        assert_eq!(err.key, "politeness.days.wed.endHour");
        assert!(err.reason.contains("99"), "{err}");
    }
}
