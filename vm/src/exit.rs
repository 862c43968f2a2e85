//! How a VM's run ended: the reason its VMM gives (in its last event and in the tombstone it
//! leaves for a restarted daemon), in words, and the prefixes by which a failure says more
//! (a migration in doubt, an incoming migration rolled back). Pure: the node's recovery
//! plan and in-doubt rules decide on these without KVM.

use serde::{Deserialize, Serialize};

/// Why a VM stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum ExitReason {
    /// The guest reported EXIT through the paravirtual port.
    GuestExit { status: u64 },
    /// The guest pulsed the i8042 reset line.
    Reset,
    /// Triple fault or power-off.
    Shutdown,
    /// The parent asked it to stop (possibly after a snapshot).
    Stopped,
    /// Something failed; the message says what.
    Failed { message: String },
    /// The VM migrated away: it runs on the destination now.
    MigratedAway,
}

/// A reason a VM stopped, in words.
pub fn describe_reason(reason: &ExitReason) -> String {
    match reason {
        ExitReason::GuestExit { status } => format!("the guest exited with status {status}"),
        ExitReason::Reset => "the guest reset itself".into(),
        ExitReason::Shutdown => "the guest shut down".into(),
        ExitReason::Stopped => "stopped on request".into(),
        ExitReason::Failed { message } => message.clone(),
        ExitReason::MigratedAway => "the VM migrated away".into(),
    }
}

/// How the reason of a failed migration (the control protocol's `MigrationFailed`) begins
/// when the migration ended in doubt (nobody could say whether the destination started the
/// VM): the VM then stays paused here instead of running again.
pub const IN_DOUBT_PREFIX: &str = "in doubt:";

/// How a destination VMM's exit reason begins when it never started the VM it was
/// receiving and never will (the migration rolled back before the switchover, or the state
/// was refused): its tombstone then proves the guest did not run here.
pub const INCOMING_ROLLED_BACK_PREFIX: &str = "incoming migration rolled back:";
