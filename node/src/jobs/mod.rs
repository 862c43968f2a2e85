//! Jobs on the node: the job protocol between nodes ([`wire`], [`link`]).

pub mod link;
pub mod wire;
