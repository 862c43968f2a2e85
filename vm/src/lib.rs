//! novacron-vm: NovaCron's virtual machine monitor.
//!
//! A minimal KVM VMM in the spirit of Firecracker: guest memory, vCPU threads, a handful of
//! legacy devices, Linux and builtin-guest boot, snapshots and the per-process sandbox.
//! [`machine`] is the VM itself (KVM, memory, vCPUs, devices, snapshots); [`process`] is the
//! VMM process around one machine and its parent's side (control socket, launch, adoption).
//! See docs/vm.md for the design, the snapshot format and the sandbox rules.
//!
//! Everything that needs KVM (or the host) is behind the default feature `kvm`; without it
//! only the pure migration core ([`migration`]) builds, and with feature `sim` its
//! in-memory harness ([`migration::sim`]).

#[cfg(feature = "kvm")]
pub mod boot;
pub mod exit;
#[cfg(feature = "kvm")]
pub mod guest_kit;
#[cfg(feature = "kvm")]
pub mod machine;
pub mod migration;
#[cfg(feature = "kvm")]
pub mod process;
#[cfg(feature = "kvm")]
pub mod sandbox;
#[cfg(feature = "kvm")]
pub mod storage;

#[cfg(feature = "kvm")]
pub use machine::snapshot::{SnapshotError, SnapshotKind, SnapshotStats};
#[cfg(feature = "kvm")]
pub use machine::{BootSource, Lifecycle, Machine, MachineConfig, VmError};
