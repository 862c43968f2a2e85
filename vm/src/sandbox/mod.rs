//! (being written)
pub mod landlock;
pub mod namespaces;
pub mod rlimits;
pub mod seccomp;
