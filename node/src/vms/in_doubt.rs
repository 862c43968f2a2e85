//! A migration in doubt: its streams broke after the VM's state left, so the source could
//! not know whether the destination started the VM, and its VMM ended the migration with the
//! VM paused here (or a restart found it so). Its record is failed with an error beginning
//! [`IN_DOUBT_PREFIX`]; it is not settled ([`settled`]) and counts as neither done nor failed
//! until it is.

use novacron_vm::control::IN_DOUBT_PREFIX;

use crate::api::types::{MigrationDirection, MigrationInfo, MigrationState};

/// Whether `m` is an outgoing migration that ended in doubt and has not settled since.
pub fn in_doubt(m: &MigrationInfo) -> bool {
    m.direction == MigrationDirection::Out
        && m.state == MigrationState::Failed
        && m.error
            .as_deref()
            .is_some_and(|e| e.starts_with(IN_DOUBT_PREFIX))
}

/// Whether `m` has its final outcome: ended, and not in doubt.
pub fn settled(m: &MigrationInfo) -> bool {
    m.state.is_final() && !in_doubt(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::MigrationMode;

    fn migration(
        direction: MigrationDirection,
        state: MigrationState,
        error: &str,
    ) -> MigrationInfo {
        MigrationInfo {
            id: "00112233aabbccdd".into(),
            vm_id: "v".into(),
            direction,
            peer: "p".into(),
            mode: MigrationMode::Live,
            state,
            started_at_ms: 1,
            ended_at_ms: Some(2),
            downtime_ms: None,
            wire_bytes: 0,
            error: (!error.is_empty()).then(|| error.to_string()),
            progress: None,
        }
    }

    #[test]
    fn only_an_outgoing_failure_in_doubt_is_unsettled_among_ended_migrations() {
        use MigrationDirection::{In, Out};
        let doubt = format!("{IN_DOUBT_PREFIX} nobody could say");
        let m = migration(Out, MigrationState::Failed, &doubt);
        assert!(in_doubt(&m) && !settled(&m));
        let resumed = format!("resumed here by an operator after: {doubt}");
        for (direction, state, error) in [
            (Out, MigrationState::Done, ""),
            (Out, MigrationState::Failed, "link down"),
            (Out, MigrationState::Failed, resumed.as_str()),
            (Out, MigrationState::Cancelled, ""),
            (In, MigrationState::Failed, doubt.as_str()),
            (In, MigrationState::Done, ""),
        ] {
            let m = migration(direction, state, error);
            assert!(!in_doubt(&m) && settled(&m), "{m:?}");
        }
        let open = migration(Out, MigrationState::Running, "");
        assert!(!in_doubt(&open) && !settled(&open));
    }
}
