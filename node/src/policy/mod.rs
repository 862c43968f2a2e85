//! The node's decisions, with no I/O: each takes what the daemon observed and `now`, and
//! returns what to do. The daemon drives them with real sockets, processes and clocks;
//! the simulator drives the same code in virtual time.
//!
//! - [`placement`]: which peer of the cell a VM moves to.
//! - [`politeness`]: whether VMs may run here now, within which caps.
//! - [`admission`]: whether a VM (or an incoming migration) fits what the node has free.

pub mod admission;
pub mod placement;
pub mod politeness;
