//! The zstd level of migration chunks, chosen from what the senders measure: when senders
//! wait on the network more than they compress, the link is the bottleneck and a higher
//! level sends fewer bytes; when compressing takes longer than sending, the CPU is the
//! bottleneck and a lower level moves more. Loopback and fast LANs end at level 1; a slow
//! WAN link climbs towards [`MAX_LEVEL`].

/// Level at the start, and the lowest used: zstd's fastest, ~2x on typical guest memory.
pub const MIN_LEVEL: i32 = 1;
/// Highest level chosen: beyond it zstd slows much more than it gains on memory pages.
pub const MAX_LEVEL: i32 = 9;

/// One sender's time split since the last decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendTimes {
    pub compress_ns: u64,
    pub write_ns: u64,
}

/// Next level from the current one and the time senders spent compressing versus blocked
/// writing to their sockets. Needs a clear (2x) imbalance to move, so noise does not make
/// it oscillate; moves up by 2 (a slow link wants a quick response), down by 1.
pub fn next_level(current: i32, times: SendTimes) -> i32 {
    let SendTimes {
        compress_ns,
        write_ns,
    } = times;
    let level = if write_ns > compress_ns.saturating_mul(2) {
        current + 2
    } else if compress_ns > write_ns.saturating_mul(2) {
        current - 1
    } else {
        current
    };
    level.clamp(MIN_LEVEL, MAX_LEVEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(compress_ns: u64, write_ns: u64) -> SendTimes {
        SendTimes {
            compress_ns,
            write_ns,
        }
    }

    #[test]
    fn a_slow_link_raises_the_level_and_a_busy_cpu_lowers_it() {
        assert_eq!(next_level(1, t(10, 100)), 3);
        assert_eq!(next_level(3, t(100, 10)), 2);
        assert_eq!(next_level(3, t(100, 80)), 3, "balanced: stay");
    }

    #[test]
    fn the_level_stays_in_range() {
        assert_eq!(next_level(MAX_LEVEL, t(0, 1_000)), MAX_LEVEL);
        assert_eq!(next_level(MIN_LEVEL, t(1_000, 0)), MIN_LEVEL);
        assert_eq!(next_level(1, t(0, 0)), 1, "no data: stay");
    }
}
