//! One broadcast spread by gossip through a flat membership, memberlist's way: every
//! interval, at its own phase, each node holding the message sends it to `fanout` members
//! picked at random (down members included: they are in the member list until detected);
//! the message arrives after the link's one-way delay unless it is lost; a node that gets
//! it for the first time sends it from its next tick on, until every live member has it or
//! its retransmit limit is spent.
//!
//! State is per broadcast and per node (when it got the message, sends left): a few bytes
//! a node. Broadcasts are independent runs, each with its own random stream, so their
//! results do not depend on how many ran before.

use crate::network::Network;
use crate::queue::EventQueue;
use crate::rng::{pair_hash, SimRng};
use crate::scenario::EpidemicSection;
use crate::time::{SimDuration, SimTime};

const PHASE_STREAM: u64 = 0x7068_6173_6500_0001;

/// The model's parameters.
#[derive(Clone, Debug)]
pub struct Epidemic {
    pub nodes: u64,
    pub fanout: u32,
    pub interval: SimDuration,
    pub failed_fraction: f64,
    /// Sends per node before it stops; `None`: unlimited.
    pub retransmit_limit: Option<u32>,
    pub target_fraction: f64,
}

/// What one broadcast did.
#[derive(Clone, Debug, PartialEq)]
pub struct Broadcast {
    pub origin: u64,
    pub live: u64,
    /// Rounds (intervals) until `target_fraction` of the live members had it; `None` if the
    /// message died out first.
    pub rounds_to_target: Option<f64>,
    /// Rounds until every live member had it.
    pub rounds_to_all: Option<f64>,
    /// Messages sent (lost ones included).
    pub messages: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time from the start to the last event processed.
    pub span: SimDuration,
    /// When each member that got it got it, sorted, in rounds since the start.
    pub reached_at_rounds: Vec<f64>,
}

enum Event {
    Tick(u32),
    Deliver(u32),
}

/// A run gives up on a broadcast after this many rounds (a message that died out).
const MAX_ROUNDS: u64 = 10_000;

impl Epidemic {
    pub fn from_section(section: &EpidemicSection, nodes: u64) -> Epidemic {
        let retransmit_limit = (section.retransmit_mult > 0).then(|| {
            let log10 = ((nodes + 1) as f64).log10().ceil() as u32;
            section.retransmit_mult.saturating_mul(log10.max(1))
        });
        Epidemic {
            nodes,
            fanout: section.fanout,
            interval: SimDuration::from_millis_f64(section.interval_ms).max(SimDuration(1)),
            failed_fraction: section.failed_fraction,
            retransmit_limit,
            target_fraction: section.target_fraction,
        }
    }

    /// The first tick of `node` after `t`: ticks are at `phase + k * interval`.
    fn next_tick(&self, phase_seed: u64, node: u32, t: SimTime) -> SimTime {
        let period = self.interval.0;
        let phase = pair_hash(phase_seed, u64::from(node), 0) % period;
        if t.0 < phase {
            return SimTime(phase);
        }
        let k = (t.0 - phase) / period + 1;
        SimTime(phase + k * period)
    }

