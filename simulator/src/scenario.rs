//! Scenario files (TOML, `simulator/scenarios/`): what to simulate, with which parameters.
//!
//! Every table refuses keys it does not know, and [`Scenario::parse`] checks every value
//! before a run starts, so a typo or an impossible value is an error naming its key, never
//! a default silently used. Defaults are the published figures of
//! `shared/data/mesh-models.toml`, each with its source in the field's comment.

use serde::Deserialize;

/// Why a scenario cannot be run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScenarioError {
    /// Not TOML, an unknown key, or a value of the wrong type (toml's message names the key
    /// and its line).
    #[error("scenario: {0}")]
    Parse(String),
    /// A key whose value cannot be simulated.
    #[error("scenario: {key}: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("scenario: nothing to simulate: add an [epidemic], [kademlia] or [churn] table")]
    NoModel,
}

/// One scenario file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub run: RunSection,
    #[serde(default)]
    pub network: NetworkSection,
    pub epidemic: Option<EpidemicSection>,
    pub kademlia: Option<KademliaSection>,
    pub churn: Option<ChurnSection>,
    pub owner: Option<OwnerSection>,
}

/// `[run]`: the population and the seed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// A name for reports (default: none).
    #[serde(default)]
    pub name: String,
    /// Nodes in the mesh.
    pub nodes: u64,
    /// The seed of every random draw (`--seed` overrides it).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Virtual hours the mesh runs ([kademlia] and [churn] need it; the flat epidemic runs
    /// each broadcast until it is done).
    pub hours: Option<f64>,
}

/// `[network]`: the links between nodes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Round-trip time of a link, log-normal over milliseconds: `ln` of the median. Default
    /// 4.942 (median 140 ms; Saroiu, Gummadi and Gribble, MMCN 2002, Fig. 5).
    #[serde(default = "default_rtt_mu")]
    pub rtt_lognormal_mu_ln_ms: f64,
    /// Its sigma. Default 0.824 (p20 70 ms, p80 280 ms; same source).
    #[serde(default = "default_rtt_sigma")]
    pub rtt_lognormal_sigma: f64,
    /// Share of messages lost on the way. Default 0.
    #[serde(default)]
    pub loss: f64,
    /// Share of nodes behind a NAT: they are Kademlia clients (they look up but are never in
    /// routing tables), as the node is when autonat finds it unreachable. Default 0; the
    /// IPFS network has at least 0.52 (Henningsen et al. 2020; mesh-models.toml
    /// `nat.behind_nat_fraction_min`).
    #[serde(default)]
    pub behind_nat_fraction: f64,
}

/// `[epidemic]`: one message spread by gossip through a flat membership, the way Serf's
/// memberlist spreads a broadcast: every `interval_ms`, at its own phase, a node that holds
/// the message sends it to `fanout` members picked at random.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EpidemicSection {
    /// Members each send goes to. Serf's default: 3 (mesh-models.toml `gossip.serf_fanout`).
    pub fanout: u32,
    /// The gossip interval. Serf's default: 200 ms (`gossip.serf_interval_ms`).
    pub interval_ms: f64,
    /// Independent broadcasts to run, each from a random member.
    pub broadcasts: u32,
    /// Share of members that are down: picked as targets, they receive nothing. Default 0.
    #[serde(default)]
    pub failed_fraction: f64,
    /// memberlist's retransmit multiplier: a node sends the message `mult * ceil(log10(N +
    /// 1))` times, then stops. 0 (the default): it keeps sending until every live member
    /// has it, as the closed form assumes.
    #[serde(default)]
    pub retransmit_mult: u32,
    /// The share of live members whose reach is reported in rounds. Default 0.9999.
    #[serde(default = "default_target_fraction")]
    pub target_fraction: f64,
}

