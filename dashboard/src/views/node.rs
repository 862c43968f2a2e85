//! This node: who it is, where it listens, how long it has run, what the politeness policy
//! allows and why, its VMs, its recent events, and charts of CPU, memory, network and gossip
//! bytes from the ring of samples it keeps. Actions: the owner override and drain.

use leptos::prelude::*;
use novacron_model::{
    EventEnvelope, MigrationState, NodeEvent, NodeStatus, PolitenessInfo, VmInfo,
};

use super::{badge, card, csrf_field, tone_of_vm};
use crate::chart::{line_chart, Series, Unit};
use crate::format;
use crate::history::Sample;

/// Recent events shown at most.
pub const MAX_EVENTS: usize = 50;

#[derive(Clone, Debug)]
pub struct NodeData {
    pub status: NodeStatus,
    pub politeness: PolitenessInfo,
    /// VMs on this node (active ones first is the caller's choice).
    pub vms: Vec<VmInfo>,
    /// Recent events, newest first.
    pub events: Vec<EventEnvelope>,
    /// The history ring, oldest first.
    pub samples: Vec<Sample>,
    /// The drain deadline (seconds) when the node is draining.
    pub draining: Option<u64>,
    pub csrf: String,
    pub now_ms: u64,
}

/// What the politeness state means for people.
pub fn politeness_words(p: &PolitenessInfo) -> (&'static str, &'static str) {
    match p.state.as_str() {
        "run" => ("running jobs", "good"),
        "throttled" => ("throttled", "warn"),
        "evacuate" => ("moving VMs away", "warn"),
        "suspended" => ("suspended", "bad"),
        _ => ("unknown", "idle"),
    }
}

/// The events worth a line: a running migration's progress reports (many a second) only
/// as its latest one.
pub fn worth_showing(events: &[EventEnvelope]) -> Vec<&EventEnvelope> {
    let mut progress_shown = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| match &e.event {
            NodeEvent::Migration { migration: m } if m.state == MigrationState::Running => {
                progress_shown.insert(m.id.as_str())
            }
            _ => true,
        })
        .take(MAX_EVENTS)
        .collect()
}

/// One line for an event.
pub fn describe(e: &NodeEvent) -> String {
    match e {
        NodeEvent::Vm { vm } => format!("VM {} {}", vm.id, vm.state.as_str()),
        NodeEvent::Migration { migration: m } => match (&m.progress, m.state) {
            (Some(p), MigrationState::Running) => {
                format!("migration of {} running: {}", m.vm_id, p.phase)
            }
            _ => format!("migration of {} {}", m.vm_id, m.state.as_str()),
        },
        NodeEvent::Member { peer_id, live } => format!(
            "member {} {}",
            format::short_peer(peer_id),
            if *live { "up" } else { "down" }
        ),
        NodeEvent::Politeness { politeness } => format!("politeness: {}", politeness.state),
        NodeEvent::Draining { deadline_s } => format!("draining within {deadline_s} s"),
        NodeEvent::Job { job } => {
            format!("job {} {}", format::short_hash(&job.id), job.state.as_str())
        }
    }
}

