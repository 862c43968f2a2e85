//! The NovaCron node as a library: what the `novacron` binary runs, and what the dashboard
//! and the simulator reuse.
//!
//! Always built (no I/O, no clock, no async runtime; the simulator links only these):
//! - [`model`]: the node's domain model (VMs, migrations, cell members, politeness, jobs,
//!   events); the API's types are these.
//! - [`policy`]: the decisions the node makes, as pure functions and state machines that
//!   take `now` and return actions: placement, politeness, admission, the recovery plan,
//!   the cell keeper and the evacuation planner; for jobs, submitter admission
//!   (`submitters`), job placement (`job_placement`), result quorum (`quorum`) and
//!   generation fencing (`job_fencing`).
//!
//! With feature `daemon` (the default), the parts that do I/O and drive those cores: the
//! daemon (its jobs side in `daemon::jobs`), the VMs' supervision, [`jobs`] (trust, the job
//! protocol, a replica's VM), the REST and local APIs, the CLI, metrics, persistence and
//! the benchmarks.
//!
//! Feature `job-spec` (part of `daemon`) alone adds [`jobs`]' spec files and [`yaml_keys`]:
//! reading a job spec from YAML with its lines, without the daemon; and the job protocol's
//! messages (`jobs::wire`, pure). The fuzzers build this.

#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod bench;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod clock;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod install;
#[cfg(feature = "job-spec")]
pub mod jobs;
#[cfg(feature = "daemon")]
pub mod local_mesh;
#[cfg(feature = "daemon")]
pub mod mesh_migration;
#[cfg(feature = "daemon")]
pub mod metrics;
pub use novacron_model as model;
pub use novacron_policy as policy;
#[cfg(feature = "daemon")]
pub mod politeness;
#[cfg(feature = "daemon")]
pub mod size;
#[cfg(feature = "daemon")]
pub mod state;
#[cfg(feature = "daemon")]
pub mod vms;
#[cfg(feature = "job-spec")]
pub mod yaml_keys;
