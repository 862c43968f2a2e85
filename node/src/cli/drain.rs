//! `novacron drain`: asks the local node to move every VM away (`POST /api/v1/drain`),
//! then follows its events, printing VM moves, until no VM is active on it (exit 0) or
//! the deadline (plus a short grace) passes (exit 1, naming the VMs still here).
//!
//! The event stream is opened before the drain is asked for and the VM list read after,
//! so no move is missed. What it cannot do: undo a drain (the node decides when to take
//! VMs again).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::api_args::{block_on, interrupts, ApiArgs};
use super::events::line;
use super::output::outln;
use crate::api::types::{EventEnvelope, NodeEvent, VmInfo, VmState};

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// Seconds the node has to move every VM away.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    deadline: u64,
    /// JSON lines: each VM and migration event, then a summary object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Time after the deadline to let the node report the last moves.
const GRACE: Duration = Duration::from_secs(10);

/// The VMs still active on the node, as events report them.
#[derive(Debug, Default)]
pub struct Tracker {
    active: BTreeMap<String, VmState>,
}

/// The last line `drain --json` prints.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub drained: bool,
    /// VMs still active, with their state.
    pub active: BTreeMap<String, VmState>,
}

impl Tracker {
    pub fn new(vms: &[VmInfo]) -> Tracker {
        Tracker {
            active: vms
                .iter()
                .filter(|v| v.state.is_active())
                .map(|v| (v.id.clone(), v.state))
                .collect(),
        }
    }

    /// Takes an event in; whether it is worth showing (a VM or migration change, the
    /// drain itself).
    pub fn apply(&mut self, event: &NodeEvent) -> bool {
        match event {
            NodeEvent::Vm { vm } => {
                let before = self.active.get(&vm.id).copied();
                if vm.state.is_active() {
                    self.active.insert(vm.id.clone(), vm.state);
                } else {
                    self.active.remove(&vm.id);
                }
                before != Some(vm.state)
            }
            NodeEvent::Migration { .. } | NodeEvent::Draining { .. } => true,
            NodeEvent::Member { .. } | NodeEvent::Politeness { .. } | NodeEvent::Job { .. } => {
                false
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.active.is_empty()
    }

    pub fn summary(&self) -> Summary {
        Summary {
            drained: self.is_done(),
            active: self.active.clone(),
        }
    }

    /// "3 VMs still active: a (running), b (migrating)".
    pub fn remaining_text(&self) -> String {
        let list: Vec<String> = self
            .active
            .iter()
            .map(|(id, s)| format!("{id} ({})", s.as_str()))
            .collect();
        format!("{} VMs still active: {}", list.len(), list.join(", "))
    }
}

pub fn run(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    block_on(async move {
        let mut sigint = interrupts()?;
        let mut ws = client.websocket::<EventEnvelope>("/api/v1/events").await?;
        let vms: Vec<VmInfo> = client.get("/api/v1/vms").await?;
        let mut tracker = Tracker::new(&vms);
        client
            .post_ignore(
                "/api/v1/drain",
                &serde_json::json!({ "deadline_s": args.deadline }),
            )
            .await
            .context("the node did not take the drain request")?;
        // A reader gone (`| head`) ends the command; the node keeps draining.
        let say = |text: String| match args.json {
            true => Ok(()),
            false => outln!("{text}"),
        };
        say(format!(
            "draining: {} within {} s",
            if tracker.is_done() {
                "no VM active".to_string()
            } else {
                tracker.remaining_text()
            },
            args.deadline
        ))?;
        let until = tokio::time::Instant::now() + Duration::from_secs(args.deadline) + GRACE;
        let outcome = loop {
            if tracker.is_done() {
                break Ok(());
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(ev)) => {
                        if tracker.apply(&ev.event) {
                            if args.json {
                                super::events::print_event(&ev, true)?;
                            } else {
                                say(line(&ev))?;
                            }
                        }
                    }
                    Some(Err(e)) => break Err(anyhow::Error::from(e)),
                    None => {
                        // The node closed the stream (it may be exiting): ask once more.
                        match client.get::<Vec<VmInfo>>("/api/v1/vms").await {
                            Ok(vms) => tracker = Tracker::new(&vms),
                            Err(e) => break Err(anyhow::Error::from(e)
                                .context(format!("the node closed its event stream with {}", tracker.remaining_text()))),
                        }
                        break if tracker.is_done() {
                            Ok(())
                        } else {
                            Err(anyhow::anyhow!("the node closed its event stream with {}", tracker.remaining_text()))
                        };
                    }
                },
                _ = tokio::time::sleep_until(until) => {
                    break Err(anyhow::anyhow!(
                        "the {} s deadline passed with {}",
                        args.deadline,
                        tracker.remaining_text()
                    ));
                }
                _ = sigint.recv() => {
                    break Err(anyhow::anyhow!(
                        "stopped following (the node keeps draining) with {}",
                        tracker.remaining_text()
                    ));
                }
            }
        };
        if args.json {
            super::events::print_json_line(&tracker.summary())?;
        }
        match outcome {
            Ok(()) => {
                say("drained: no VM is active on the node".into())?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("novacron: {e:#}");
                Ok(ExitCode::from(1))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::vm;

    #[test]
    fn the_tracker_is_done_when_every_vm_left() {
        let mut t = Tracker::new(&[
            vm("a", VmState::Running),
            vm("b", VmState::Paused),
            vm("c", VmState::Exited),
        ]);
        assert!(!t.is_done());
        assert_eq!(
            t.remaining_text(),
            "2 VMs still active: a (running), b (paused)"
        );
        let ev = |id: &str, s: VmState| NodeEvent::Vm {
            vm: Box::new(vm(id, s)),
        };
        assert!(t.apply(&ev("a", VmState::Migrating)));
        assert!(
            !t.apply(&ev("a", VmState::Migrating)),
            "no change, nothing to show"
        );
        assert!(t.apply(&ev("a", VmState::MovedAway)));
        assert!(!t.apply(&NodeEvent::Member {
            peer_id: "p".into(),
            live: true
        }));
        assert!(!t.is_done());
        assert!(t.apply(&ev("b", VmState::Suspended)));
        assert!(t.is_done());
        assert_eq!(
            t.summary(),
            Summary {
                drained: true,
                active: BTreeMap::new()
            }
        );
    }
}
