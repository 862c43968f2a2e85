//! What this machine offers the mesh, read from /proc: vCPUs (online CPUs), memory (total and
//! available), load (1-minute load average per CPU, in per mille).
//!
//! What this cannot do yet: the owner's politeness caps (BOINC-style CPU and memory shares,
//! idle time, battery) and the slots VMs already use come with the daemon proper; until then
//! every online CPU counts as one free slot.

use novacron_mesh::records::{Capacity, MAX_LOAD_PERMILLE};

/// The machine's capacity now; a /proc file that cannot be read counts as zero (logged).
pub fn host_capacity() -> Capacity {
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let (memory_bytes, free_memory_bytes) = read("/proc/meminfo")
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    let load = read("/proc/loadavg")
        .and_then(|t| parse_loadavg(&t))
        .unwrap_or(0.0);
    Capacity {
        vcpus,
        free_vcpus: vcpus,
        memory_bytes,
        free_memory_bytes,
        free_slots: vcpus,
        load_permille: load_permille(load, vcpus),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .map_err(|e| tracing::warn!(path, error = %e, "cannot read"))
        .ok()
}

/// (MemTotal, MemAvailable) in bytes.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?.min(total);
    Some((total, available))
}

/// The 1-minute load average.
fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn load_permille(load: f64, vcpus: u32) -> u16 {
    let per_cpu = load / f64::from(vcpus.max(1));
    (per_cpu * 1000.0)
        .round()
        .clamp(0.0, f64::from(MAX_LOAD_PERMILLE)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_loadavg_are_read() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some((24_576_000 * 1024, 12_288_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: lots\n"), None);
        assert_eq!(parse_loadavg("1.50 0.80 0.40 2/300 1234\n"), Some(1.5));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(load_permille(1.5, 2), 750);
        assert_eq!(load_permille(1e9, 2), MAX_LOAD_PERMILLE);
    }

    #[test]
    fn this_machine_has_capacity() {
        let c = host_capacity();
        assert!(c.vcpus >= 1 && c.memory_bytes > 0 && c.free_memory_bytes <= c.memory_bytes);
    }
}
