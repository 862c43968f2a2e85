//! Volunteer hosts coming and going: each node belongs to one of the scenario's host
//! clusters and alternates up and down intervals drawn from that cluster's distributions
//! (SETI@home's six clusters, Javadi, Kondo, Vincent and Anderson, TPDS 2011: Gamma or
//! Weibull up-times, three-phase hyperexponential down-times).
//!
//! A run starts in equilibrium, not with every host freshly up: a node is up at the start
//! with its cluster's availability, and the interval it is in is drawn length-biased (a
//! random instant falls in a long interval more often than in a short one) with the node
//! at a uniform point of it. For these distributions the length-biased draw is exact:
//! Gamma(a, s) becomes Gamma(a + 1, s); Weibull(k, l) becomes `l * G^(1/k)` with
//! G ~ Gamma(1 + 1/k, 1); a hyperexponential's residual is exponential in a phase picked
//! with weight `p_i / r_i`. Without this, shapes below 1 (most hosts' up-times) would make
//! the first hours a burst of departures that no real mesh sees.

use crate::rng::SimRng;
use crate::scenario::{ChurnSection, UpTime};
use crate::time::SimDuration;

/// Microseconds per hour.
const HOUR_US: f64 = 3_600e6;

/// One cluster's interval distributions, in hours.
#[derive(Clone, Debug, PartialEq)]
pub struct HostCluster {
    pub weight: f64,
    pub up: UpTime,
    /// Phase probabilities and rates (per hour) of the down-time hyperexponential.
    pub down_p: Vec<f64>,
    pub down_rate_per_h: Vec<f64>,
}

/// Where a node is at the start of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Start {
    pub up: bool,
    /// Until its first change.
    pub remaining: SimDuration,
}

/// The churn model of a run.
#[derive(Clone, Debug)]
pub struct Churn {
    clusters: Vec<HostCluster>,
    weights: Vec<f64>,
}

impl Churn {
    pub fn from_section(section: &ChurnSection) -> Churn {
        let clusters: Vec<HostCluster> = section
            .cluster
            .iter()
            .map(|c| HostCluster {
                weight: c.weight,
                up: c.up,
                down_p: c.down_h3.p.clone(),
                down_rate_per_h: c.down_h3.rate_per_h.clone(),
            })
            .collect();
        let weights = clusters.iter().map(|c| c.weight).collect();
        Churn { clusters, weights }
    }

    pub fn clusters(&self) -> &[HostCluster] {
        &self.clusters
    }

    /// A node's cluster, drawn by the scenario's weights.
    pub fn draw_cluster(&self, rng: &mut SimRng) -> u8 {
        rng.weighted(&self.weights) as u8
    }

    /// A fresh up interval of `cluster`.
    pub fn up_time(&self, cluster: u8, rng: &mut SimRng) -> SimDuration {
        hours(draw_up(&self.clusters[usize::from(cluster)].up, rng))
    }

    /// A fresh down interval of `cluster`.
    pub fn down_time(&self, cluster: u8, rng: &mut SimRng) -> SimDuration {
        let c = &self.clusters[usize::from(cluster)];
        let phase = rng.weighted(&c.down_p);
        hours(rng.exponential(c.down_rate_per_h[phase]))
    }

    /// A node of `cluster` at a random instant of a long run: up or down, and for how long
    /// still (see the module's note).
    pub fn start(&self, cluster: u8, rng: &mut SimRng) -> Start {
        let c = &self.clusters[usize::from(cluster)];
        let up = rng.chance(availability(c));
        let remaining_h = if up {
            let whole = match c.up {
                UpTime::Gamma { shape, scale_h } => rng.gamma(shape + 1.0, scale_h),
                UpTime::Weibull { shape, scale_h } => {
                    scale_h * rng.gamma(1.0 + 1.0 / shape, 1.0).powf(1.0 / shape)
                }
            };
            whole * rng.unit()
        } else {
            let by_mean: Vec<f64> = c
                .down_p
                .iter()
                .zip(&c.down_rate_per_h)
                .map(|(p, r)| p / r)
                .collect();
            let phase = rng.weighted(&by_mean);
            rng.exponential(c.down_rate_per_h[phase])
        };
        Start {
            up,
            remaining: hours(remaining_h),
        }
    }
}

fn draw_up(up: &UpTime, rng: &mut SimRng) -> f64 {
    match *up {
        UpTime::Gamma { shape, scale_h } => rng.gamma(shape, scale_h),
        UpTime::Weibull { shape, scale_h } => rng.weibull(shape, scale_h),
    }
}

fn hours(h: f64) -> SimDuration {
    SimDuration((h * HOUR_US).round().clamp(1.0, u64::MAX as f64 / 4.0) as u64)
}

/// The mean up interval of `up`, in hours.
pub fn mean_up_h(up: &UpTime) -> f64 {
    match *up {
        UpTime::Gamma { shape, scale_h } => shape * scale_h,
        UpTime::Weibull { shape, scale_h } => scale_h * gamma_fn(1.0 + 1.0 / shape),
    }
}

