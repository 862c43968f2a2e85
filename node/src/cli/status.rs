//! `novacron status`: the local node at a glance, from its REST API.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::api_args::{block_on, ApiArgs};
use super::human::{bytes, duration_ms, short_peer};
use super::output::{self, outln};
use crate::api::types::{
    MigrationDirection, MigrationInfo, MigrationState, OwnerSetting, PolitenessInfo, VmInfo,
    VmState,
};
use crate::api::NodeStatus;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print one JSON object: the node, politeness, VMs by state, migrations running.
    #[arg(long)]
    json: bool,
    /// Print only the addresses other nodes join through, one per line (each listen
    /// address with /p2p/PEERID: what `novacron node --bootstrap` takes).
    #[arg(long, conflicts_with = "json")]
    dial_addrs: bool,
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub node: NodeStatus,
    pub politeness: PolitenessInfo,
    /// Every state, zero counts included.
    pub vms_by_state: BTreeMap<&'static str, usize>,
    pub migrations_running: Vec<MigrationInfo>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    if args.dial_addrs {
        let node: NodeStatus = block_on(async { Ok(client.get("/api/v1/node").await?) })?;
        let addrs = dial_addrs(&node);
        if addrs.is_empty() {
            anyhow::bail!("the node listens on no address yet: ask again in a moment");
        }
        for a in addrs {
            outln!("{a}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = block_on(async {
        let node: NodeStatus = client.get("/api/v1/node").await?;
        let politeness: PolitenessInfo = client.get("/api/v1/politeness").await?;
        let vms: Vec<VmInfo> = client.get("/api/v1/vms").await?;
        let migrations: Vec<MigrationInfo> = client.get("/api/v1/migrations").await?;
        Ok(report(node, politeness, &vms, migrations))
    })?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        output::print(&render(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(
    node: NodeStatus,
    politeness: PolitenessInfo,
    vms: &[VmInfo],
    migrations: Vec<MigrationInfo>,
) -> StatusReport {
    let mut vms_by_state: BTreeMap<&'static str, usize> =
        VmState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for vm in vms {
        *vms_by_state.entry(vm.state.as_str()).or_default() += 1;
    }
    StatusReport {
        node,
        politeness,
        vms_by_state,
        migrations_running: migrations
            .into_iter()
            .filter(|m| m.state == MigrationState::Running)
            .collect(),
    }
}

/// The addresses other nodes join the node through (`--bootstrap`): each listen address
/// ending in /p2p/PEERID.
pub fn dial_addrs(n: &NodeStatus) -> Vec<String> {
    n.listen_addrs
        .iter()
        .map(|a| match a.contains("/p2p/") {
            true => a.clone(),
            false => format!("{a}/p2p/{}", n.peer_id),
        })
        .collect()
}

/// The human view: one labelled line per topic.
pub fn render(r: &StatusReport) -> String {
    let n = &r.node;
    let p = &r.politeness;
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        out.push_str(&format!("{label:<11} {text}\n"));
    };
    line(
        "node",
        format!(
            "{}  version {}  up {}",
            n.peer_id,
            n.version,
            duration_ms((n.uptime_s.max(0.0) * 1000.0) as u64)
        ),
    );
    if n.listen_addrs.is_empty() {
        line("addresses", "none yet".into());
    }
    for (i, a) in dial_addrs(n).into_iter().enumerate() {
        line(if i == 0 { "addresses" } else { "" }, a);
    }
    line(
        "peers",
        format!(
            "{} connected, {} in the routing table; {} sent, {} received",
            n.connected_peers,
            n.routing_table_peers,
            bytes(n.wire_sent),
            bytes(n.wire_received)
        ),
    );
    line(
        "cell",
        match &n.cell {
            Some(c) => format!(
                "{}: {} live of {} known; {} cell summaries known",
                c.id,
                c.members.iter().filter(|m| m.live).count(),
                c.members.len(),
                n.summaries.len()
            ),
            None => "none yet (cell membership has not started)".into(),
        },
    );
    let mut polite = format!(
        "{}  cpu cap {}%, memory cap {}",
        p.state,
        p.cpu_cap_percent,
        bytes(p.mem_cap_mib.saturating_mul(1 << 20))
    );
    if let Some(idle) = p.owner_idle_s {
        polite.push_str(&format!(
            ", owner idle {}",
            duration_ms(idle.saturating_mul(1000))
        ));
    }
    if p.owner_override != OwnerSetting::Auto {
        polite.push_str(&format!(", owner set {}", p.owner_override.as_str()));
    }
    if p.on_battery {
        polite.push_str(", on battery");
    }
    if !p.reasons.is_empty() {
        polite.push_str(&format!(" ({})", p.reasons.join("; ")));
    }
    line("politeness", polite);
    let counts: Vec<String> = r
        .vms_by_state
        .iter()
        .filter(|(_, &c)| c > 0)
        .map(|(s, c)| format!("{c} {s}"))
        .collect();
    line(
        "vms",
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        },
    );
    line(
        "migrations",
        if r.migrations_running.is_empty() {
            "none running".into()
        } else {
            r.migrations_running
                .iter()
                .map(|m| {
                    let (dir, prep) = match m.direction {
                        MigrationDirection::Out => ("out", "to"),
                        MigrationDirection::In => ("in", "from"),
                    };
                    format!("{} {dir} {prep} {}", m.vm_id, short_peer(&m.peer))
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::types::MigrationMode;

    pub fn node() -> NodeStatus {
        NodeStatus {
            peer_id: "12D3KooWTestPeer".into(),
            version: "0.1.0".into(),
            uptime_s: 3725.0,
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            connected_peers: 3,
            routing_table_peers: 12,
            wire_sent: 2048,
            wire_received: 5 << 20,
            wire_by_protocol: Vec::new(),
            mesh_size_estimate: 1,
            cell: None,
            summaries: vec![],
        }
    }

    pub fn politeness() -> PolitenessInfo {
        PolitenessInfo {
            state: "run".into(),
            reasons: vec![],
            owner_idle_s: Some(600),
            on_battery: false,
            cpu_cap_percent: 100,
            mem_cap_mib: 2048,
            owner_override: OwnerSetting::Auto,
        }
    }

    #[test]
    fn the_status_shows_every_topic_and_counts_vms_by_state() {
        let mig = MigrationInfo {
            id: "m1".into(),
            vm_id: "vm1".into(),
            direction: MigrationDirection::Out,
            peer: "12D3KooWOtherPeerXYZ".into(),
            mode: MigrationMode::Live,
            state: MigrationState::Running,
            started_at_ms: 0,
            ended_at_ms: None,
            downtime_ms: None,
            wire_bytes: 0,
            error: None,
            progress: None,
        };
        let mut done = mig.clone();
        done.state = MigrationState::Done;
        let r = report(node(), politeness(), &[], vec![mig, done]);
        assert_eq!(r.vms_by_state["running"], 0);
        assert_eq!(r.vms_by_state.len(), VmState::ALL.len());
        assert_eq!(r.migrations_running.len(), 1);
        let text = render(&r);
        for needle in [
            "node        12D3KooWTestPeer  version 0.1.0  up 1h02m",
            "addresses   /ip4/127.0.0.1/tcp/4001/p2p/12D3KooWTestPeer\n",
            "3 connected, 12 in the routing table; 2.0 KiB sent, 5.0 MiB received",
            "cell        none yet",
            "politeness  run  cpu cap 100%, memory cap 2.0 GiB, owner idle 10m00s",
            "vms         none",
            "migrations  vm1 out to 12D3KooW…eerXYZ",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        assert!(!text.contains("owner set"), "{text}");
        let mut set = politeness();
        set.owner_override = OwnerSetting::Active;
        let text = render(&report(node(), set, &[], vec![]));
        assert!(
            text.contains("owner idle 10m00s, owner set active"),
            "{text}"
        );
    }

    #[test]
    fn dial_addresses_end_in_the_peer_id_once() {
        let mut n = node();
        n.listen_addrs
            .push("/ip4/10.0.0.5/udp/4001/quic-v1/p2p/12D3KooWTestPeer".into());
        assert_eq!(
            dial_addrs(&n),
            [
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWTestPeer",
                "/ip4/10.0.0.5/udp/4001/quic-v1/p2p/12D3KooWTestPeer"
            ]
        );
    }
}
