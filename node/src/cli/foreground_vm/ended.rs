//! How a VM run in the foreground ended, as the command's exit code.

use std::process::ExitCode;

use novacron_vm::exit::describe_reason;
use novacron_vm::process::control::ExitReason;

pub(in crate::cli::foreground_vm) fn exit_code(reason: ExitReason) -> anyhow::Result<ExitCode> {
    ended_well(&reason).map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether the VM ended well (the guest halted with status 0, reset or shut down, or the VM
/// was stopped or moved); else what went wrong.
pub(in crate::cli::foreground_vm) fn ended_well(reason: &ExitReason) -> Result<(), String> {
    match reason {
        ExitReason::GuestExit { status: 0 }
        | ExitReason::Stopped
        | ExitReason::Shutdown
        | ExitReason::Reset
        | ExitReason::MigratedAway => Ok(()),
        other => Err(describe_reason(other)),
    }
}