pub fn render(d: NodeData) -> impl IntoView {
    let s = &d.status;
    let (words, tone) = politeness_words(&d.politeness);
    let reasons = if d.politeness.reasons.is_empty() {
        "nothing holds it back".to_string()
    } else {
        d.politeness.reasons.join("; ")
    };
    let active = d.vms.iter().filter(|v| v.state.is_active()).count();
    let cards = view! {
        <div class="cards" data-live="node-cards">
            {card("Uptime", format::duration_ms((s.uptime_s * 1000.0) as u64), format!("version {}", s.version))}
            {card("Peers", s.connected_peers.to_string(), format!("{} in the routing table", s.routing_table_peers))}
            {card("VMs here", active.to_string(), format!("{} known", d.vms.len()))}
            {card("Wire", format::bytes(s.wire_sent + s.wire_received), format!("{} out, {} in", format::bytes(s.wire_sent), format::bytes(s.wire_received)))}
        </div>
    };
    let draining = d.draining.map(|secs| view! { <p class="notice error">{format!("Draining: VMs leave within {secs} s, then the node stops.")}</p> });
    let addrs = s
        .listen_addrs
        .iter()
        .map(|a| view! { <li class="mono">{a.clone()}</li> })
        .collect_view();
    let cell = s
        .cell
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_else(|| "none yet".into());
    let politeness = view! {
        <section class="panel" data-live="politeness">
            <h2>"Politeness"</h2>
            <p>{badge(words, tone)} " " <span id="politeness-reason">{reasons}</span></p>
            <dl class="facts">
                <dt>"Owner override"</dt><dd id="owner-override">{d.politeness.owner_override.as_str()}</dd>
                <dt>"Owner idle for"</dt><dd>{d.politeness.owner_idle_s.map(|s| format::duration_ms(s * 1000)).unwrap_or("unknown".into())}</dd>
                <dt>"On battery"</dt><dd>{if d.politeness.on_battery { "yes" } else { "no" }}</dd>
                <dt>"CPU cap"</dt><dd>{format!("{}% of each CPU", d.politeness.cpu_cap_percent)}</dd>
                <dt>"Memory cap"</dt><dd>{format::mib(d.politeness.mem_cap_mib)}</dd>
            </dl>
        </section>
    };
    let actions = view! {
        <section class="panel">
            <h2>"Owner and drain"</h2>
            <form class="inline" method="post" action="/node/owner">
                {csrf_field(&d.csrf)}
                <label for="owner">"I am"</label>
                <select id="owner" name="owner">
                    <option value="auto">"auto (let the node judge)"</option>
                    <option value="active">"using this machine"</option>
                    <option value="idle">"away"</option>
                </select>
                <button type="submit">"Set"</button>
            </form>
            <form class="inline" method="post" action="/node/drain">
                {csrf_field(&d.csrf)}
                <label for="deadline">"Drain within"</label>
                <input id="deadline" name="deadline_s" type="number" min="1" max="3600" value="60" size="5"/>
                <span>"s"</span>
                <button type="submit" class="danger">"Drain node"</button>
            </form>
        </section>
    };
    let here: Vec<&VmInfo> = d.vms.iter().filter(|v| v.state.is_active()).collect();
    let vms = if here.is_empty() {
        view! { <p class="muted">"No VM runs here now."</p> }.into_any()
    } else {
        let items = here
            .into_iter()
            .map(|v| view! { <li><a class="mono" href=format!("/vms?q={}", v.id)>{v.id.clone()}</a> " " {badge(v.state.as_str(), tone_of_vm(v.state))}</li> })
            .collect_view();
        view! { <ul>{items}</ul> }.into_any()
    };
    let now_ms = d.now_ms;
    let events = worth_showing(&d.events)
        .into_iter()
        .map(|e| view! { <li><span class="muted">{format!("{}: ", format::age(e.at_ms, now_ms))}</span>{describe(&e.event)}</li> })
        .collect_view();
    view! {
        <h1>"Node"</h1>
        {draining}
        {cards}
        <div class="grid2">
            <section class="panel">
                <h2>"Identity"</h2>
                <dl class="facts">
                    <dt>"PeerId"</dt><dd class="mono">{s.peer_id.clone()}</dd>
                    <dt>"Cell"</dt><dd class="mono">{cell}</dd>
                    <dt>"Addresses"</dt><dd><ul>{addrs}</ul></dd>
                </dl>
            </section>
            {politeness}
        </div>
        {actions}
        <section class="panel" data-live="charts">{charts(&d.samples, now_ms)}</section>
        <div class="grid2">
            <section class="panel" data-live="node-vms"><h2>"VMs here"</h2>{vms}</section>
            <section class="panel" data-live="events"><h2>"Recent events"</h2><ol class="timeline">{events}</ol></section>
        </div>
    }
}

