//! novacron-vm: NovaCron's virtual machine monitor.
//!
//! A minimal KVM VMM in the spirit of Firecracker: guest memory, vCPU threads, a handful of
//! legacy devices, Linux and builtin-guest boot, snapshots and the per-process sandbox.
//! See docs/vm.md for the design, the snapshot format and the sandbox rules.
//!
//! Everything that needs KVM (or the host) is behind the default feature `kvm`; without it
//! only the pure migration core ([`migration`]) builds, and with feature `sim` its
//! in-memory harness ([`migration::sim`]).

#[cfg(feature = "kvm")]
pub mod adopt;
#[cfg(feature = "kvm")]
pub mod arch;
#[cfg(feature = "kvm")]
pub mod boot;
#[cfg(feature = "kvm")]
pub mod child_lifetime;
#[cfg(feature = "kvm")]
pub mod control;
#[cfg(feature = "kvm")]
pub mod devices;
#[cfg(feature = "kvm")]
pub mod fd_passing;
#[cfg(feature = "kvm")]
pub mod guest_kit;
#[cfg(feature = "kvm")]
pub mod launcher;
#[cfg(feature = "kvm")]
pub mod layout;
#[cfg(feature = "kvm")]
pub mod machine;
#[cfg(feature = "kvm")]
pub mod memory;
pub mod migration;
#[cfg(feature = "kvm")]
pub mod sandbox;
#[cfg(feature = "kvm")]
pub mod snapshot;
#[cfg(feature = "kvm")]
pub mod state;
#[cfg(feature = "kvm")]
pub mod storage;
#[cfg(feature = "kvm")]
pub mod vcpu;
#[cfg(feature = "kvm")]
pub mod vmm;
#[cfg(feature = "kvm")]
mod vmm_migration;
#[cfg(feature = "kvm")]
mod vmm_sandbox;

#[cfg(feature = "kvm")]
pub use machine::{BootSource, Lifecycle, Machine, MachineConfig, VmError};
#[cfg(feature = "kvm")]
pub use snapshot::{SnapshotError, SnapshotKind, SnapshotStats};
