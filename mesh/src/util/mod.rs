//! Small helpers shared across the crate (and by its users): lower-case [`hex`] and a
//! poison-tolerant [`lock`]. Pure.

pub mod hex;
mod lock;

pub use lock::lock;
