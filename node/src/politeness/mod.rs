//! The politeness policy: the volunteer's machine comes first. BOINC-like rules (BOINC's
//! defaults) decide whether NovaCron's VMs may run here now, within which CPU and memory
//! caps, or must move away or stop. See docs/node.md "Politeness".
//!
//! - [`Policy`]: the owner's rules (the `politeness:` config section).
//! - [`Politeness`]: the sans-IO state machine, [`Observation`] in, [`Decision`] out.
//! - [`sources`]: the Linux readings behind an observation ([`Sampler`]).
//! - [`cpu_cap`]: turning the CPU cap into each VMM cgroup's `cpu.max`.
//!
//! The daemon's loop: every [`SAMPLE_INTERVAL`], `sampler.set_vm_pids(..)`,
//! `politeness.observe(now_ms, &sampler.sample())`, and on `Some(decision)` act on it
//! (publish `info()` as an event). What this module cannot do by itself: it moves and parks
//! no VM; that is the daemon's, by the decision.

pub mod cpu_cap;
pub mod decision;
pub mod machine;
pub mod observation;
pub mod policy;
pub mod sources;
pub mod window;

use std::time::Duration;

pub use decision::Decision;
pub use machine::Politeness;
pub use policy::{Park, Policy};

/// The niceness every VM runs at: the lowest priority, as BOINC runs volunteer work, so
/// the owner's programs (and this daemon, which forwards the VMs' migration streams) always
/// come first and a VM only gets CPU time nobody else wants.
pub const VM_NICE: i8 = novacron_vm::process::launcher::LOWEST_PRIORITY_NICE;
pub use sources::{HostPaths, Sampler};

/// How often the daemon samples the host (BOINC polls once a second).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
