//! Enforcing the CPU share: each VMM's cgroup gets a CFS quota (`cpu.max` on cgroup v2,
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us` on v1) of `cpu_cap_percent` of each CPU it may use.
//! The cgroups are the VM engine's (`<hierarchy>/novacron/<vm name>`, made by
//! `novacron_vm::sandbox::cgroup` when the VMM starts); this only rewrites the quota.
//!
//! What it cannot do: BOINC throttles by stopping and starting tasks (a duty cycle over
//! seconds); a CFS quota is smoother but caps each period, so a VM with a 50% cap never
//! bursts to a whole CPU even for a moment. The VMM's own threads (I/O, control) share the
//! quota with the vCPUs.

use std::fmt;
use std::path::{Path, PathBuf};

use novacron_vm::sandbox::cgroup::{CgroupError, CgroupLayout, VmCgroup, CPU_PERIOD_US};

/// The smallest quota the kernel accepts, microseconds.
const MIN_QUOTA_US: u64 = 1_000;

/// A CFS bandwidth limit: `quota_us` of CPU time per `period_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

impl fmt::Display for CpuMax {
    /// The `cpu.max` line: `"<quota> <period>"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.quota_us, self.period_us)
    }
}

/// The limit of one VM: `cpu_cap_percent` (clamped to 1-100) of each of its vCPUs, counting
/// at most `usable_cpus` (the host's CPUs VMs may use, `Policy::usable_cpus`; 0 counts as 1)
/// since a VM cannot use more CPUs than that at once.
pub fn cpu_max(cpu_cap_percent: u8, usable_cpus: u32, vm_vcpus: u32) -> CpuMax {
    let cpus = u64::from(vm_vcpus.max(1).min(usable_cpus.max(1)));
    let pct = u64::from(cpu_cap_percent.clamp(1, 100));
    CpuMax {
        quota_us: (cpus * pct * CPU_PERIOD_US / 100).max(MIN_QUOTA_US),
        period_us: CPU_PERIOD_US,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CpuCapError {
    #[error("CPU cap of VM cgroup {name:?}: {source}")]
    Cgroup {
        name: String,
        #[source]
        source: CgroupError,
    },
    #[error("CPU cap: writing {value:?} to {path} failed: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `max` into the cgroup of the VM named `vm_cgroup_name` (the name its VMM's cgroup
/// was created with). The cgroup must exist; it is left in place.
pub fn apply_cpu_max(
    layout: &CgroupLayout,
    vm_cgroup_name: &str,
    max: CpuMax,
) -> Result<(), CpuCapError> {
    let cgroup = VmCgroup::open(layout, vm_cgroup_name).map_err(|source| CpuCapError::Cgroup {
        name: vm_cgroup_name.to_owned(),
        source,
    })?;
    let dirs = cgroup.dirs().to_vec();
    // Not ours to remove: the VMM's launcher owns it.
    cgroup.keep();
    match layout {
        CgroupLayout::V2 { .. } => write_cpu_max(&dirs[0], max),
        CgroupLayout::V1 { .. } => {
            let dir = dirs.last().unwrap_or(&dirs[0]);
            write(&dir.join("cpu.cfs_period_us"), &max.period_us.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &max.quota_us.to_string())
        }
    }
}

/// Writes `cpu.max` in a cgroup v2 directory.
pub fn write_cpu_max(cgroup_dir: &Path, max: CpuMax) -> Result<(), CpuCapError> {
    write(&cgroup_dir.join("cpu.max"), &max.to_string())
}

fn write(path: &Path, value: &str) -> Result<(), CpuCapError> {
    std::fs::write(path, value).map_err(|source| CpuCapError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_the_cap_of_each_usable_vcpu() {
        assert_eq!(cpu_max(100, 8, 1).to_string(), "100000 100000");
        assert_eq!(cpu_max(50, 8, 2).to_string(), "100000 100000");
        assert_eq!(cpu_max(25, 8, 4).to_string(), "100000 100000");
        // More vCPUs than the usable CPUs: the usable CPUs bound it.
        assert_eq!(cpu_max(100, 2, 8).to_string(), "200000 100000");
        assert_eq!(cpu_max(60, 0, 0).to_string(), "60000 100000");
        // Out of range caps are clamped; the kernel's minimum holds.
        assert_eq!(cpu_max(0, 4, 1).quota_us, 1_000);
        assert_eq!(cpu_max(250, 4, 1).quota_us, 100_000);
        assert_eq!(cpu_max(1, 1, 1).quota_us, 1_000);
        assert_eq!(
            cpu_max(100, u32::MAX, u32::MAX).quota_us,
            u64::from(u32::MAX) * 100_000
        );
    }

    #[test]
    fn writes_into_the_vm_cgroup_v2_and_v1() {
        let root = tempfile::tempdir().unwrap();
        let vm = root.path().join("novacron/vm-1");
        std::fs::create_dir_all(&vm).unwrap();
        let v2 = CgroupLayout::V2 {
            root: root.path().to_path_buf(),
        };
        apply_cpu_max(&v2, "vm-1", cpu_max(50, 4, 2)).unwrap();
        assert_eq!(
            std::fs::read_to_string(vm.join("cpu.max")).unwrap(),
            "100000 100000"
        );
        // The directory stays.
        assert!(vm.is_dir());

        let mem = root.path().join("memory");
        let cpu = root.path().join("cpu");
        for d in [&mem, &cpu] {
            std::fs::create_dir_all(d.join("novacron/vm-2")).unwrap();
        }
        let v1 = CgroupLayout::V1 {
            memory: mem.clone(),
            cpu: cpu.clone(),
        };
        apply_cpu_max(&v1, "vm-2", cpu_max(30, 4, 1)).unwrap();
        let vm2 = cpu.join("novacron/vm-2");
        assert_eq!(
            std::fs::read_to_string(vm2.join("cpu.cfs_quota_us")).unwrap(),
            "30000"
        );
        assert_eq!(
            std::fs::read_to_string(vm2.join("cpu.cfs_period_us")).unwrap(),
            "100000"
        );
        assert!(!mem.join("novacron/vm-2/cpu.cfs_quota_us").exists());
    }

    #[test]
    fn a_missing_or_bad_cgroup_is_named() {
        let root = tempfile::tempdir().unwrap();
        let v2 = CgroupLayout::V2 {
            root: root.path().to_path_buf(),
        };
        let err = apply_cpu_max(&v2, "gone", cpu_max(50, 1, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone"), "{err}");
        let err = apply_cpu_max(&v2, "../etc", cpu_max(50, 1, 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("../etc"), "{err}");
    }
}
