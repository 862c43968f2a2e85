//! Helpers of the end-to-end migration tests: CLI processes under test and a
//! fault-injecting TCP proxy.

pub mod confirm_cutter;
pub mod guest;
pub mod proc;
pub mod proxy;
