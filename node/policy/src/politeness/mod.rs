//! The politeness policy: the volunteer's machine comes first. BOINC-like rules (BOINC's
//! defaults) decide whether NovaCron's VMs may run here now, within which CPU and memory
//! caps, or must move away or stop. See docs/node.md "Politeness".
//!
//! - [`Policy`]: the owner's rules (the `politeness:` config section).
//! - [`Politeness`]: the sans-IO state machine, [`observation::Observation`] in,
//!   [`Decision`] out.
//!
//! It reads nothing itself: the daemon samples the host (`novacron_node::politeness::sources`, with
//! feature `daemon`) and acts on the decisions; the simulator feeds it virtual owners.

pub mod decision;
pub mod machine;
pub mod observation;
pub mod policy;
pub mod policy_error;
pub mod window;

pub use decision::Decision;
pub use machine::Politeness;
pub use policy::{Park, Policy};
