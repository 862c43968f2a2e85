//! (being written)
pub mod seccomp;
