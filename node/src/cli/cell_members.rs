//! `novacron nodes`: the live members of the local node's cell, from its REST API.

use std::process::ExitCode;

use clap::Args;

use super::api_args::{block_on, ApiArgs};
use super::output::{self, outln};
use crate::api::{CellStatus, NodeStatus, SummaryStatus};

#[derive(Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Every member, the dead ones too.
    #[arg(long)]
    all: bool,
    /// Print the node's whole status as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: NodesArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    let status: NodeStatus = block_on(async { Ok(client.get("/api/v1/node").await?) })?;
    if args.json {
        outln!("{}", serde_json::to_string(&status)?)?;
    } else {
        output::print(&table(&status, args.all))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The human view: one header line, then one line per member.
pub(crate) fn table(status: &NodeStatus, all: bool) -> String {
    let mut out = format!(
        "node {}  up {:.0} s  {} connected, {} in the routing table, {} B sent / {} B received\n",
        status.peer_id,
        status.uptime_s,
        status.connected_peers,
        status.routing_table_peers,
        status.wire_sent,
        status.wire_received
    );
    let Some(cell) = &status.cell else {
        out.push_str("no cell yet\n");
        return out;
    };
    out.push_str(&members_table(cell, all));
    out.push_str(&summaries_table(&status.summaries));
    out
}

fn members_table(cell: &CellStatus, all: bool) -> String {
    let mut out = String::new();
    let live = cell.members.iter().filter(|m| m.live).count();
    out.push_str(&format!(
        "cell {}: {live} live of {} known\n",
        cell.id,
        cell.members.len()
    ));
    out.push_str(&format!(
        "{:<52}  {:<4}  {:<6}  {:>5}  {:>9}  {:>5}  {:>6}  {}\n",
        "PEER", "STATE", "RECORD", "VCPUS", "MEM MiB", "SLOTS", "LOAD", "VERSION"
    ));
    for m in cell.members.iter().filter(|m| all || m.live) {
        out.push_str(&format!(
            "{:<52}  {:<4}  {:<6}  {:>5}  {:>9}  {:>5}  {:>5.1}%  {}\n",
            m.peer_id,
            if m.live { "live" } else { "dead" },
            if m.signed { "signed" } else { "-" },
            m.vcpus,
            m.mem_mib,
            m.free_slots,
            f64::from(m.load_permille) / 10.0,
            m.version
        ));
    }
    out
}

/// The cell summaries known, one line per (cell, signer); capacities are self-reported.
fn summaries_table(summaries: &[SummaryStatus]) -> String {
    if summaries.is_empty() {
        return "no cell summaries known yet\n".into();
    }
    let mut out = format!(
        "{} cell summaries (self-reported capacity):\n",
        summaries.len()
    );
    out.push_str(&format!(
        "{:<12}  {:>7}  {:>9}  {:>11}  {:>5}  {:>6}  {}\n",
        "CELL", "MEMBERS", "VCPUS", "MEM MiB", "SLOTS", "LOAD", "SIGNED BY"
    ));
    for s in summaries {
        out.push_str(&format!(
            "{:<12}  {:>7}  {:>4}/{:<4}  {:>11}  {:>5}  {:>5.1}%  {}\n",
            s.cell,
            s.members,
            s.free_vcpus,
            s.total_vcpus,
            s.total_memory_mib,
            s.free_slots,
            f64::from(s.mean_load_permille) / 10.0,
            s.signer
        ));
    }
    out
}
