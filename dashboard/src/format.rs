//! Numbers for people: bytes, rates, durations and ages.

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Bytes per second.
pub fn rate(bytes_per_s: f64) -> String {
    format!("{}/s", bytes(bytes_per_s.max(0.0) as u64))
}

/// Mebibytes as memory is configured: `2048` → `2.0 GiB`.
pub fn mib(n: u64) -> String {
    bytes(n.saturating_mul(1 << 20))
}

/// A duration in milliseconds: `850 ms`, `12.5 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{} h {} min", s / 3600, s / 60 % 60),
        _ => format!("{} d {} h", s / 86_400, s / 3600 % 24),
    }
}

/// How long ago `then_ms` was at `now_ms`: `just now`, `5 s ago`, `3 min ago`.
pub fn age(then_ms: u64, now_ms: u64) -> String {
    let d = now_ms.saturating_sub(then_ms);
    if d < 1_000 {
        "just now".into()
    } else {
        format!("{} ago", duration_ms(d / 1000 * 1000).replace(".0 s", " s"))
    }
}

/// A PeerId shortened for tables: its last 8 characters after an ellipsis.
pub fn short_peer(peer: &str) -> String {
    let n = peer.chars().count();
    if n <= 12 {
        peer.to_string()
    } else {
        let tail: String = peer.chars().skip(n - 8).collect();
        format!("…{tail}")
    }
}

/// A hash shortened to 12 hex digits.
pub fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// Per mille as a percentage: `125` → `12.5%`.
pub fn permille(p: u32) -> String {
    format!("{:.1}%", p as f64 / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(mib(2048), "2.0 GiB");
        assert_eq!(rate(2048.0), "2.0 KiB/s");
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_500), "12.5 s");
        assert_eq!(duration_ms(200_000), "3 min 20 s");
        assert_eq!(duration_ms(7_500_000), "2 h 5 min");
        assert_eq!(duration_ms(90_000_000), "1 d 1 h");
        assert_eq!(age(1_000, 1_500), "just now");
        assert_eq!(age(1_000, 6_400), "5 s ago");
        assert_eq!(short_peer("12D3KooWAbcdefghijklmnop"), "…ijklmnop");
        assert_eq!(short_peer("short"), "short");
        assert_eq!(permille(125), "12.5%");
    }
}
