//! Local wall-clock time with the C library's time zone rules (`localtime_r`, `TZ` or
//! /etc/localtime).

use std::time::SystemTime;

use crate::policy::politeness::observation::LocalTime;

/// `t` in local time; None when the C library cannot convert it.
pub fn local_time(t: SystemTime) -> Option<LocalTime> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => libc::time_t::try_from(d.as_secs()).ok()?,
        Err(e) => -libc::time_t::try_from(e.duration().as_secs()).ok()?,
    };
    // SAFETY: tm is plain old data; all zeros is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the reentrant variant.
    let out = unsafe { libc::localtime_r(&secs, &mut tm) };
    if out.is_null() {
        return None;
    }
    Some(LocalTime {
        weekday: u8::try_from(tm.tm_wday).ok().filter(|d| *d < 7)?,
        hour: u8::try_from(tm.tm_hour).ok().filter(|h| *h < 24)?,
        minute: u8::try_from(tm.tm_min).ok().filter(|m| *m < 60)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn converts_in_range_and_a_week_later_is_the_same_weekday() {
        // 2024-01-10 12:00 UTC: far from any daylight-saving change in most zones.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_888_000);
        let a = local_time(t).unwrap();
        let b = local_time(t + Duration::from_secs(7 * 86_400)).unwrap();
        assert!(a.weekday < 7 && a.hour < 24 && a.minute < 60, "{a:?}");
        assert_eq!(a, b);
        let c = local_time(t + Duration::from_secs(86_400)).unwrap();
        assert_eq!(c.weekday, (a.weekday + 1) % 7);
        assert!(local_time(SystemTime::now()).is_some());
    }
}
