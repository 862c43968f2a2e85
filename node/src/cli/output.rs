//! What the commands print on stdout, without panicking when nobody reads it any more.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader is gone (`novacron events |
//! head`) fails with EPIPE — and `println!` panics on it. Every command prints through
//! [`print`] (or [`outln!`]) instead: a closed stdout becomes the error [`StdoutClosed`],
//! the command stops as if interrupted (the demo stops its nodes and removes its directory
//! first) and `main` exits quietly with [`STDOUT_CLOSED_EXIT`], what a shell reports for a
//! program killed by SIGPIPE, so `set -o pipefail` scripts still see it. Any other write
//! error (a full disk) is an ordinary error, exit status 1.

use std::io::Write;

/// Stdout's reader went away (EPIPE).
#[derive(Debug, thiserror::Error)]
#[error("stdout is closed: its reader went away")]
pub struct StdoutClosed;

/// The exit status of a command whose stdout closed: 128 + SIGPIPE.
pub const STDOUT_CLOSED_EXIT: u8 = 128 + libc::SIGPIPE as u8;

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    write_to(&mut std::io::stdout().lock(), text)
}

/// Writes `text` to `out` and flushes it: [`StdoutClosed`] on EPIPE.
pub fn write_to(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Whether `e` (or one of its causes) is a closed stdout.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<StdoutClosed>())
}

/// Writes a line on stderr; a closed or broken stderr is ignored (`eprintln!` would panic),
/// as there is nowhere left to report it.
/// The progress bar of a migration on a terminal, starting at the VM's size in bytes (both
/// `novacron vm migrate` and `novacron migrate` show it).
pub fn migration_bar(mem_bytes: u64) -> indicatif::ProgressBar {
    progress_bar(
        mem_bytes,
        "{spinner} migrating [{bar:30}] {bytes}/{total_bytes} {wide_msg}",
    )
}

/// A progress bar of `len` steps drawn with `template` (indicatif's syntax).
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// `println!` through [`print`]: evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    () => {
        $crate::cli::output::print("\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader is gone.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_is_its_own_error_and_others_are_plain_errors() {
        let mut v = Vec::new();
        write_to(&mut v, "a\n").unwrap();
        assert_eq!(v, b"a\n");
        let closed = write_to(&mut ClosedPipe, "a\n").unwrap_err();
        assert!(is_stdout_closed(&closed));
        assert!(is_stdout_closed(&closed.context("printing the table")));
        let full = write_to(&mut Full, "a\n").unwrap_err();
        assert!(!is_stdout_closed(&full));
        assert!(
            format!("{full:#}").contains("cannot write to stdout"),
            "{full:#}"
        );
        assert_eq!(STDOUT_CLOSED_EXIT, 141);
    }
}