fn charts(samples: &[Sample], now_ms: u64) -> impl IntoView {
    let span = samples
        .first()
        .map_or(0, |s| now_ms.saturating_sub(s.at_ms));
    let series = |label: &'static str, f: fn(&Sample) -> f64| Series {
        label,
        points: samples.iter().map(|s| (s.at_ms, f(s))).collect(),
    };
    view! {
        <h2>"Over time"</h2>
        <div class="grid2">
            {line_chart("CPU (host)", Unit::Percent, vec![series("busy", |s| s.cpu_percent)], now_ms, span)}
            {line_chart("Memory (host)", Unit::Bytes, vec![series("used", |s| s.mem_used_bytes as f64), series("total", |s| s.mem_total_bytes as f64)], now_ms, span)}
            {line_chart("Network (mesh wire)", Unit::BytesPerSecond, vec![series("sent", |s| s.wire_sent_bps), series("received", |s| s.wire_received_bps)], now_ms, span)}
            {line_chart("Cell gossip", Unit::BytesPerSecond, vec![series("sent", |s| s.gossip_sent_bps), series("received", |s| s.gossip_received_bps)], now_ms, span)}
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::fixtures::vm;
    use novacron_model::{OwnerSetting, VmState};

    #[test]
    fn a_running_migration_shows_only_its_latest_report() {
        let m = |seq: u64, state: MigrationState, phase: &str| EventEnvelope {
            seq,
            at_ms: seq,
            event: NodeEvent::Migration {
                migration: Box::new(novacron_model::MigrationInfo {
                    id: "m1".into(),
                    vm_id: "vm-1".into(),
                    direction: novacron_model::MigrationDirection::Out,
                    peer: "p".into(),
                    mode: novacron_model::MigrationMode::Live,
                    state,
                    started_at_ms: 0,
                    ended_at_ms: None,
                    downtime_ms: None,
                    wire_bytes: 0,
                    error: None,
                    progress: Some(novacron_model::MigrationProgressInfo {
                        phase: phase.into(),
                        ..Default::default()
                    }),
                }),
            },
        };
        // Newest first.
        let events = vec![
            m(4, MigrationState::Done, "done"),
            m(3, MigrationState::Running, "stopped"),
            m(2, MigrationState::Running, "precopy"),
            m(1, MigrationState::Running, "precopy"),
        ];
        let shown: Vec<String> = worth_showing(&events)
            .iter()
            .map(|e| describe(&e.event))
            .collect();
        assert_eq!(
            shown,
            [
                "migration of vm-1 done",
                "migration of vm-1 running: stopped"
            ]
        );
    }

    #[test]
    fn the_node_page_shows_politeness_with_its_reason_events_and_charts() {
        let status = crate::views::overview::tests_status();
        let politeness = PolitenessInfo {
            state: "suspended".into(),
            reasons: vec!["owner active".into()],
            owner_idle_s: Some(3),
            on_battery: false,
            cpu_cap_percent: 50,
            mem_cap_mib: 1024,
            owner_override: OwnerSetting::Active,
        };
        let samples = vec![
            Sample {
                at_ms: 1_000,
                cpu_percent: 20.0,
                ..Sample::default()
            },
            Sample {
                at_ms: 3_000,
                cpu_percent: 30.0,
                ..Sample::default()
            },
        ];
        let html = render(NodeData {
            status,
            politeness,
            vms: vec![vm("vm-a", VmState::Running), vm("vm-b", VmState::Exited)],
            events: vec![EventEnvelope {
                seq: 1,
                at_ms: 2_000,
                event: NodeEvent::Member {
                    peer_id: "12D3KooWGonePeer".into(),
                    live: false,
                },
            }],
            samples,
            draining: Some(30),
            csrf: "tok".into(),
            now_ms: 3_000,
        })
        .to_html();
        for want in [
            ">suspended<",
            "owner active",
            "id=\"owner-override\">active<",
            "member …GonePeer down",
            "CPU (host)",
            "busy: <b>30%</b>",
            "Cell gossip",
            "Draining: VMs leave within 30 s",
            "action=\"/node/drain\"",
            "12D3KooWSelf0001",
        ] {
            assert!(html.contains(want), "{want} missing: {html}");
        }
        assert!(
            !html.contains("vm-b"),
            "only active VMs are listed as here: {html}"
        );
    }
}
