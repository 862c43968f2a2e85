//! What the demo prints, as pure functions of what the nodes report: nodes by short name
//! (`node-001`) with the tail of their PeerId, the member table, the wandering VM's state
//! and progress, and one line per move.

use crate::api::types::{MigrationInfo, VmInfo};
use crate::api::MemberStatus;
use crate::cli::human::{bytes, duration_ms, Table};
use novacron_vm::machine::layout::pv_event;

/// The demo's node names, in start order (`node-001`, ...), with their PeerIds once known.
pub struct Names {
    peers: Vec<Option<String>>,
}

impl Names {
    pub fn new(peers: Vec<Option<String>>) -> Names {
        Names { peers }
    }

    /// `node-00N` for the node at `index`.
    pub fn name(index: usize) -> String {
        format!("node-{:03}", index + 1)
    }

    /// The index of the demo's node with this PeerId.
    pub fn index_of(&self, peer: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.as_deref() == Some(peer))
    }

    /// The short name of a peer: `node-00N`, or a shortened PeerId for a stranger.
    pub fn label(&self, peer: &str) -> String {
        match self.index_of(peer) {
            Some(i) => Names::name(i),
            None => crate::cli::human::short_peer(peer),
        }
    }
}

/// The end of a PeerId, enough to tell the demo's nodes apart in its logs: `…x7Qk2a`.
pub fn peer_tail(peer: &str) -> String {
    let chars: Vec<char> = peer.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(6)..].iter().collect();
    format!("…{tail}")
}

/// Where the wandering VM is, for the table: its node's index and a few words on it.
pub struct VmHere<'a> {
    pub node: usize,
    pub what: &'a str,
}

/// The member table of one node's cell, by demo name; `vm` marks the node holding the VM.
/// Load is left out: every node on this machine reports the same host load.
pub fn members_table(names: &Names, members: &[MemberStatus], vm: Option<&VmHere>) -> String {
    // The demo's nodes in order, then any stranger.
    let mut rows: Vec<(Option<usize>, String, &MemberStatus)> = members
        .iter()
        .map(|m| (names.index_of(&m.peer_id), names.label(&m.peer_id), m))
        .collect();
    rows.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
    let mut t = Table::new(&[
        "NODE",
        "PEER",
        "STATE",
        "VCPUS",
        "MEMORY",
        "FREE SLOTS",
        "VM",
    ])
    .right(&[3, 4, 5]);
    for (_, name, m) in rows {
        let here = vm.filter(|v| names.index_of(&m.peer_id) == Some(v.node));
        t.row(vec![
            name,
            peer_tail(&m.peer_id),
            if m.live { "live" } else { "down" }.into(),
            m.vcpus.to_string(),
            bytes(m.mem_mib << 20),
            m.free_slots.to_string(),
            here.map_or(String::new(), |v| v.what.to_string()),
        ]);
    }
    t.render()
}

/// What changes the table: members, their liveness and slots, where the VM is and its state.
pub fn table_key(members: &[MemberStatus], vm: Option<&VmHere>) -> Vec<(String, bool, u32, bool)> {
    let mut key: Vec<(String, bool, u32, bool)> = members
        .iter()
        .map(|m| (m.peer_id.clone(), m.live, m.free_slots, false))
        .collect();
    key.sort();
    if let Some(v) = vm {
        key.push((format!("vm@{}: {}", v.node, v.what), true, 0, true));
    }
    key
}

/// The guest's last report in words: `pass 1234`, `started`, `exited (status 0)`.
pub fn progress(report: Option<(u32, u64)>) -> String {
    match report {
        None => "no report yet".into(),
        Some((pv_event::STARTED, _)) => "started".into(),
        Some((pv_event::PROGRESS, n)) => format!("pass {n}"),
        Some((pv_event::RESULT, v)) => format!("result {v:#x}"),
        Some((pv_event::EXIT, s)) => format!("exited (status {s})"),
        Some((code, v)) => format!("report {code}: {v}"),
    }
}

/// The VM's state and progress: `running, pass 1234`.
pub fn vm_state(vm: &VmInfo) -> String {
    format!("{}, {}", vm.state.as_str(), progress(vm.last_report))
}

