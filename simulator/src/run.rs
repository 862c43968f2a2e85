//! One run of a scenario: its models driven in virtual time, and the figures they give.

use serde::Serialize;

use crate::churn;
use crate::epidemic::{Broadcast, Epidemic};
use crate::network::Network;
use crate::overlay::{self, OverlayOutput};
use crate::scenario::{EpidemicSection, Scenario};
use crate::serf_model;
use crate::stats::quantile;
use crate::time::SimTime;

/// What a run did, in full (the report writes it out).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutput {
    pub summary: Summary,
    pub broadcasts: Vec<Broadcast>,
    pub overlay: Option<OverlayOutput>,
}

/// A run's figures: the same for the same scenario and seed, on every machine. Each model
/// that ran adds its own figures; JSON has them all at the top level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    /// The models that ran, in the order they ran.
    pub models: Vec<&'static str>,
    pub nodes: u64,
    pub seed: u64,
    pub events: u64,
    /// Virtual time simulated: the run's hours when the mesh ran over time, else the
    /// broadcasts' spans (each from its start until its last member got the message or it
    /// died out), added up.
    pub sim_hours: f64,
    #[serde(flatten)]
    pub epidemic: Option<EpidemicSummary>,
    #[serde(flatten)]
    pub churn: Option<ChurnSummary>,
    #[serde(flatten)]
    pub kademlia: Option<KademliaSummary>,
    #[serde(flatten)]
    pub owner: Option<OwnerSummary>,
}

/// The owners' figures: what the node's politeness policy let VMs do, per host up-time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OwnerSummary {
    /// Share of up-time VMs may run.
    pub polite_run_fraction: f64,
    /// Share of that run time with the owner at the machine (busy memory cap).
    pub run_owner_active_fraction: f64,
    /// Share of up-time VMs must leave (`Evacuate`).
    pub evacuate_fraction: f64,
    /// Decisions that turned to `Evacuate`, per up node-hour: moves the owner asks for.
    pub evacuations_per_node_hour: f64,
    /// Owners who came back while VMs ran, per up node-hour.
    pub owner_returns_per_node_hour: f64,
    pub politeness_observations: u64,
}

/// The flat epidemic's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpidemicSummary {
    pub broadcasts: u64,
    pub fanout: u32,
    pub interval_ms: f64,
    pub target_fraction: f64,
    pub loss: f64,
    pub failed_fraction: f64,
    /// Rounds until `target_fraction` of the live members had the message, over the
    /// broadcasts that got there.
    pub rounds_to_target_p50: Option<f64>,
    pub rounds_to_target_p90: Option<f64>,
    pub rounds_to_target_max: Option<f64>,
    pub rounds_to_all_p50: Option<f64>,
    /// Broadcasts that died out before reaching `target_fraction` (retransmit limits).
    pub died_out: u64,
    /// Serf's closed form for the same population, fanout, loss and failures.
    pub closed_form_rounds: f64,
    /// `rounds_to_target_p50 / closed_form_rounds`.
    pub vs_closed_form: Option<f64>,
    pub messages_per_node_mean: f64,
}

/// Churn's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChurnSummary {
    /// Node-hours up / (nodes * hours).
    pub availability: f64,
    /// The clusters' long-run availability, weighted: what `availability` should be.
    pub availability_expected: f64,
    pub departures: u64,
    pub arrivals: u64,
    pub departures_per_node_hour: f64,
}

/// The DHT's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KademliaSummary {
    pub lookups: u64,
    pub lookup_hops_p50: Option<f64>,
    pub lookup_hops_p90: Option<f64>,
    pub lookup_hops_p99: Option<f64>,
    pub lookup_walk_hops_p50: Option<f64>,
    pub lookup_walk_hops_p90: Option<f64>,
    pub lookup_latency_ms_p50: Option<f64>,
    pub lookup_latency_ms_p90: Option<f64>,
    pub lookup_latency_ms_p99: Option<f64>,
    /// Share of lookups whose result holds the closest live server to the key.
    pub lookup_success: Option<f64>,
    pub lookup_queries_mean: Option<f64>,
    pub lookup_unresponsive_mean: Option<f64>,
    pub table_refreshes: u64,
    pub table_entries_mean: Option<f64>,
    /// Share of table entries whose host is down, over the run's samples.
    pub table_stale_fraction_mean: Option<f64>,
    pub state_bytes_per_node: f64,
}

/// What a long run reports as it goes.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Virtual time reached, and where the run ends (µs); the flat epidemic reports
    /// broadcasts done of all instead.
    pub done: u64,
    pub total: u64,
    pub events: u64,
    /// Whether `done`/`total` are virtual microseconds (else units of work).
    pub in_sim_time: bool,
}

