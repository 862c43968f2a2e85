//! Helpers of the end-to-end migration tests: CLI processes under test and a
//! fault-injecting TCP proxy.

// Each test binary uses part of it (the TCP proxy, or the splice into Unix streams).
#![allow(dead_code)]

pub mod cli_migration;
pub mod confirm_cutter;
pub mod guest;
pub mod proc;
pub mod proxy;