/// One line for a move that ended.
pub fn move_line(vm: &str, from: &str, to: &str, m: &MigrationInfo) -> String {
    let took = m
        .ended_at_ms
        .map(|end| duration_ms(end.saturating_sub(m.started_at_ms)));
    match m.state {
        crate::api::types::MigrationState::Done => format!(
            "{vm} moved {from} -> {to}: {}, downtime {}, {} on the wire{}",
            m.mode.as_str(),
            m.downtime_ms
                .map_or("unknown".into(), |d| format!("{d:.1} ms")),
            bytes(m.wire_bytes),
            took.map_or(String::new(), |t| format!(", took {t}"))
        ),
        _ => format!(
            "{vm} stays on {from}: the move to {to} {} ({})",
            match m.state {
                crate::api::types::MigrationState::Cancelled => "was cancelled",
                _ => "failed",
            },
            m.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{MigrationDirection, MigrationMode, MigrationState, VmState};

    fn member(peer: &str, live: bool) -> MemberStatus {
        MemberStatus {
            peer_id: peer.into(),
            live,
            signed: true,
            vcpus: 2,
            mem_mib: 4096,
            free_slots: 2,
            load_permille: 500,
            version: "0.1.0".into(),
            addrs: vec![],
        }
    }

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaa111";
    const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbb222";
    const X: &str = "12D3KooWXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXxxx999";

    #[test]
    fn nodes_have_short_names_and_their_peer_id_tail() {
        let names = Names::new(vec![Some(A.into()), Some(B.into())]);
        assert_eq!(names.label(B), "node-002");
        assert_eq!(names.label(X), crate::cli::human::short_peer(X));
        let members = vec![member(B, true), member(A, true), member(X, false)];
        let vm = VmHere {
            node: 1,
            what: "wanderer, running",
        };
        let table = members_table(&names, &members, Some(&vm));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{table}");
        let words = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        assert_eq!(words(lines[1]), "node-001 …aaa111 live", "{table}");
        assert_eq!(words(lines[2]), "node-002 …bbb222 live", "{table}");
        assert!(lines[2].ends_with("wanderer, running"), "{table}");
        assert!(
            lines[3].contains("down") && lines[3].contains("…xxx999"),
            "{table}"
        );
        assert!(!table.contains(A), "full PeerIds in the table:\n{table}");
    }

    #[test]
    fn the_table_changes_with_members_and_the_vm_but_not_with_load() {
        let mut members = vec![member(A, true), member(B, true)];
        let here = |node| VmHere {
            node,
            what: "wanderer, running",
        };
        let key = table_key(&members, Some(&here(0)));
        members[0].load_permille = 900;
        members[0].mem_mib -= 100;
        assert_eq!(table_key(&members, Some(&here(0))), key);
        assert_ne!(table_key(&members, Some(&here(1))), key);
        let paused = VmHere {
            node: 0,
            what: "wanderer, paused",
        };
        assert_ne!(table_key(&members, Some(&paused)), key);
        members[1].live = false;
        assert_ne!(table_key(&members, Some(&here(0))), key);
    }

    #[test]
    fn moves_and_progress_read_as_sentences() {
        let mut m = MigrationInfo {
            id: "m1".into(),
            vm_id: "v".into(),
            direction: MigrationDirection::Out,
            peer: B.into(),
            mode: MigrationMode::Live,
            state: MigrationState::Done,
            started_at_ms: 1_000,
            ended_at_ms: Some(3_300),
            downtime_ms: Some(41.25),
            wire_bytes: 3 << 20,
            error: None,
            progress: None,
        };
        assert_eq!(
            move_line("wanderer", "node-002", "node-004", &m),
            "wanderer moved node-002 -> node-004: live, downtime 41.2 ms, 3.0 MiB on the wire, took 2.3 s"
        );
        m.state = MigrationState::Cancelled;
        m.error = Some("cancelled: the demo is stopping".into());
        assert_eq!(
            move_line("wanderer", "node-002", "node-004", &m),
            "wanderer stays on node-002: the move to node-004 was cancelled (cancelled: the demo is stopping)"
        );
        assert_eq!(progress(Some((pv_event::PROGRESS, 12))), "pass 12");
        assert_eq!(progress(None), "no report yet");
        let mut vm = crate::model::fixtures::vm("v", VmState::Running);
        vm.last_report = Some((pv_event::PROGRESS, 5));
        assert_eq!(vm_state(&vm), "running, pass 5");
    }
}