/// Runs `scenario` with `seed`, calling `progress` as it goes.
pub fn run(scenario: &Scenario, seed: u64, progress: &mut dyn FnMut(Progress)) -> RunOutput {
    let nodes = scenario.run.nodes;
    let net = Network::new(&scenario.network, seed);
    let mut models = Vec::new();
    let mut events = 0u64;
    let mut sim_hours = 0.0;
    let (broadcasts, epidemic) = match &scenario.epidemic {
        Some(section) => {
            models.push("epidemic");
            let (bs, summary) = run_epidemic(section, scenario, &net, seed, &mut events, progress);
            sim_hours = bs.iter().map(|b| b.span.as_secs_f64()).sum::<f64>() / 3600.0;
            (bs, Some(summary))
        }
        None => (Vec::new(), None),
    };
    let overlay = (scenario.kademlia.is_some() || scenario.churn.is_some()).then(|| {
        // ([owner] needs one of the two: Scenario::parse checks it.)
        let before = events;
        let out = overlay::run(scenario, seed, &net, &mut |now: SimTime, end, ev| {
            progress(Progress {
                done: now.0,
                total: end.0,
                events: before + ev,
                in_sim_time: true,
            })
        });
        events += out.events;
        sim_hours = out.hours;
        out
    });
    let churn = scenario.churn.as_ref().zip(overlay.as_ref()).map(|(c, o)| {
        models.push("churn");
        let model = churn::Churn::from_section(c);
        let total_weight: f64 = model.clusters().iter().map(|c| c.weight).sum();
        let expected = model
            .clusters()
            .iter()
            .map(|c| c.weight / total_weight * churn::availability(c))
            .sum();
        ChurnSummary {
            availability: o.availability,
            availability_expected: expected,
            departures: o.departures,
            arrivals: o.arrivals,
            departures_per_node_hour: o.departures as f64 / (nodes as f64 * o.hours),
        }
    });
    let kademlia = scenario
        .kademlia
        .as_ref()
        .zip(overlay.as_ref())
        .map(|(_, o)| {
            models.push("kademlia");
            kademlia_summary(o)
        });
    let owner = overlay.as_ref().and_then(|o| o.owners).map(|t| {
        models.push("owner");
        let up = t.up_us.max(1) as f64;
        let up_hours = up / 3_600e6;
        OwnerSummary {
            polite_run_fraction: t.run_us as f64 / up,
            run_owner_active_fraction: t.run_owner_active_us as f64 / t.run_us.max(1) as f64,
            evacuate_fraction: t.evacuate_us as f64 / up,
            evacuations_per_node_hour: t.evacuations as f64 / up_hours,
            owner_returns_per_node_hour: t.owner_returns_while_running as f64 / up_hours,
            politeness_observations: t.observations,
        }
    });
    RunOutput {
        summary: Summary {
            scenario: scenario.run.name.clone(),
            models,
            nodes,
            seed,
            events,
            sim_hours,
            epidemic,
            churn,
            kademlia,
            owner,
        },
        broadcasts,
        overlay,
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn kademlia_summary(o: &OverlayOutput) -> KademliaSummary {
    let ls = &o.lookups;
    let hops: Vec<f64> = ls.iter().map(|l| f64::from(l.hops)).collect();
    let walk: Vec<f64> = ls.iter().map(|l| f64::from(l.walk_hops)).collect();
    let latency: Vec<f64> = ls.iter().map(|l| l.latency.as_millis_f64()).collect();
    KademliaSummary {
        lookups: ls.len() as u64,
        lookup_hops_p50: quantile(&hops, 0.5),
        lookup_hops_p90: quantile(&hops, 0.9),
        lookup_hops_p99: quantile(&hops, 0.99),
        lookup_walk_hops_p50: quantile(&walk, 0.5),
        lookup_walk_hops_p90: quantile(&walk, 0.9),
        lookup_latency_ms_p50: quantile(&latency, 0.5),
        lookup_latency_ms_p90: quantile(&latency, 0.9),
        lookup_latency_ms_p99: quantile(&latency, 0.99),
        lookup_success: mean(ls.iter().map(|l| f64::from(u8::from(l.found_closest)))),
        lookup_queries_mean: mean(ls.iter().map(|l| f64::from(l.queries))),
        lookup_unresponsive_mean: mean(ls.iter().map(|l| f64::from(l.unresponsive))),
        table_refreshes: o.refreshes,
        table_entries_mean: mean(o.samples.iter().map(|s| s.table_entries_mean)),
        table_stale_fraction_mean: mean(o.samples.iter().map(|s| s.stale_fraction)),
        state_bytes_per_node: o.state_bytes_per_node,
    }
}

fn run_epidemic(
    section: &EpidemicSection,
    scenario: &Scenario,
    net: &Network,
    seed: u64,
    events: &mut u64,
    progress: &mut dyn FnMut(Progress),
) -> (Vec<Broadcast>, EpidemicSummary) {
    let nodes = scenario.run.nodes;
    let model = Epidemic::from_section(section, nodes);
    let total = u64::from(section.broadcasts);
    let mut broadcasts = Vec::with_capacity(section.broadcasts as usize);
    for index in 0..total {
        let b = model.broadcast(net, seed, index);
        *events += b.events;
        broadcasts.push(b);
        progress(Progress {
            done: index + 1,
            total,
            events: *events,
            in_sim_time: false,
        });
    }
    let to_target: Vec<f64> = broadcasts
        .iter()
        .filter_map(|b| b.rounds_to_target)
        .collect();
    let to_all: Vec<f64> = broadcasts.iter().filter_map(|b| b.rounds_to_all).collect();
    let closed_form_rounds = serf_model::rounds_to(
        section.target_fraction,
        nodes,
        section.fanout,
        scenario.network.loss,
        section.failed_fraction,
    );
    let p50 = quantile(&to_target, 0.5);
    let messages: u64 = broadcasts.iter().map(|b| b.messages).sum();
    let summary = EpidemicSummary {
        broadcasts: total,
        fanout: section.fanout,
        interval_ms: section.interval_ms,
        target_fraction: section.target_fraction,
        loss: scenario.network.loss,
        failed_fraction: section.failed_fraction,
        rounds_to_target_p50: p50,
        rounds_to_target_p90: quantile(&to_target, 0.9),
        rounds_to_target_max: quantile(&to_target, 1.0),
        rounds_to_all_p50: quantile(&to_all, 0.5),
        died_out: total - to_target.len() as u64,
        closed_form_rounds,
        vs_closed_form: p50.map(|p| p / closed_form_rounds),
        messages_per_node_mean: messages as f64 / (total as f64 * nodes as f64),
    };
    (broadcasts, summary)
}
