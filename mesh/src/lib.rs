//! NovaCron's mesh crate. For now it holds the content-addressed chunk store that
//! migration, snapshots and images share; the swarm, cells and placement come later.

pub mod chunks;
pub mod workload;