/// `[kademlia]`: the DHT's routing tables and iterative lookups, the node's way (k-buckets
/// of `k`, lookups of parallelism `alpha` that end when the `k` closest peers answered,
/// libp2p's rules), with the node's subnet cap on every insert and its jittered table
/// refresh.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KademliaSection {
    /// Bucket size and lookup result size. Default 20 (the node's; mesh-models.toml
    /// `kademlia.k`).
    #[serde(default = "default_k")]
    pub k: u32,
    /// Queries in flight per lookup. Default 3 (the node's; `kademlia.alpha`).
    #[serde(default = "default_alpha")]
    pub alpha: u32,
    /// Lookups of random keys from random live nodes, spread uniformly over the run.
    pub lookups: u32,
    /// How long a lookup waits for a peer before counting it unresponsive. Default 10 s
    /// (libp2p's `ClosestPeersIter` peer timeout).
    #[serde(default = "default_peer_timeout_s")]
    pub peer_timeout_s: f64,
    /// Mean minutes between a node's routing-table refreshes. Default: the node's
    /// (`mesh::table_refresh::REFRESH_EVERY`, 10 minutes).
    #[serde(default = "default_refresh_minutes")]
    pub refresh_minutes: f64,
    /// Spread the nodes over this many IPv4 /24 subnets (crowded subnets, a Sybil setting).
    /// Absent (the default): each node has a /24 of its own.
    pub subnets: Option<u64>,
    /// Routing-table peers per /24. Default: the node's (`mesh::subnet_cap::SubnetLimits`, 2).
    #[serde(default = "default_per_subnet")]
    pub per_subnet_limit: usize,
}

/// `[churn]`: hosts come and go, each in one of these clusters.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChurnSection {
    /// `[[churn.cluster]]`: SETI@home's host clusters (mesh-models.toml
    /// `[[churn.seti_cluster]]`), each with a population weight.
    pub cluster: Vec<ClusterSection>,
}

/// One host cluster.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Its share of the population (weights need not add up to 1).
    pub weight: f64,
    /// Up intervals.
    pub up: UpTime,
    /// Down intervals: a hyperexponential (phase probabilities `p`, rates per hour).
    pub down_h3: HyperExp,
}

/// `[owner]`: the volunteers at their machines, and the node's politeness policy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OwnerSection {
    /// Share of hosts that are desktops (an owner at the input devices); the others are
    /// servers nobody sits at.
    pub desktop_fraction: f64,
    /// Mean minutes an owner stays at the machine (exponential).
    pub session_mean_min: f64,
    /// Mean minutes an owner stays away (exponential).
    pub away_mean_min: f64,
    /// `[owner.politeness]`: the node's `politeness:` config section, in its own keys
    /// (`idleTimeToRunMin`, `runWhileInUse`, `startHour`, ...). Default: the node's default
    /// (BOINC's defaults).
    #[serde(default)]
    pub politeness: novacron_policy::politeness::Policy,
}

/// An up-time distribution, in hours.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum UpTime {
    Gamma { shape: f64, scale_h: f64 },
    Weibull { shape: f64, scale_h: f64 },
}

/// A hyperexponential distribution over hours.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HyperExp {
    pub p: Vec<f64>,
    pub rate_per_h: Vec<f64>,
}

fn default_k() -> u32 {
    20
}
fn default_alpha() -> u32 {
    3
}
fn default_peer_timeout_s() -> f64 {
    10.0
}
fn default_refresh_minutes() -> f64 {
    novacron_mesh::table_refresh::REFRESH_EVERY.as_secs_f64() / 60.0
}
fn default_per_subnet() -> usize {
    novacron_mesh::subnet_cap::SubnetLimits::default().per_ipv4_24
}

fn default_seed() -> u64 {
    1
}
fn default_rtt_mu() -> f64 {
    4.942
}
fn default_rtt_sigma() -> f64 {
    0.824
}
fn default_target_fraction() -> f64 {
    0.9999
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            rtt_lognormal_mu_ln_ms: default_rtt_mu(),
            rtt_lognormal_sigma: default_rtt_sigma(),
            loss: 0.0,
            behind_nat_fraction: 0.0,
        }
    }
}

/// The most nodes a scenario may ask for.
pub const MAX_NODES: u64 = 10_000_000;

/// The most /24 subnets a scenario may spread its nodes over (addresses stay global IPv4).
pub const MAX_SUBNETS: u64 = 1 << 22;

