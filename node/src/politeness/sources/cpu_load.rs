//! The CPU load of everything but NovaCron's VMs: the host's busy time from `/proc/stat`
//! minus the CPU time (`utime + stime`, guest time included) of the VMM processes the daemon
//! names, between two readings.
//!
//! Why pids rather than the `novacron` cgroup's `cpu.stat`: the cgroup exists only where the
//! daemon may create cgroups (root, cgroup v2 or v1), the pids always. What this cannot
//! count: a VMM that exited between two readings (its last interval counts as other load,
//! once: the policy's hysteresis absorbs it) and a VMM's children (it has none). The daemon
//! itself is "other" unless it passes its own pid too.

use std::collections::HashMap;
use std::path::Path;

use super::read_limited;

/// The first line of `/proc/stat` is well under this (the per-CPU lines follow).
const MAX_STAT_HEAD: u64 = 4096;
/// `/proc/PID/stat` is a few hundred bytes.
const MAX_PID_STAT: u64 = 4096;

/// Host CPU time in clock ticks (`USER_HZ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    pub total: u64,
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal
/// (guest and guest_nice are already inside user and nice).
pub fn parse_proc_stat(text: &str) -> Option<HostTicks> {
    let line = text.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    let total = v.iter().try_fold(0u64, |a, x| a.checked_add(*x))?;
    let idle = v[3].checked_add(v.get(4).copied().unwrap_or(0))?;
    Some(HostTicks {
        busy: total.checked_sub(idle)?,
        total,
    })
}

/// `utime + stime` of a `/proc/PID/stat` text (fields 14 and 15, counted after the command
/// name, which may itself hold spaces and parentheses).
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // Fields from 3 (state) on: utime is the 12th of them, stime the 13th.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Keeps the previous readings; `sample` gives the load since the last call.
#[derive(Debug, Default)]
pub struct CpuLoadMeter {
    last_host: Option<HostTicks>,
    last_pids: HashMap<u32, u64>,
}

impl CpuLoadMeter {
    /// Other programs' share of the host's CPU time since the previous call, 0.0-1.0; None
    /// on the first call or when `/proc/stat` cannot be read or went backwards.
    pub fn sample(&mut self, proc_dir: &Path, vm_pids: &[u32]) -> Option<f64> {
        let host = read_limited(&proc_dir.join("stat"), MAX_STAT_HEAD)
            .as_deref()
            .and_then(parse_proc_stat);
        let pids: HashMap<u32, u64> = vm_pids
            .iter()
            .filter_map(|&pid| {
                let path = proc_dir.join(pid.to_string()).join("stat");
                Some((pid, parse_pid_stat(&read_limited(&path, MAX_PID_STAT)?)?))
            })
            .collect();
        let previous = std::mem::replace(&mut self.last_host, host);
        let previous_pids = std::mem::replace(&mut self.last_pids, pids);
        other_load(previous?, host?, &previous_pids, &self.last_pids)
    }
}

/// The pure arithmetic of [`CpuLoadMeter::sample`].
fn other_load(
    before: HostTicks,
    after: HostTicks,
    pids_before: &HashMap<u32, u64>,
    pids_after: &HashMap<u32, u64>,
) -> Option<f64> {
    let total = after.total.checked_sub(before.total).filter(|t| *t > 0)?;
    let busy = after.busy.saturating_sub(before.busy);
    let ours: u64 = pids_after
        .iter()
        .filter_map(|(pid, now)| Some(now.saturating_sub(*pids_before.get(pid)?)))
        .sum();
    let other = busy.saturating_sub(ours);
    Some((other as f64 / total as f64).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_LINE: &str = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";

    fn pid_stat(comm: &str, utime: u64, stime: u64) -> String {
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 \
             1000 10000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
        )
    }

    #[test]
    fn parses_the_host_and_a_process() {
        assert_eq!(
            parse_proc_stat(STAT_LINE),
            Some(HostTicks {
                busy: 150,
                total: 1000
            })
        );
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2 x 4\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2\n"), None);
        assert_eq!(parse_pid_stat(&pid_stat("novacron", 30, 12)), Some(42));
        assert_eq!(parse_pid_stat(&pid_stat("a) (b c", 1, 2)), Some(3));
        assert_eq!(parse_pid_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_pid_stat("no parens"), None);
    }

    #[test]
    fn our_vms_are_not_other_load() {
        let proc_dir = tempfile::tempdir().unwrap();
        let p = proc_dir.path();
        std::fs::create_dir_all(p.join("4242")).unwrap();
        let write = |user: u64, idle: u64, vm_ticks: u64| {
            std::fs::write(
                p.join("stat"),
                format!("cpu  {user} 0 0 {idle} 0 0 0 0 0 0\n"),
            )
            .unwrap();
            std::fs::write(p.join("4242/stat"), pid_stat("novacron", vm_ticks, 0)).unwrap();
        };
        let mut meter = CpuLoadMeter::default();
        write(0, 0, 0);
        assert_eq!(meter.sample(p, &[4242]), None);
        // 1000 ticks pass: 600 busy, of which our VMM used 400.
        write(600, 400, 400);
        let load = meter.sample(p, &[4242]).unwrap();
        assert!((load - 0.2).abs() < 1e-9, "{load}");
        // Without the pid, all of it is other load.
        write(1200, 800, 800);
        let load = meter.sample(p, &[]).unwrap();
        assert!((load - 0.6).abs() < 1e-9, "{load}");
        // A pid that was not there before does not count yet; one that vanished is ignored.
        write(1800, 1200, 1200);
        let load = meter.sample(p, &[4242, 99]).unwrap();
        assert!((load - 0.6).abs() < 1e-9, "{load}");
        // No time passed: unknown.
        assert_eq!(meter.sample(p, &[4242]), None);
        // Unreadable /proc/stat: unknown, and the next reading starts over.
        std::fs::remove_file(p.join("stat")).unwrap();
        assert_eq!(meter.sample(p, &[4242]), None);
        write(2000, 2000, 1200);
        assert_eq!(meter.sample(p, &[4242]), None);
    }

    #[test]
    fn load_stays_in_range() {
        let before = HostTicks { busy: 0, total: 0 };
        let after = HostTicks {
            busy: 100,
            total: 100,
        };
        let pids_before = HashMap::from([(1, 0)]);
        // Our VMM claims more than the host used (rounding between the two files).
        let pids_after = HashMap::from([(1, 500)]);
        assert_eq!(
            other_load(before, after, &pids_before, &pids_after),
            Some(0.0)
        );
        assert_eq!(other_load(after, before, &pids_before, &pids_after), None);
    }
}
