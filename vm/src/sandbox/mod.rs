//! (being written)
pub mod landlock;
pub mod seccomp;
