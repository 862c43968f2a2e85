//! The mesh overview: how many nodes, this node's cell member by member, the other cells
//! from their signed summaries, the last hour's churn, and the mesh's capacity.

use leptos::prelude::*;
use novacron_model::{CellStatus, NodeStatus, SummaryStatus};

use super::{badge, card};
use crate::format;
use crate::history::ChurnCounts;

/// What the overview shows.
#[derive(Clone, Debug)]
pub struct OverviewData {
    pub status: NodeStatus,
    pub churn: ChurnCounts,
    pub now_ms: u64,
}

/// The mesh's capacity: this cell from its members, the others from their newest summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MeshTotals {
    /// Live nodes known: this cell's live members and the members other cells' summaries count.
    pub live_nodes: u64,
    pub cells: u64,
    pub vcpus: u64,
    pub free_vcpus: u64,
    /// Memory of the live members (members gossip their memory and free VM slots, not their
    /// free memory: the slots are what the mesh can still take).
    pub memory_mib: u64,
    pub free_slots: u64,
}

/// The newest summary of each cell other than `own`.
pub fn other_cells<'a>(
    summaries: &'a [SummaryStatus],
    own: Option<&str>,
) -> Vec<&'a SummaryStatus> {
    let mut newest: std::collections::BTreeMap<&str, &SummaryStatus> = Default::default();
    for s in summaries.iter().filter(|s| Some(s.cell.as_str()) != own) {
        let keep = newest
            .get(s.cell.as_str())
            .is_none_or(|k| k.issued_at < s.issued_at);
        if keep {
            newest.insert(s.cell.as_str(), s);
        }
    }
    newest.into_values().collect()
}

/// Adds up [`MeshTotals`].
pub fn mesh_totals(status: &NodeStatus) -> MeshTotals {
    let mut t = MeshTotals::default();
    let own = status.cell.as_ref();
    if let Some(cell) = own {
        t.cells = 1;
        for m in cell.live_members() {
            t.live_nodes += 1;
            t.vcpus += u64::from(m.vcpus);
            let idle = 1.0 - (f64::from(m.load_permille.min(1000)) / 1000.0);
            t.free_vcpus += (f64::from(m.vcpus) * idle).floor() as u64;
            t.memory_mib += m.mem_mib;
            t.free_slots += u64::from(m.free_slots);
        }
    }
    for s in other_cells(&status.summaries, own.map(|c| c.id.as_str())) {
        t.cells += 1;
        t.live_nodes += u64::from(s.members);
        t.vcpus += s.total_vcpus;
        t.free_vcpus += s.free_vcpus;
        t.memory_mib += s.total_memory_mib;
        t.free_slots += s.free_slots;
    }
    t
}

pub fn render(d: OverviewData) -> impl IntoView {
    let t = mesh_totals(&d.status);
    let cards = view! {
        <div class="cards" data-live="totals">
            {card("Nodes live", t.live_nodes.to_string(), format!("estimate {} in the mesh", d.status.mesh_size_estimate))}
            {card("Cells", t.cells.to_string(), "this one and those with summaries".to_string())}
            {card("vCPUs free", format!("{} / {}", t.free_vcpus, t.vcpus), "free / total".to_string())}
            {card("Memory", format::mib(t.memory_mib), "in the live nodes".to_string())}
            {card("Free slots", t.free_slots.to_string(), "VMs the mesh can still take now".to_string())}
            {card("Churn, last hour", format!("+{} −{}", d.churn.joins, d.churn.leaves), format!("{} failures detected", d.churn.failures))}
        </div>
    };
    let cell = d.status.cell.clone();
    let others: Vec<SummaryStatus> =
        other_cells(&d.status.summaries, cell.as_ref().map(|c| c.id.as_str()))
            .into_iter()
            .cloned()
            .collect();
    view! {
        <h1>"Mesh"</h1>
        {cards}
        <section class="panel" data-live="members">{members_table(cell, &d.status.peer_id)}</section>
        <section class="panel" data-live="cells">{cells_table(others, d.now_ms)}</section>
    }
}

