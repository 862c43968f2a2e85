//! Shared bodies of the fuzz targets of every decoder of outside bytes (novacron-vm,
//! novacron-mesh, and the node's job spec files and job protocol).
//!
//! Each module is one target: `check(data)` feeds arbitrary bytes to the real decoder and
//! asserts the invariants that hold whenever it accepts them (it returns whether the input
//! was accepted, so tests can prove the seeds reach the success path), and `seeds()` builds
//! small valid inputs with the real encoders. The `fuzz_targets/*.rs` binaries are one-line
//! wrappers around `check`; `examples/make_seeds.rs` writes `seeds()` under `seeds/<target>/`.
//!
//! What this cannot do: the checks only see what a decoder returns; a decoder that accepts
//! garbage without breaking an invariant below goes unnoticed.

pub mod cell_frame;
pub mod cell_summary;
pub mod checksummed_frame;
pub mod control_recv;
pub mod guest_spec;
pub mod job_spec;
pub mod job_wire;
pub mod linux_image;
pub mod manifest_decode;
pub mod memory_layer;
pub mod migration_frame;
pub mod migration_stream;
pub mod node_record;
pub mod scratch;
pub mod snapshot_load;
pub mod state_decode;
pub mod submission;

/// A named seed input.
pub type Seed = (&'static str, Vec<u8>);

/// A target: its name (as in Cargo.toml and `seeds/`), its check and its seed builder.
pub type Target = (&'static str, fn(&[u8]) -> bool, fn() -> Vec<Seed>);

/// Every target.
pub const TARGETS: &[Target] = &[
    ("state_decode", state_decode::check, state_decode::seeds),
    (
        "checksummed_frame",
        checksummed_frame::check,
        checksummed_frame::seeds,
    ),
    (
        "manifest_decode",
        manifest_decode::check,
        manifest_decode::seeds,
    ),
    ("snapshot_load", snapshot_load::check, snapshot_load::seeds),
    ("memory_layer", memory_layer::check, memory_layer::seeds),
    ("control_recv", control_recv::check, control_recv::seeds),
    ("guest_spec", guest_spec::check, guest_spec::seeds),
    (
        "migration_frame",
        migration_frame::check,
        migration_frame::seeds,
    ),
    ("linux_image", linux_image::check, linux_image::seeds),
    (
        "migration_stream",
        migration_stream::check,
        migration_stream::seeds,
    ),
    ("node_record", node_record::check, node_record::seeds),
    ("cell_summary", cell_summary::check, cell_summary::seeds),
    ("cell_frame", cell_frame::check, cell_frame::seeds),
    ("job_spec", job_spec::check, job_spec::seeds),
    ("submission", submission::check, submission::seeds),
    ("job_wire", job_wire::check, job_wire::seeds),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_generated_seed_is_accepted() {
        for (name, check, seeds) in TARGETS {
            let seeds = seeds();
            assert!(!seeds.is_empty(), "{name}: no seeds");
            for (seed, bytes) in seeds {
                assert!(check(&bytes), "{name}/{seed} was rejected");
                assert!(
                    bytes.len() <= 16 << 10,
                    "{name}/{seed} is {} bytes",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn committed_seeds_match_the_generator() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        for (name, _, seeds) in TARGETS {
            for (seed, bytes) in seeds() {
                let path = root.join(name).join(seed);
                let committed = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; run `cargo run --example make_seeds`",
                        path.display()
                    )
                });
                assert_eq!(committed, bytes, "{} is stale", path.display());
            }
        }
    }

    #[test]
    fn empty_and_junk_inputs_are_rejected_without_panics() {
        for (name, check, _) in TARGETS {
            for junk in [&b""[..], b"\0", b"\xff\xff\xff\xff", &[0xA5; 700]] {
                // Only the guest spec can accept junk-looking text; nothing may panic.
                let accepted = check(junk);
                assert!(
                    !accepted || *name == "guest_spec",
                    "{name} accepted {junk:?}"
                );
            }
        }
    }
}