    /// Runs broadcast number `index` of a run seeded `seed` over `net`.
    pub fn broadcast(&self, net: &Network, seed: u64, index: u64) -> Broadcast {
        let n = usize::try_from(self.nodes).expect("node count fits in memory");
        let phase_seed = pair_hash(seed, index, PHASE_STREAM);
        let mut rng = SimRng::for_stream(seed, index);
        let mut down = vec![false; n];
        if self.failed_fraction > 0.0 {
            for d in down.iter_mut() {
                *d = rng.chance(self.failed_fraction);
            }
        }
        let live = down.iter().filter(|d| !**d).count() as u64;
        let origin = loop {
            let o = rng.below(self.nodes) as usize;
            if !down[o] {
                break o as u32;
            }
        };
        let target = ((self.target_fraction * live as f64).ceil() as u64).clamp(1, live);
        let mut got_at: Vec<Option<SimTime>> = vec![None; n];
        let mut sends_left: Vec<u32> = vec![self.retransmit_limit.unwrap_or(u32::MAX); n];
        let mut q = EventQueue::new();
        let mut reached = 1u64;
        let mut reached_target_at = (target == 1).then_some(SimTime::ZERO);
        let mut messages = 0u64;
        got_at[origin as usize] = Some(SimTime::ZERO);
        q.schedule(
            self.next_tick(phase_seed, origin, SimTime::ZERO),
            Event::Tick(origin),
        );
        let give_up = SimTime(self.interval.0.saturating_mul(MAX_ROUNDS));
        let mut picked: Vec<u32> = Vec::with_capacity(self.fanout as usize);
        while let Some((now, event)) = q.pop() {
            if reached == live || now > give_up {
                break;
            }
            match event {
                Event::Tick(node) => {
                    let left = &mut sends_left[node as usize];
                    if *left == 0 {
                        continue;
                    }
                    picked.clear();
                    while picked.len() < self.fanout as usize {
                        let mut t = rng.below(self.nodes - 1) as u32;
                        if t >= node {
                            t += 1;
                        }
                        if !picked.contains(&t) {
                            picked.push(t);
                        }
                    }
                    for &to in &picked {
                        if *left == 0 {
                            break;
                        }
                        *left -= 1;
                        messages += 1;
                        if net.lost(&mut rng) {
                            continue;
                        }
                        let at = now + net.one_way(u64::from(node), u64::from(to));
                        q.schedule(at, Event::Deliver(to));
                    }
                    if *left > 0 {
                        q.schedule(now + self.interval, Event::Tick(node));
                    }
                }
                Event::Deliver(node) => {
                    let i = node as usize;
                    if down[i] || got_at[i].is_some() {
                        continue;
                    }
                    got_at[i] = Some(now);
                    reached += 1;
                    if reached == target {
                        reached_target_at = Some(now);
                    }
                    q.schedule(self.next_tick(phase_seed, node, now), Event::Tick(node));
                }
            }
        }
        let rounds = |t: SimTime| t.0 as f64 / self.interval.0 as f64;
        let mut reached_at_rounds: Vec<f64> = got_at.iter().flatten().map(|t| rounds(*t)).collect();
        reached_at_rounds.sort_by(f64::total_cmp);
        Broadcast {
            origin: u64::from(origin),
            live,
            rounds_to_target: reached_target_at.map(rounds),
            rounds_to_all: (reached == live)
                .then(|| reached_at_rounds.last().copied().unwrap_or(0.0)),
            messages,
            events: q.processed(),
            span: q.now().since(SimTime::ZERO),
            reached_at_rounds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::NetworkSection;
    use crate::serf_model;
    use crate::stats::quantile;

    /// ~0.2 ms round trips, far below the 200 ms interval, as on Serf's LAN.
    fn lan_with_loss(loss: f64) -> Network {
        let section = NetworkSection {
            rtt_lognormal_mu_ln_ms: -1.6,
            rtt_lognormal_sigma: 0.3,
            loss,
            ..NetworkSection::default()
        };
        Network::new(&section, 1)
    }

    fn lan() -> Network {
        lan_with_loss(0.0)
    }

    fn model(nodes: u64) -> Epidemic {
        Epidemic {
            nodes,
            fanout: 3,
            interval: SimDuration::from_millis(200),
            failed_fraction: 0.0,
            retransmit_limit: None,
            target_fraction: 0.9999,
        }
    }

    /// The p50 over 9 broadcasts of `m` over `net` is within 10% of the closed form.
    fn assert_near_the_closed_form(m: &Epidemic, net: &Network, seed: u64, loss: f64) {
        let rounds: Vec<f64> = (0..9)
            .map(|i| m.broadcast(net, seed, i).rounds_to_target.unwrap())
            .collect();
        let got = quantile(&rounds, 0.5).unwrap();
        let want = serf_model::rounds_to(0.9999, m.nodes, m.fanout, loss, m.failed_fraction);
        assert!(
            (got / want - 1.0).abs() <= 0.10,
            "simulated {got} rounds, closed form {want}"
        );
    }

    #[test]
    fn every_live_member_gets_the_message_and_the_curve_is_sorted() {
        let b = model(2_000).broadcast(&lan(), 3, 0);
        assert_eq!(b.live, 2_000);
        assert_eq!(b.reached_at_rounds.len(), 2_000);
        assert!(b.reached_at_rounds.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(b.reached_at_rounds[0], 0.0);
        let all = b.rounds_to_all.unwrap();
        assert!(b.rounds_to_target.unwrap() <= all);
        assert!(b.messages >= 1_999 && b.events > b.messages / 2);
    }

    #[test]
    fn the_spread_matches_serfs_closed_form_within_ten_percent() {
        assert_near_the_closed_form(&model(20_000), &lan(), 42, 0.0);
    }

    #[test]
    fn loss_and_down_members_slow_it_as_the_closed_form_says() {
        let m = Epidemic {
            failed_fraction: 0.1,
            ..model(20_000)
        };
        let lossy = lan_with_loss(0.05);
        let b = m.broadcast(&lossy, 7, 0);
        assert!((17_500..18_500).contains(&b.live), "{}", b.live);
        assert_near_the_closed_form(&m, &lossy, 7, 0.05);
    }

    #[test]
    fn a_retransmit_limit_stops_the_senders() {
        let limited = Epidemic {
            retransmit_limit: Some(3),
            ..model(5_000)
        };
        let b = limited.broadcast(&lan(), 1, 0);
        // Each holder sends exactly 3 (one tick of fanout 3), so at most 3 per holder.
        assert!(b.messages <= 3 * b.reached_at_rounds.len() as u64);
        let unlimited = model(5_000).broadcast(&lan(), 1, 0);
        assert!(unlimited.rounds_to_all.is_some());
    }

    #[test]
    fn the_same_seed_and_index_give_the_same_broadcast() {
        let m = model(3_000);
        let net = lan();
        assert_eq!(m.broadcast(&net, 5, 2), m.broadcast(&net, 5, 2));
        assert_ne!(m.broadcast(&net, 5, 2), m.broadcast(&net, 6, 2));
        assert_ne!(m.broadcast(&net, 5, 2), m.broadcast(&net, 5, 3));
    }
}