fn invalid(key: &'static str, why: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key,
        why: why.into(),
    }
}

/// `v` within `[lo, hi]` (NaN never is), or an error naming `key`.
fn within<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ScenarioError> {
    if v >= lo && v <= hi {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be within [{lo}, {hi}] (got {v})"),
        ))
    }
}

/// A share in `[0, 1)`, or an error naming `key`.
fn share_below_one(key: &'static str, v: f64) -> Result<(), ScenarioError> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(key, format!("must be within [0, 1) (got {v})")))
    }
}

/// toml's message and where it is, without the line it quotes: a file that is not a
/// scenario (a mistyped path) must not have its contents echoed.
fn parse_error(text: &str, e: &toml::de::Error) -> ScenarioError {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return ScenarioError::Parse(message.to_string());
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    // The key on that line, if the line is `key = ...` with a bare key: the key names what
    // is wrong; the value is not repeated.
    let start = before.len() - (column - 1);
    let line_text = text[start..].lines().next().unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    match key {
        Some(k) => ScenarioError::Parse(format!(
            "line {line}, column {column}, key `{k}`: {message}"
        )),
        None => ScenarioError::Parse(format!("line {line}, column {column}: {message}")),
    }
}

impl Scenario {
    /// Parses and checks a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let n = self.run.nodes;
        within("run.nodes", n, 2, MAX_NODES)?;
        let net = &self.network;
        within(
            "network.rtt_lognormal_mu_ln_ms",
            net.rtt_lognormal_mu_ln_ms,
            -1000.0,
            12.0,
        )?;
        within(
            "network.rtt_lognormal_sigma",
            net.rtt_lognormal_sigma,
            0.0,
            5.0,
        )?;
        share_below_one("network.loss", net.loss)?;
        share_below_one("network.behind_nat_fraction", net.behind_nat_fraction)?;
        if self.owner.is_some() && self.churn.is_none() && self.kademlia.is_none() {
            return Err(invalid(
                "owner",
                "needs hosts that run over time: add [churn] or [kademlia]",
            ));
        }
        if self.epidemic.is_none() && self.kademlia.is_none() && self.churn.is_none() {
            return Err(ScenarioError::NoModel);
        }
        if let Some(e) = &self.epidemic {
            check_epidemic(e, n)?;
        }
        let needs_hours = self.kademlia.is_some() || self.churn.is_some();
        match self.run.hours {
            Some(_) if !needs_hours => {
                return Err(invalid(
                    "run.hours",
                    "is used only with [kademlia] or [churn] (the flat epidemic runs each broadcast to its end)",
                ))
            }
            Some(h) => within("run.hours", h, 0.001, 10_000.0)?,
            None if needs_hours => {
                return Err(invalid(
                    "run.hours",
                    "is required with [kademlia] or [churn]: how long the mesh runs",
                ))
            }
            None => {}
        }
        if let Some(k) = &self.kademlia {
            check_kademlia(k, n)?;
        }
        if let Some(c) = &self.churn {
            check_churn(c)?;
        }
        if let Some(o) = &self.owner {
            check_owner(o)?;
        }
        Ok(())
    }
}

fn check_epidemic(e: &EpidemicSection, n: u64) -> Result<(), ScenarioError> {
    within("epidemic.fanout", u64::from(e.fanout), 1, 64.min(n - 1))?;
    within("epidemic.interval_ms", e.interval_ms, 0.001, 3_600_000.0)?;
    within("epidemic.broadcasts", e.broadcasts, 1, 10_000)?;
    share_below_one("epidemic.failed_fraction", e.failed_fraction)?;
    within("epidemic.retransmit_mult", e.retransmit_mult, 0, 1_000)?;
    let t = e.target_fraction;
    if t > 0.0 && t <= 1.0 {
        Ok(())
    } else {
        Err(invalid(
            "epidemic.target_fraction",
            format!("must be within (0, 1] (got {t})"),
        ))
    }
}

