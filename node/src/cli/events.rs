//! `novacron events`: follows the local node's `/api/v1/events` WebSocket, one line per
//! event (or JSON lines). Exits 0 on Ctrl-C or when the node closes the stream. It shows
//! events from now on only: the node keeps no backlog for the stream.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::api_args::{block_on, interrupts, ApiArgs};
use super::human::{bytes, clock, duration_ms, short_peer};
use super::output::outln;
use crate::api::types::{EventEnvelope, MigrationDirection, NodeEvent};

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only these kinds (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    kind: Vec<Kind>,
    /// One JSON object per event and line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Vm,
    Migration,
    Member,
    Politeness,
    Draining,
    Job,
}

pub fn kind_of(e: &NodeEvent) -> Kind {
    match e {
        NodeEvent::Vm { .. } => Kind::Vm,
        NodeEvent::Migration { .. } => Kind::Migration,
        NodeEvent::Member { .. } => Kind::Member,
        NodeEvent::Politeness { .. } => Kind::Politeness,
        NodeEvent::Draining { .. } => Kind::Draining,
        NodeEvent::Job { .. } => Kind::Job,
    }
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    block_on(async move {
        let mut sigint = interrupts()?;
        let mut ws = client.websocket::<EventEnvelope>("/api/v1/events").await?;
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(ev)) => {
                        if args.kind.is_empty() || args.kind.contains(&kind_of(&ev.event)) {
                            // A reader gone (`| head`) ends the command.
                            if let Err(e) = print_event(&ev, args.json) {
                                ws.close().await;
                                return Err(e);
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        if !args.json {
                            eprintln!("novacron: the node closed the event stream");
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                },
                _ = sigint.recv() => {
                    ws.close().await;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    })
}

/// Prints one event as a line.
pub fn print_event(ev: &EventEnvelope, json: bool) -> anyhow::Result<()> {
    if json {
        print_json_line(ev)
    } else {
        outln!("{}", line(ev))
    }
}

/// One JSON object as a line on stdout.
pub fn print_json_line<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(v)?)
}

/// `HH:MM:SS.mmm  #SEQ  KIND  what happened` (UTC).
pub fn line(ev: &EventEnvelope) -> String {
    let (kind, what) = match &ev.event {
        NodeEvent::Vm { vm } => {
            let mut t = format!("{} {}", vm.id, vm.state.as_str());
            if let Some(d) = &vm.detail {
                t.push_str(&format!(": {d}"));
            }
            if let Some(pid) = vm.pid {
                t.push_str(&format!(" (pid {pid})"));
            }
            ("vm", t)
        }
        NodeEvent::Migration { migration: m } => {
            let (dir, prep) = match m.direction {
                MigrationDirection::Out => ("out", "to"),
                MigrationDirection::In => ("in", "from"),
            };
            let mut t = format!(
                "{} {dir} vm {} {prep} {}: {}",
                m.id,
                m.vm_id,
                short_peer(&m.peer),
                match m.state {
                    crate::api::types::MigrationState::Running => "running",
                    crate::api::types::MigrationState::Done => "done",
                    crate::api::types::MigrationState::Failed => "failed",
                    crate::api::types::MigrationState::Cancelled => "cancelled",
                }
            );
            if let Some(p) = &m.progress {
                t.push_str(&format!(
                    " ({} round {}, {} on the wire, {}/s)",
                    p.phase,
                    p.round,
                    bytes(p.wire_bytes),
                    bytes(p.bandwidth_bps)
                ));
            }
            if let Some(d) = m.downtime_ms {
                t.push_str(&format!(", downtime {d:.1} ms"));
            }
            if let Some(e) = &m.error {
                t.push_str(&format!(": {e}"));
            }
            ("migration", t)
        }
        NodeEvent::Member { peer_id, live } => (
            "member",
            format!("{peer_id} {}", if *live { "up" } else { "down" }),
        ),
        NodeEvent::Politeness { politeness: p } => {
            let mut t = p.state.clone();
            if !p.reasons.is_empty() {
                t.push_str(&format!(" ({})", p.reasons.join("; ")));
            }
            ("politeness", t)
        }
        NodeEvent::Draining { deadline_s } => (
            "draining",
            format!(
                "VMs move away within {}",
                duration_ms(deadline_s.saturating_mul(1000))
            ),
        ),
        NodeEvent::Job { job } => {
            let mut t = format!("{} {}", &job.id[..job.id.len().min(12)], job.state.as_str());
            let running = job
                .replicas
                .iter()
                .filter(|r| r.state == crate::model::ReplicaState::Running)
                .count();
            t.push_str(&format!(
                " ({running} of {} replicas running)",
                job.replicas.len()
            ));
            if let Some(d) = &job.detail {
                t.push_str(&format!(": {d}"));
            }
            ("job", t)
        }
    };
    format!("{}  #{:<5} {kind:<10} {what}", clock(ev.at_ms), ev.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::VmState;

    #[test]
    fn each_kind_reads_as_one_line() {
        let vm = crate::model::fixtures::vm("abc", VmState::Running);
        let ev = EventEnvelope {
            seq: 7,
            at_ms: 3_723_004,
            event: NodeEvent::Vm { vm: Box::new(vm) },
        };
        assert_eq!(
            line(&ev),
            "01:02:03.004  #7     vm         abc running (pid 42)"
        );
        assert_eq!(kind_of(&ev.event), Kind::Vm);
        let ev = EventEnvelope {
            seq: 8,
            at_ms: 0,
            event: NodeEvent::Member {
                peer_id: "p".into(),
                live: false,
            },
        };
        assert!(line(&ev).ends_with("member     p down"), "{}", line(&ev));
        let ev = EventEnvelope {
            seq: 9,
            at_ms: 0,
            event: NodeEvent::Draining { deadline_s: 120 },
        };
        assert!(
            line(&ev).ends_with("VMs move away within 2m00s"),
            "{}",
            line(&ev)
        );
    }
}
