//! Jobs on the node: the job protocol between nodes ([`wire`], [`link`]); reading job spec
//! files ([`spec_file`], also built alone by feature `job-spec`); which submitters the node
//! accepts jobs from ([`trust`]).

#[cfg(feature = "daemon")]
pub mod link;
pub mod spec_file;
#[cfg(feature = "daemon")]
pub mod trust;
#[cfg(feature = "daemon")]
pub mod wire;
