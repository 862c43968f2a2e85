//! The zstd level of migration chunks, chosen from the link's measured bandwidth (wire
//! bytes per second while the senders had work). On a fast link (loopback, a LAN) the CPU
//! is the bottleneck and zstd's fastest level moves the most memory; on a slow WAN link
//! every byte saved is time saved, and higher levels pay off.
//!
//! Why not "raise the level when senders wait on their sockets": on one host, or with a
//! busy destination, a full socket means the *receiver* is short of CPU, and a higher
//! level would make everything slower. Bandwidth measured over wall time does not confuse
//! the two: a CPU-bound loopback migration still moves tens of MB/s.

/// Level at the start, and the lowest used: zstd's fastest, ~2x on typical guest memory.
pub const MIN_LEVEL: i32 = 1;
/// Highest level chosen: beyond it zstd slows much more than it gains on memory pages.
pub const MAX_LEVEL: i32 = 9;

/// Bandwidth thresholds (bytes per second) and the level used at or above each.
const STEPS: [(u64, i32); 3] = [
    // 200 Mbit/s and more: the senders' CPU, not the link, is what limits (a CPU-bound
    // migration between two VMMs sharing two cores still moves ~50 MB/s).
    (25_000_000, MIN_LEVEL),
    // 64 Mbit/s to 200 Mbit/s.
    (8_000_000, 3),
    // A few MB/s: DSL, congested WAN.
    (2_000_000, 6),
];

/// The level for a link measured at `wire_bps`; `None` (not measured yet) keeps level 1.
pub fn level_for_bandwidth(wire_bps: Option<u64>) -> i32 {
    let Some(bps) = wire_bps else {
        return MIN_LEVEL;
    };
    STEPS
        .iter()
        .find(|(min, _)| bps >= *min)
        .map_or(MAX_LEVEL, |&(_, level)| level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_links_get_the_fastest_level_and_slow_ones_compress_harder() {
        assert_eq!(level_for_bandwidth(None), MIN_LEVEL);
        assert_eq!(level_for_bandwidth(Some(1_000_000_000)), 1);
        assert_eq!(level_for_bandwidth(Some(25_000_000)), 1);
        assert_eq!(level_for_bandwidth(Some(10_000_000)), 3);
        assert_eq!(level_for_bandwidth(Some(5_000_000)), 6);
        assert_eq!(level_for_bandwidth(Some(100_000)), MAX_LEVEL);
    }
}
