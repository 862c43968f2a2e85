//! The node's VMs: starting them in jailed VMM processes, supervising them, checkpointing
//! them, and accounting for every one of them across daemon restarts.
//!
//! Each VM has a directory `<dataDir>/vms/<id>/` ([`paths::VmPaths`]: console, checkpoints,
//! adoption socket, tombstone) and a row in the state database written before its VMM starts,
//! so a daemon killed at any moment finds every VM it ever started ([`crate::policy::recovery`]).
//!
//! [`VmManager`] is one type in several files, one concept each: [`manager`] (its state and
//! supervisors), [`lifecycle`], [`removal`], [`restart`] (recovery at start, with what
//! [`leftovers`] finds), [`adoption`],
//! [`outgoing`] (migrations out, settling one in doubt) and [`receive`] (migrations in).

mod adoption;
pub mod console;
pub mod events;
pub mod leftovers;
mod lifecycle;
mod manager;
mod outgoing;
pub mod paths;
pub mod payload;
pub mod process_backend;
mod process_supervisor;
mod receive;
pub mod registry;
mod removal;
mod restart;
pub mod spec;
mod supervisor;

pub use manager::{host_tag, VmManager, VmOptions};
pub use restart::RecoveryReport;