fn check_kademlia(k: &KademliaSection, n: u64) -> Result<(), ScenarioError> {
    within("kademlia.k", k.k, 1, 256)?;
    within("kademlia.alpha", k.alpha, 1, 64)?;
    within("kademlia.lookups", k.lookups, 0, 10_000_000)?;
    within("kademlia.peer_timeout_s", k.peer_timeout_s, 0.001, 3_600.0)?;
    within("kademlia.refresh_minutes", k.refresh_minutes, 0.1, 10_000.0)?;
    if let Some(s) = k.subnets {
        within("kademlia.subnets", s, 1, MAX_SUBNETS.min(n))?;
    }
    within("kademlia.per_subnet_limit", k.per_subnet_limit, 1, 100_000)
}

fn check_owner(o: &OwnerSection) -> Result<(), ScenarioError> {
    within("owner.desktop_fraction", o.desktop_fraction, 0.0, 1.0)?;
    within("owner.session_mean_min", o.session_mean_min, 0.01, 1e6)?;
    within("owner.away_mean_min", o.away_mean_min, 0.01, 1e6)?;
    o.politeness
        .validate()
        .map_err(|e| invalid("owner.politeness", format!("{}: {}", e.key, e.reason)))
}

fn check_churn(c: &ChurnSection) -> Result<(), ScenarioError> {
    within("churn.cluster", c.cluster.len(), 1, 64)?;
    for cl in &c.cluster {
        within("churn.cluster.weight", cl.weight, 0.0, 1e9)?;
        let (UpTime::Gamma { shape, scale_h } | UpTime::Weibull { shape, scale_h }) = cl.up;
        within("churn.cluster.up.shape", shape, 0.01, 100.0)?;
        within("churn.cluster.up.scale_h", scale_h, 1e-6, 1e6)?;
        let d = &cl.down_h3;
        within("churn.cluster.down_h3.p", d.p.len(), 1, 8)?;
        if d.rate_per_h.len() != d.p.len() {
            return Err(invalid(
                "churn.cluster.down_h3.rate_per_h",
                format!("needs one rate per phase ({} phases)", d.p.len()),
            ));
        }
        for &p in &d.p {
            within("churn.cluster.down_h3.p", p, 0.0, 1.0)?;
        }
        let total: f64 = d.p.iter().sum();
        // Published figures are rounded to three decimals (one SETI cluster adds up to 1.001).
        if (total - 1.0).abs() > 0.005 {
            return Err(invalid(
                "churn.cluster.down_h3.p",
                format!("phase probabilities must add up to 1 (got {total})"),
            ));
        }
        for &r in &d.rate_per_h {
            within("churn.cluster.down_h3.rate_per_h", r, 1e-6, 1e6)?;
        }
    }
    if c.cluster.iter().all(|cl| cl.weight == 0.0) {
        return Err(invalid(
            "churn.cluster.weight",
            "at least one must be above 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [run]
        nodes = 1000
        [epidemic]
        fanout = 3
        interval_ms = 200
        broadcasts = 4
    "#;

    #[test]
    fn a_minimal_scenario_takes_the_published_defaults() {
        let s = Scenario::parse(GOOD).unwrap();
        assert_eq!(s.run.seed, 1);
        assert_eq!(s.network, NetworkSection::default());
        assert_eq!(s.network.rtt_lognormal_mu_ln_ms, 4.942);
        let e = s.epidemic.unwrap();
        assert_eq!((e.failed_fraction, e.retransmit_mult), (0.0, 0));
        assert_eq!(e.target_fraction, 0.9999);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        for (text, key) in [
            (
                GOOD.replace("nodes = 1000", "nodes = 1000\nnodez = 5"),
                "nodez",
            ),
            (
                GOOD.replace("fanout = 3", "fanout = 3\nfan_out = 2"),
                "fan_out",
            ),
            (format!("{GOOD}\n[chern]\nx = 1\n"), "chern"),
            (
                format!("{GOOD}\n[kademlia]\nlookups = 1\nalfa = 3\n"),
                "alfa",
            ),
        ] {
            let err = Scenario::parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn impossible_values_are_errors_naming_the_key() {
        for (from, to, key) in [
            ("nodes = 1000", "nodes = 1", "run.nodes"),
            ("nodes = 1000", "nodes = 20000000", "run.nodes"),
            ("fanout = 3", "fanout = 0", "epidemic.fanout"),
            (
                "interval_ms = 200",
                "interval_ms = -1",
                "epidemic.interval_ms",
            ),
            (
                "interval_ms = 200",
                "interval_ms = nan",
                "epidemic.interval_ms",
            ),
            ("broadcasts = 4", "broadcasts = 0", "epidemic.broadcasts"),
            (
                "broadcasts = 4",
                "broadcasts = 4\nfailed_fraction = 1.0",
                "epidemic.failed_fraction",
            ),
            (
                "broadcasts = 4",
                "broadcasts = 4\ntarget_fraction = 0",
                "epidemic.target_fraction",
            ),
        ] {
            let err = Scenario::parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(
                matches!(&err, ScenarioError::Invalid { key: k, .. } if *k == key),
                "{to}: {err}"
            );
        }
        let churned = "[run]\nnodes = 10\nhours = 1\n[[churn.cluster]]\nweight = 1\nup = { dist = \"gamma\", shape = 0.3, scale_h = 10 }\ndown_h3 = { p = [1.0], rate_per_h = [1.0] }\n";
        Scenario::parse(churned).unwrap();
        for (extra, key, names) in [
            ("[owner]\ndesktop_fraction = 0.5\nsession_mean_min = 1\naway_mean_min = 1\n[owner.politeness]\nidleTimeToRunMin = 100000\n", "owner.politeness", "idleTimeToRunMin"),
            ("[owner]\ndesktop_fraction = 1.5\nsession_mean_min = 1\naway_mean_min = 1\n", "owner.desktop_fraction", "1.5"),
        ] {
            let err = Scenario::parse(&format!("{churned}{extra}")).unwrap_err();
            assert!(
                matches!(&err, ScenarioError::Invalid { key: k, .. } if *k == key),
                "{err}"
            );
            assert!(err.to_string().contains(names), "{err}");
        }
        let typo = format!("{churned}[owner]\ndesktop_fraction = 0.5\nsession_mean_min = 1\naway_mean_min = 1\n[owner.politeness]\nrunWhileInuse = true\n");
        let err = Scenario::parse(&typo).unwrap_err().to_string();
        assert!(err.contains("runWhileInuse"), "{err}");
        // Hours without a model that runs over time, and a model over time without hours.
        let idle_hours = GOOD.replace("nodes = 1000", "nodes = 1000\nhours = 2");
        let no_hours = "[run]\nnodes = 10\n[kademlia]\nlookups = 1\n";
        for text in [idle_hours.as_str(), no_hours] {
            let err = Scenario::parse(text).unwrap_err();
            assert!(
                matches!(
                    &err,
                    ScenarioError::Invalid {
                        key: "run.hours",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let lossy = format!("{GOOD}\n[network]\nloss = 1.5\n");
        let err = Scenario::parse(&lossy).unwrap_err().to_string();
        assert!(err.contains("network.loss"), "{err}");
        let wrong_type = GOOD.replace("nodes = 1000", "nodes = \"many\"");
        let err = Scenario::parse(&wrong_type).unwrap_err().to_string();
        assert!(err.contains("nodes"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_scenario_is_not_echoed() {
        let secret = "root:x:0:0:root:/root:/bin/bash\nsecret-token-123\n";
        let err = Scenario::parse(secret).unwrap_err().to_string();
        assert!(
            !err.contains("root:x") && !err.contains("secret-token"),
            "{err}"
        );
        assert!(err.contains("line 1"), "{err}");
        let err = Scenario::parse(&format!("{GOOD}\nnodez = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodez") || err.contains("line"), "{err}");
    }

    #[test]
    fn a_scenario_without_a_model_says_what_to_add() {
        let err = Scenario::parse("[run]\nnodes = 10\n").unwrap_err();
        assert_eq!(err, ScenarioError::NoModel);
    }
}
