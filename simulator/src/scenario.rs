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
    #[error("scenario: nothing to simulate: add an [epidemic] table (the only model so far)")]
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
        }
    }
}

/// The most nodes a scenario may ask for.
pub const MAX_NODES: u64 = 10_000_000;

fn invalid(key: &'static str, why: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key,
        why: why.into(),
    }
}

fn check_fraction(key: &'static str, v: f64, one_allowed: bool) -> Result<(), ScenarioError> {
    let ok = v.is_finite() && v >= 0.0 && (v < 1.0 || (one_allowed && v == 1.0));
    if ok {
        Ok(())
    } else {
        let range = if one_allowed { "[0, 1]" } else { "[0, 1)" };
        Err(invalid(key, format!("must be within {range} (got {v})")))
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
        if !(2..=MAX_NODES).contains(&n) {
            return Err(invalid(
                "run.nodes",
                format!("must be between 2 and {MAX_NODES} (got {n})"),
            ));
        }
        let net = &self.network;
        if !net.rtt_lognormal_mu_ln_ms.is_finite() || net.rtt_lognormal_mu_ln_ms > 12.0 {
            return Err(invalid(
                "network.rtt_lognormal_mu_ln_ms",
                format!(
                    "must be a finite ln(ms) of at most 12 (~45 hours) (got {})",
                    net.rtt_lognormal_mu_ln_ms
                ),
            ));
        }
        if !net.rtt_lognormal_sigma.is_finite() || !(0.0..=5.0).contains(&net.rtt_lognormal_sigma) {
            return Err(invalid(
                "network.rtt_lognormal_sigma",
                format!("must be within [0, 5] (got {})", net.rtt_lognormal_sigma),
            ));
        }
        check_fraction("network.loss", net.loss, false)?;
        let Some(e) = &self.epidemic else {
            return Err(ScenarioError::NoModel);
        };
        if e.fanout == 0 || u64::from(e.fanout) >= n || e.fanout > 64 {
            return Err(invalid(
                "epidemic.fanout",
                format!(
                    "must be at least 1, at most 64 and below run.nodes (got {})",
                    e.fanout
                ),
            ));
        }
        if !e.interval_ms.is_finite() || !(0.001..=3_600_000.0).contains(&e.interval_ms) {
            return Err(invalid(
                "epidemic.interval_ms",
                format!("must be within [0.001, 3600000] (got {})", e.interval_ms),
            ));
        }
        if !(1..=10_000).contains(&e.broadcasts) {
            return Err(invalid(
                "epidemic.broadcasts",
                format!("must be between 1 and 10000 (got {})", e.broadcasts),
            ));
        }
        check_fraction("epidemic.failed_fraction", e.failed_fraction, false)?;
        if e.retransmit_mult > 1_000 {
            return Err(invalid(
                "epidemic.retransmit_mult",
                format!("must be at most 1000 (got {})", e.retransmit_mult),
            ));
        }
        if !(e.target_fraction.is_finite() && e.target_fraction > 0.0 && e.target_fraction <= 1.0) {
            return Err(invalid(
                "epidemic.target_fraction",
                format!("must be within (0, 1] (got {})", e.target_fraction),
            ));
        }
        Ok(())
    }
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
            (format!("{GOOD}\n[churn]\nx = 1\n"), "churn"),
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
