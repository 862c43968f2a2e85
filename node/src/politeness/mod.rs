//! The politeness policy's I/O side: the host readings its decisions are made on and the
//! caps they set. The rules and the state machine that decides are pure, in
//! [`crate::policy::politeness`]; see docs/node.md "Politeness".
//!
//! - [`sources`]: the Linux readings behind an observation ([`Sampler`]).
//! - [`cpu_cap`]: turning the CPU cap into each VMM cgroup's `cpu.max`.
//!
//! The daemon's loop (daemon/polite.rs): every [`SAMPLE_INTERVAL`], `sampler.set_vm_pids(..)`,
//! `politeness.observe(now, &sampler.sample())`, and on `Some(decision)` act on it
//! (publish `info()` as an event, move, park or cap VMs).

pub mod cpu_cap;
pub mod sources;

use std::time::Duration;

/// The niceness every VM runs at: the lowest priority, as BOINC runs volunteer work, so
/// the owner's programs (and this daemon, which forwards the VMs' migration streams) always
/// come first and a VM only gets CPU time nobody else wants.
pub const VM_NICE: i8 = novacron_vm::process::launcher::LOWEST_PRIORITY_NICE;
pub use sources::{HostPaths, Sampler};

/// How often the daemon samples the host (BOINC polls once a second).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
