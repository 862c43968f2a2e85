//! The node's APIs: the REST API ([`rest`]), the browser dashboard ([`dashboard`]), and the
//! local API: what `novacron nodes` and the job commands ask a running `novacron node`, and the answers.
//!
//! Carried as JSON lines over a Unix socket in the data directory ([`socket`]): one request
//! per line, one answer per line. Only the node's owner can reach it (the socket is 0600 in
//! a directory the node owns); it is not a network API.

pub mod client;
pub mod dashboard;
pub mod rest;
pub mod service;
pub mod socket;
pub mod types;

pub use crate::model::{CellStatus, MemberStatus, NodeStatus, ProtocolBytesStatus, SummaryStatus};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request to a running node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who the node is, its cell's members and the cell summaries it knows.
    Status,
    /// Put a file's chunks in the node's store and provide it to the mesh as a chunk set.
    PublishFile { path: PathBuf, name: Option<String> },
    /// Fetch a chunk set (64 hex digits) from its providers, verify it and write it to `out`.
    Fetch { id: String, out: PathBuf },
}

/// The answer to a request: exactly one of the fields is set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Box<NodeStatus>),
    Published(Published),
    Fetched(Box<Fetched>),
    Error(String),
}

/// A chunk set the node now provides.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Published {
    pub id: String,
    pub name: String,
    pub bytes: u64,
    /// Non-zero chunks (zero chunks are not stored).
    pub chunks: usize,
}

/// How a fetch went.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fetched {
    pub id: String,
    pub name: String,
    /// The set's length, as written to `out`.
    pub bytes: u64,
    /// Chunks fetched (those already in the store are not), their raw and wire bytes.
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    pub mib_per_sec: f64,
    /// Each provider that gave chunks: peer id and chunk count.
    pub providers: Vec<(String, u64)>,
    pub retries: u64,
    pub bad_providers: Vec<String>,
}
