//! Host memory from `/proc/meminfo`.

use std::path::Path;

use super::read_limited;

/// `/proc/meminfo` is about 1.5 KiB.
const MAX_MEMINFO: u64 = 64 << 10;

/// `MemTotal` and `MemAvailable` in bytes (each None when absent); `proc_dir` is normally
/// `/proc`.
pub fn meminfo(proc_dir: &Path) -> (Option<u64>, Option<u64>) {
    read_limited(&proc_dir.join("meminfo"), MAX_MEMINFO).map_or((None, None), |t| parse(&t))
}

fn parse(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                Some("kB") => n.checked_mul(1024),
                None => Some(n),
                Some(_) => None,
            }
        })
    };
    (field("MemTotal"), field("MemAvailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_total_and_available() {
        let proc_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            proc_dir.path().join("meminfo"),
            "MemTotal:       16314568 kB\nMemFree:          420000 kB\n\
             MemAvailable:   10123456 kB\nBuffers:           12 kB\n",
        )
        .unwrap();
        assert_eq!(
            meminfo(proc_dir.path()),
            (Some(16314568 * 1024), Some(10123456 * 1024))
        );
    }

    #[test]
    fn absent_or_garbled_is_unknown() {
        let proc_dir = tempfile::tempdir().unwrap();
        assert_eq!(meminfo(proc_dir.path()), (None, None));
        assert_eq!(
            parse("MemTotal: lots kB\nMemAvailable: 5 MB\n"),
            (None, None)
        );
        assert_eq!(
            parse("MemTotalX: 5 kB\nMemTotal: 18446744073709551615 kB\n"),
            (None, None)
        );
        assert_eq!(parse("MemTotal: 7\n"), (Some(7), None));
    }
}
