//! novacron-vm: NovaCron's virtual machine monitor.
//!
//! A minimal KVM VMM in the spirit of Firecracker: guest memory, vCPU threads, a handful of
//! legacy devices, Linux and builtin-guest boot, snapshots and the per-process sandbox.

pub mod boot;
pub mod guest_kit;
pub mod layout;
pub mod sandbox;
pub mod storage;
