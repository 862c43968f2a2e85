//! The node's decisions, with no I/O: each takes what the daemon observed and `now`, and
//! returns what to do. The daemon drives them with real sockets, processes and clocks;
//! the simulator drives the same code in virtual time.
//!
//! - [`placement`]: which peer of the cell a VM moves to.
//! - [`politeness`]: whether VMs may run here now, within which caps.
//! - [`admission`]: whether a VM (or an incoming migration) fits what the node has free.
//! - [`cell_size`]: the mesh-size estimate, the cell size it calls for, the gossip interval.
//! - [`cell_keeper`]: when the node refreshes its cell entry, looks members up, publishes
//!   its cell's summary and moves to a cell of another size.
//! - [`evacuation`]: emptying the node: which VM tries which mode when, what is parked.
//! - [`recovery`]: what a restarted daemon does with each VM it finds (adopt, restore,
//!   record its end) and how the migrations it left open settle.
//! - [`in_doubt`]: how a migration in doubt settles, from the truth, never from a guess.
//! - [`job_fencing`]: which checkpoint holder restores a replica whose node died, and the
//!   generations that keep a stale copy from ever resuming.
//! - [`job_placement`]: where a job's replica goes: cells ranked by their summaries, the
//!   best-fitting offer, and the search that asks peers and confirms one.
//! - [`remote_runners`]: when an origin presumes the node of a replica it placed in
//!   another cell dead (no failure detector of its own cell watches that node).
//! - [`quorum`]: whether a job's replicas agree on its result (BOINC-style), when it takes
//!   new replicas, and each peer's record of agreeing.
//! - [`submitters`]: whether a verified job submission is taken: a trusted key, a new job
//!   id, the submitter's quota of active jobs and its rate.

pub mod admission;
pub mod cell_keeper;
pub mod cell_size;
pub mod evacuation;
pub mod in_doubt;
pub mod job_fencing;
pub mod job_placement;
pub mod placement;
pub mod politeness;
pub mod quorum;
pub mod recovery;
pub mod remote_runners;
pub mod submitters;