fn members_table(cell: Option<CellStatus>, me: &str) -> impl IntoView {
    let Some(cell) = cell else {
        return view! { <h2>"This cell"</h2><p class="muted">"Not in a cell yet: joining the mesh…"</p> }.into_any();
    };
    let live = cell.live_members().count();
    let total = cell.members.len();
    let rows = cell
        .members
        .into_iter()
        .map(|m| {
            let state = if m.live { badge("live", "good") } else { badge("dead", "bad") };
            let you = (m.peer_id == me).then_some(" (this node)");
            let signed = if m.signed { "" } else { " · unsigned" };
            view! {
                <tr data-peer=m.peer_id.clone()>
                    <td class="mono" title=m.peer_id.clone()>{format::short_peer(&m.peer_id)}{you}</td>
                    <td>{state}<span class="muted">{signed}</span></td>
                    <td>{m.version}</td>
                    <td class="num">{format::permille(m.load_permille)}</td>
                    <td class="num">{m.vcpus}</td>
                    <td class="num">{format::mib(m.mem_mib)}</td>
                    <td class="num">{m.free_slots}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h2>"This cell " <span class="mono">{cell.id}</span> " · " {live} " live of " {total}</h2>
        <div class="scroll">
            <table>
                <thead><tr>
                    <th>"Member"</th><th>"State"</th><th>"Version"</th><th class="num">"Load"</th>
                    <th class="num">"vCPUs"</th><th class="num">"Memory"</th><th class="num">"Free slots"</th>
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
    .into_any()
}

fn cells_table(others: Vec<SummaryStatus>, now_ms: u64) -> impl IntoView {
    if others.is_empty() {
        return view! { <h2>"Other cells"</h2><p class="muted">"No summary of another cell yet (a small mesh is one cell)."</p> }.into_any();
    }
    let rows = others
        .into_iter()
        .map(|s| {
            view! {
                <tr>
                    <td class="mono">{s.cell}</td>
                    <td class="num">{s.members}</td>
                    <td class="num">{format!("{} / {}", s.free_vcpus, s.total_vcpus)}</td>
                    <td class="num">{format::mib(s.total_memory_mib)}</td>
                    <td class="num">{s.free_slots}</td>
                    <td class="num">{format::permille(s.mean_load_permille)}</td>
                    <td class="mono" title=s.signer.clone()>{format::short_peer(&s.signer)}</td>
                    <td>{format::age(s.issued_at.saturating_mul(1000), now_ms)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <h2>"Other cells"</h2>
        <div class="scroll">
            <table>
                <thead><tr>
                    <th>"Cell"</th><th class="num">"Members"</th><th class="num">"vCPUs free / total"</th>
                    <th class="num">"Memory"</th><th class="num">"Free slots"</th><th class="num">"Mean load"</th>
                    <th>"Signed by"</th><th>"Issued"</th>
                </tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
    .into_any()
}

/// A node status with a cell of three and two summaries, for the pages' tests.
#[cfg(test)]
pub(crate) fn tests_status() -> NodeStatus {
    tests::status()
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::MemberStatus;

    fn member(peer: &str, live: bool, vcpus: u32, load: u32) -> MemberStatus {
        MemberStatus {
            peer_id: peer.into(),
            live,
            signed: true,
            vcpus,
            mem_mib: 4096,
            free_slots: 2,
            load_permille: load,
            version: "0.1.0".into(),
            addrs: vec![],
        }
    }

    fn summary(cell: &str, issued_at: u64, members: u32) -> SummaryStatus {
        SummaryStatus {
            cell: cell.into(),
            signer: "12D3KooWRepresentative".into(),
            issued_at,
            members,
            total_vcpus: 8 * u64::from(members),
            free_vcpus: 4 * u64::from(members),
            total_memory_mib: 1024 * u64::from(members),
            free_slots: u64::from(members),
            mean_load_permille: 500,
        }
    }

    pub(crate) fn status() -> NodeStatus {
        NodeStatus {
            peer_id: "12D3KooWSelf0001".into(),
            version: "0.1.0".into(),
            uptime_s: 12.0,
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            connected_peers: 2,
            routing_table_peers: 2,
            wire_sent: 1,
            wire_received: 2,
            wire_by_protocol: Vec::new(),
            mesh_size_estimate: 23,
            cell: Some(CellStatus {
                id: "1/0".into(),
                members: vec![
                    member("12D3KooWSelf0001", true, 4, 250),
                    member("12D3KooWPeer0002", true, 2, 0),
                    member("12D3KooWDead0003", false, 8, 0),
                ],
                gossip_sent: 10,
                gossip_received: 20,
                gossip_interval_ms: 1000,
            }),
            summaries: vec![
                summary("1/0", 5, 3),
                summary("1/1", 5, 10),
                summary("1/1", 9, 20),
            ],
        }
    }

    #[test]
    fn totals_count_live_members_here_and_the_newest_summary_elsewhere() {
        let t = mesh_totals(&status());
        assert_eq!(t.cells, 2);
        assert_eq!(
            t.live_nodes,
            2 + 20,
            "the dead member and the older summary are not counted"
        );
        assert_eq!(t.vcpus, 6 + 160);
        assert_eq!(t.free_vcpus, 3 + 2 + 80);
        assert_eq!(t.free_slots, 4 + 20);
        assert_eq!(t.memory_mib, 8192 + 20 * 1024);
    }

    #[test]
    fn the_overview_shows_members_cells_and_churn() {
        let html = render(OverviewData {
            status: status(),
            churn: ChurnCounts {
                joins: 3,
                leaves: 1,
                failures: 2,
            },
            now_ms: 10_000,
        })
        .to_html();
        for want in [
            "Nodes live",
            "estimate 23 in the mesh",
            "…Dead0003",
            ">dead<",
            "(this node)",
            "2 failures detected",
            "+3 −1",
            "<td class=\"mono\">1/1</td>",
            "data-live=\"members\"",
        ] {
            assert!(html.contains(want), "{want} missing: {html}");
        }
        let lone = NodeStatus {
            cell: None,
            summaries: vec![],
            ..status()
        };
        let html = render(OverviewData {
            status: lone,
            churn: ChurnCounts::default(),
            now_ms: 0,
        })
        .to_html();
        assert!(html.contains("Not in a cell yet"), "{html}");
    }
}
