//! novacron-vm: NovaCron's virtual machine monitor.
//!
//! A minimal KVM VMM in the spirit of Firecracker: guest memory, vCPU threads, a handful of
//! legacy devices, Linux and builtin-guest boot, snapshots and the per-process sandbox.
//! See docs/vm.md for the design, the snapshot format and the sandbox rules.

pub mod adopt;
pub mod arch;
pub mod boot;
pub mod child_lifetime;
pub mod control;
pub mod devices;
pub mod fd_passing;
pub mod guest_kit;
pub mod launcher;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod migration;
pub mod sandbox;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod vcpu;
pub mod vmm;
mod vmm_migration;
mod vmm_sandbox;

pub use machine::{BootSource, Lifecycle, Machine, MachineConfig, VmError};
pub use snapshot::{SnapshotError, SnapshotKind, SnapshotStats};
