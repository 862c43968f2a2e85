//! Paths given on the command line, made absolute (the VMM runs in a jail elsewhere).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The absolute path of a file the VMM will read, checked now so the error is plain.
pub(in crate::cli::foreground_vm) fn readable_file(
    what: &str,
    p: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::File::open(p).with_context(|| format!("cannot read {what} {}", p.display()))?;
    absolute(p)
}

pub(in crate::cli::foreground_vm) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))
}