/// The mean down interval of a cluster, in hours.
pub fn mean_down_h(c: &HostCluster) -> f64 {
    c.down_p
        .iter()
        .zip(&c.down_rate_per_h)
        .map(|(p, r)| p / r)
        .sum()
}

/// The long-run share of time a host of `c` is up.
pub fn availability(c: &HostCluster) -> f64 {
    let up = mean_up_h(&c.up);
    up / (up + mean_down_h(c))
}

/// The Gamma function for `x > 0` (Lanczos, g = 7, nine terms: ~15 digits).
pub fn gamma_fn(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return std::f64::consts::PI / ((std::f64::consts::PI * x).sin() * gamma_fn(1.0 - x));
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    (2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{ClusterSection, HyperExp};

    fn seti_cluster_3() -> ChurnSection {
        ChurnSection {
            cluster: vec![ClusterSection {
                weight: 1.0,
                up: UpTime::Weibull {
                    shape: 0.431,
                    scale_h: 1.682,
                },
                down_h3: HyperExp {
                    p: vec![0.398, 0.305, 0.298],
                    rate_per_h: vec![0.031, 11.566, 1.322],
                },
            }],
        }
    }

    #[test]
    fn the_gamma_function_matches_known_values() {
        for (x, want) in [
            (1.0, 1.0),
            (5.0, 24.0),
            (0.5, std::f64::consts::PI.sqrt()),
            (3.32, 2.739_747),
        ] {
            assert!(
                (gamma_fn(x) / want - 1.0).abs() < 1e-4,
                "{x}: {}",
                gamma_fn(x)
            );
        }
    }

    #[test]
    fn intervals_have_their_clusters_means() {
        let churn = Churn::from_section(&seti_cluster_3());
        let c = &churn.clusters()[0];
        let mut rng = SimRng::new(4);
        let n = 200_000;
        let up: f64 = (0..n)
            .map(|_| churn.up_time(0, &mut rng).0 as f64 / HOUR_US)
            .sum::<f64>()
            / n as f64;
        let down: f64 = (0..n)
            .map(|_| churn.down_time(0, &mut rng).0 as f64 / HOUR_US)
            .sum::<f64>()
            / n as f64;
        assert!((up / mean_up_h(&c.up) - 1.0).abs() < 0.05, "{up}");
        assert!((down / mean_down_h(c) - 1.0).abs() < 0.05, "{down}");
        // Weibull(0.431, 1.682): mean 1.682 * Gamma(1 + 1/0.431) = 4.609 h; down 13.090 h.
        assert!((mean_up_h(&c.up) - 4.609).abs() < 0.001);
        assert!((mean_down_h(c) - 13.090).abs() < 0.001);
    }

    /// Population share up at `t` hours, for nodes started in equilibrium.
    fn share_up_at(churn: &Churn, nodes: u64, t_h: f64, seed: u64) -> f64 {
        let t = hours(t_h);
        let mut up_at_t = 0;
        for n in 0..nodes {
            let mut rng = SimRng::for_stream(seed, n);
            let s = churn.start(0, &mut rng);
            let (mut up, mut at) = (s.up, s.remaining);
            while at <= t {
                up = !up;
                let d = if up {
                    churn.up_time(0, &mut rng)
                } else {
                    churn.down_time(0, &mut rng)
                };
                at = SimDuration(at.0 + d.0);
            }
            up_at_t += u64::from(up);
        }
        up_at_t as f64 / nodes as f64
    }

    #[test]
    fn a_population_started_in_equilibrium_stays_at_its_availability() {
        let churn = Churn::from_section(&seti_cluster_3());
        let a = availability(&churn.clusters()[0]);
        assert!((a - 0.2604).abs() < 0.0005, "{a}");
        for t in [0.0, 1.0, 6.0, 24.0] {
            let share = share_up_at(&churn, 20_000, t, 9);
            assert!((share - a).abs() < 0.02, "at {t} h: {share} vs {a}");
        }
    }

    #[test]
    fn without_the_length_bias_the_first_hours_would_drain_the_mesh() {
        // The check above can fail: a start that draws a fresh up interval (not the
        // residual of a length-biased one) loses most hosts in the first hour.
        let churn = Churn::from_section(&seti_cluster_3());
        let c = &churn.clusters()[0];
        let a = availability(c);
        let mut rng = SimRng::new(3);
        let n = 20_000;
        let mut still_up = 0;
        let mut up_at_start = 0;
        for _ in 0..n {
            if rng.chance(a) {
                up_at_start += 1;
                if churn.up_time(0, &mut rng) > hours(1.0) {
                    still_up += 1;
                }
            }
        }
        let naive = still_up as f64 / up_at_start as f64;
        let mut rng = SimRng::new(3);
        let mut kept = 0;
        let mut ups = 0;
        for _ in 0..n {
            let s = churn.start(0, &mut rng);
            if s.up {
                ups += 1;
                kept += u64::from(s.remaining > hours(1.0));
            }
        }
        let biased = kept as f64 / ups as f64;
        assert!(
            biased > naive + 0.15,
            "naive {naive}, length-biased {biased}"
        );
    }
}
