//! One run of a scenario: its models driven in virtual time, and the figures they give.

use serde::Serialize;

use crate::epidemic::{Broadcast, Epidemic};
use crate::network::Network;
use crate::scenario::Scenario;
use crate::serf_model;
use crate::stats::quantile;

/// What a run did, in full (the report writes it out).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutput {
    pub summary: Summary,
    pub broadcasts: Vec<Broadcast>,
}

/// A run's figures: the same for the same scenario and seed, on every machine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub model: &'static str,
    pub nodes: u64,
    pub seed: u64,
    pub events: u64,
    /// Virtual time simulated: the broadcasts' spans (each from its start until its last
    /// member got the message or it died out), added up.
    pub sim_hours: f64,
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

/// What a long run reports as it goes.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub events: u64,
}

/// Runs `scenario` with `seed`, calling `progress` after each unit of work.
pub fn run(scenario: &Scenario, seed: u64, progress: &mut dyn FnMut(Progress)) -> RunOutput {
    let Some(section) = &scenario.epidemic else {
        unreachable!("Scenario::parse refuses a scenario without a model")
    };
    let nodes = scenario.run.nodes;
    let net = Network::new(&scenario.network, seed);
    let model = Epidemic::from_section(section, nodes);
    let total = u64::from(section.broadcasts);
    let mut broadcasts = Vec::with_capacity(section.broadcasts as usize);
    let mut events = 0u64;
    for index in 0..total {
        let b = model.broadcast(&net, seed, index);
        events += b.events;
        broadcasts.push(b);
        progress(Progress {
            done: index + 1,
            total,
            events,
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
    let summary = Summary {
        scenario: scenario.run.name.clone(),
        model: "epidemic",
        nodes,
        seed,
        events,
        sim_hours: broadcasts.iter().map(|b| b.span.as_secs_f64()).sum::<f64>() / 3600.0,
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
    RunOutput {
        summary,
        broadcasts,
    }
}
