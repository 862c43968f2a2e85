//! The thin Linux side: reads what the policy looks at from the host, each source in its
//! own function, each tolerant of absence (a missing file is "unknown", never an error), and
//! every path under a root the tests replace with a temp directory.

pub mod clock;
pub mod cpu_load;
pub mod idle;
pub mod meminfo;
pub mod owner;
pub mod power;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::politeness::observation::{Observation, OwnerSignal};

/// Reads at most `limit` bytes of a file as text (lossy); None if it cannot be opened.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Where the sources look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// `/dev`: input devices and terminals.
    pub dev: PathBuf,
    /// `/sys`: power supplies, the foreground console.
    pub sys: PathBuf,
    /// `/proc`: CPU times and memory.
    pub proc_dir: PathBuf,
    /// The node's data directory: the owner-activity hook files.
    pub data_dir: PathBuf,
}

impl HostPaths {
    /// This host's `/dev`, `/sys` and `/proc`.
    pub fn host(data_dir: &Path) -> Self {
        HostPaths {
            dev: PathBuf::from("/dev"),
            sys: PathBuf::from("/sys"),
            proc_dir: PathBuf::from("/proc"),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// `root/dev`, `root/sys`, `root/proc` (tests).
    #[cfg(test)]
    pub fn under(root: &Path, data_dir: &Path) -> Self {
        HostPaths {
            dev: root.join("dev"),
            sys: root.join("sys"),
            proc_dir: root.join("proc"),
            data_dir: data_dir.to_path_buf(),
        }
    }
}

/// Composes the sources into an [`Observation`]; keeps what a load needs between samples.
/// Call [`sample`](Sampler::sample) about once a second ([`super::SAMPLE_INTERVAL`]).
pub struct Sampler {
    paths: HostPaths,
    cpu: cpu_load::CpuLoadMeter,
    owner_idle: idle::OwnerIdle,
    vm_pids: Vec<u32>,
    api_override: Option<OwnerSignal>,
    clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
}

impl Sampler {
    pub fn new(paths: HostPaths) -> Self {
        Sampler {
            paths,
            cpu: cpu_load::CpuLoadMeter::default(),
            owner_idle: idle::OwnerIdle::default(),
            vm_pids: Vec::new(),
            api_override: None,
            clock: Box::new(SystemTime::now),
        }
    }

    /// Replaces the wall clock (tests).
    #[cfg(test)]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The processes whose CPU time is NovaCron's (the VMMs; the daemon may add itself).
    pub fn set_vm_pids(&mut self, pids: impl IntoIterator<Item = u32>) {
        self.vm_pids = pids.into_iter().collect();
    }

    /// The API's word about the owner (None: back to the files and devices). It beats the
    /// hook files, which beat the devices.
    pub fn set_owner_override(&mut self, signal: Option<OwnerSignal>) {
        self.api_override = signal;
    }

    /// Reads every source once.
    pub fn sample(&mut self) -> Observation {
        let now = (self.clock)();
        let p = &self.paths;
        let owner_override = self
            .api_override
            .or_else(|| owner::owner_signal_file(&p.data_dir));
        let (mem_total_bytes, mem_available_bytes) = meminfo::meminfo(&p.proc_dir);
        Observation {
            owner_idle: self.owner_idle.sample(&p.dev, &p.sys, now),
            on_battery: power::on_battery(&p.sys),
            local_time: clock::local_time(now),
            other_cpu_load: self.cpu.sample(&p.proc_dir, &self.vm_pids),
            mem_total_bytes,
            mem_available_bytes,
            owner_override,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_empty_host_is_all_unknown_and_the_hooks_still_work() {
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(HostPaths::under(root.path(), data.path()));
        let obs = sampler.sample();
        assert_eq!(obs.owner_idle, None);
        assert_eq!(obs.on_battery, None);
        assert_eq!(obs.other_cpu_load, None);
        assert_eq!((obs.mem_total_bytes, obs.mem_available_bytes), (None, None));
        assert_eq!(obs.owner_override, None);
        assert!(obs.local_time.is_some());

        std::fs::write(data.path().join(owner::OWNER_IDLE_FILE), "").unwrap();
        assert_eq!(sampler.sample().owner_override, Some(OwnerSignal::Idle));
        sampler.set_owner_override(Some(OwnerSignal::Active));
        assert_eq!(sampler.sample().owner_override, Some(OwnerSignal::Active));
        sampler.set_owner_override(None);
        std::fs::remove_file(data.path().join(owner::OWNER_IDLE_FILE)).unwrap();
        assert_eq!(sampler.sample().owner_override, None);
    }

    #[test]
    fn this_host_is_read() {
        let data = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(HostPaths::host(data.path()));
        sampler.set_vm_pids([std::process::id()]);
        let obs = sampler.sample();
        let total = obs.mem_total_bytes.unwrap();
        assert!(obs.mem_available_bytes.unwrap() <= total);
        assert!(obs.local_time.is_some());
        // A load needs two readings with at least one clock tick between them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let load = loop {
            if let Some(load) = sampler.sample().other_cpu_load {
                break load;
            }
            assert!(std::time::Instant::now() < deadline, "no CPU load in 10 s");
            std::thread::yield_now();
        };
        assert!((0.0..=1.0).contains(&load), "{load}");
    }

    #[test]
    fn a_laptop_tree_is_read_whole() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_888_000);
        for dir in [
            "dev/input",
            "sys/class/power_supply/BAT0",
            "sys/class/power_supply/AC",
            "proc/7",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        let kbd = std::fs::File::create(r.join("dev/input/event3")).unwrap();
        kbd.set_times(std::fs::FileTimes::new().set_accessed(now - Duration::from_secs(90)))
            .unwrap();
        std::fs::write(r.join("sys/class/power_supply/BAT0/type"), "Battery\n").unwrap();
        std::fs::write(r.join("sys/class/power_supply/AC/type"), "Mains\n").unwrap();
        std::fs::write(r.join("sys/class/power_supply/AC/online"), "0\n").unwrap();
        std::fs::write(
            r.join("proc/meminfo"),
            "MemTotal: 1024 kB\nMemAvailable: 512 kB\n",
        )
        .unwrap();
        let stat = |busy: u64, idle: u64| format!("cpu  {busy} 0 0 {idle} 0 0 0 0\n");
        std::fs::write(r.join("proc/stat"), stat(0, 0)).unwrap();
        std::fs::write(
            r.join("proc/7/stat"),
            "7 (vmm) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0\n",
        )
        .unwrap();

        let mut sampler =
            Sampler::new(HostPaths::under(r, &r.join("data"))).with_clock(move || now);
        sampler.set_vm_pids([7]);
        let first = sampler.sample();
        assert_eq!(first.owner_idle, Some(Duration::from_secs(90)));
        assert_eq!(first.on_battery, Some(true));
        assert_eq!(first.mem_total_bytes, Some(1 << 20));
        assert_eq!(first.mem_available_bytes, Some(1 << 19));
        assert_eq!(first.other_cpu_load, None);
        std::fs::write(r.join("proc/stat"), stat(50, 50)).unwrap();
        std::fs::write(
            r.join("proc/7/stat"),
            "7 (vmm) S 1 1 1 0 -1 0 0 0 0 0 20 5 0 0\n",
        )
        .unwrap();
        let load = sampler.sample().other_cpu_load.unwrap();
        assert!((load - 0.25).abs() < 1e-9, "{load}");
    }
}
