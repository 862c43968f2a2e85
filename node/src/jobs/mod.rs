//! Jobs on the node: the job protocol between nodes ([`wire`], [`link`]); reading job spec
//! files ([`spec_file`]); which submitters the node accepts jobs from ([`trust`]); the VM
//! that runs a replica ([`vm_spec`]); signed job views ([`signed_status`]). The daemon's side of jobs is `crate::daemon::jobs`.
//! [`spec_file`] and [`wire`] are pure and also built alone by feature `job-spec` (the
//! fuzzers).

#[cfg(feature = "daemon")]
pub mod link;
pub mod signed_status;
pub mod spec_file;
#[cfg(feature = "daemon")]
pub mod trust;
#[cfg(feature = "daemon")]
pub mod vm_spec;
pub mod wire;
