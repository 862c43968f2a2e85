//! Jobs on the node: the job protocol between nodes ([`wire`], [`link`]) and the VM that runs
//! a replica ([`vm_spec`]). The daemon's side of jobs is `crate::daemon::jobs`.

pub mod link;
pub mod vm_spec;
pub mod wire;
