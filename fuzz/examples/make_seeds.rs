//! Writes every target's seed inputs to `seeds/<target>/<name>` (run from anywhere:
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds`).

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, _, seeds) in novacron_vm_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), &bytes)?;
            println!("{target}/{name}: {} bytes", bytes.len());
        }
    }
    Ok(())
}
