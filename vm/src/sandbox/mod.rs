//! (being written)
pub mod cgroup;
pub mod landlock;
pub mod namespaces;
pub mod rlimits;
pub mod seccomp;
