//! The node's Prometheus metrics (`GET /metrics`): VMs by state, migrations (count, duration,
//! downtime, bytes), mesh and cell sizes, failure detections, the politeness state and the
//! API's own requests. Every name starts with `novacron_`.
//!
//! The daemon owns one [`Metrics`] and feeds it (`set_vms`, `observe_migration`, ...); the
//! REST layer records requests into the same one and serves [`Metrics::encode`]. Gauges
//! hold what the daemon last said: nothing here polls the node, so a value is as fresh as
//! the daemon's last call.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::types::{
    MigrationDirection, MigrationInfo, MigrationState, PolitenessInfo, VmInfo, VmState,
};

/// The politeness states the gauge knows (`PolitenessInfo::state`).
pub const POLITENESS_STATES: [&str; 4] = ["run", "throttled", "evacuate", "suspended"];

/// How many final migrations are remembered so a repeated report is not counted twice.
const SEEN_MIGRATIONS: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationLabels {
    direction: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LiveLabel {
    live: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Why the API turns connections away (`api::rest::connections::Refusal::label`).
const CONNECTION_REFUSALS: [&str; 2] = ["listener_full", "address_full"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn api_duration_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The node's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    vms: Family<StateLabel, Gauge>,
    migrations: Family<MigrationLabels, Counter>,
    migration_duration: Histogram,
    migration_downtime: Histogram,
    migration_bytes: Histogram,
    connected_peers: Gauge,
    routing_table_peers: Gauge,
    cell_members: Family<LiveLabel, Gauge>,
    mesh_size_estimate: Gauge,
    failure_detections: Counter,
    politeness: Family<StateLabel, Gauge>,
    api_requests: Family<RequestLabels, Counter>,
    api_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    api_connections: Gauge,
    api_connections_refused: Family<ReasonLabel, Counter>,
    seen_migrations: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("novacron");
        let vms = Family::<StateLabel, Gauge>::default();
        registry.register("vms", "VMs on this node by state", vms.clone());
        let migrations = Family::<MigrationLabels, Counter>::default();
        registry.register(
            "migrations",
            "Migrations that settled, by direction (in, out) and result (done, failed, \
             cancelled); one in doubt counts when it settles",
            migrations.clone(),
        );
        // 100 ms to ~27 min.
        let migration_duration = Histogram::new(exponential_buckets(0.1, 2.0, 15));
        registry.register(
            "migration_duration_seconds",
            "Wall time of migrations that ended, start to final state",
            migration_duration.clone(),
        );
        // 1 ms to ~16 s.
        let migration_downtime = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "migration_downtime_seconds",
            "How long the VM was paused by a migration (source side)",
            migration_downtime.clone(),
        );
        // 1 MiB to 64 GiB.
        let migration_bytes = Histogram::new(exponential_buckets(1048576.0, 4.0, 9));
        registry.register(
            "migration_bytes",
            "Bytes a migration put on the wire",
            migration_bytes.clone(),
        );
        let connected_peers = Gauge::default();
        registry.register(
            "mesh_connected_peers",
            "Peers with an open connection",
            connected_peers.clone(),
        );
        let routing_table_peers = Gauge::default();
        registry.register(
            "mesh_routing_table_peers",
            "Peers in the Kademlia routing table",
            routing_table_peers.clone(),
        );
        let cell_members = Family::<LiveLabel, Gauge>::default();
        registry.register(
            "cell_members",
            "Members of this node's cell (itself included), live or not",
            cell_members.clone(),
        );
        let mesh_size_estimate = Gauge::default();
        registry.register(
            "mesh_size_estimate",
            "The node's estimate of the number of nodes in the mesh",
            mesh_size_estimate.clone(),
        );
        let failure_detections = Counter::default();
        registry.register(
            "failure_detections",
            "Cell members the failure detector declared dead",
            failure_detections.clone(),
        );
        let politeness = Family::<StateLabel, Gauge>::default();
        registry.register(
            "politeness_state",
            "The politeness decision now: 1 on the current state, 0 on the others",
            politeness.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests answered, by method, route template and status",
            api_requests.clone(),
        );
        let api_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(api_duration_histogram);
        registry.register(
            "api_request_duration_seconds",
            "Time to answer API requests (to the response head), by method and route template",
            api_duration.clone(),
        );
        let api_connections = Gauge::default();
        registry.register(
            "api_connections",
            "Connections open to the API now",
            api_connections.clone(),
        );
        let api_connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "api_connections_refused",
            "Connections the API turned away at once, by reason (listener_full, address_full)",
            api_connections_refused.clone(),
        );

        let metrics = Metrics {
            registry,
            vms,
            migrations,
            migration_duration,
            migration_downtime,
            migration_bytes,
            connected_peers,
            routing_table_peers,
            cell_members,
            mesh_size_estimate,
            failure_detections,
            politeness,
            api_requests,
            api_duration,
            api_connections,
            api_connections_refused,
            seen_migrations: Mutex::new((HashSet::new(), VecDeque::new())),
        };
        // Every label value that can occur shows from the start (zeros), so queries and
        // dashboards never see a series appear out of nothing.
        metrics.set_vms(&[]);
        for direction in ["in", "out"] {
            for result in ["done", "failed", "cancelled"] {
                metrics
                    .migrations
                    .get_or_create(&MigrationLabels {
                        direction: direction.into(),
                        result: result.into(),
                    })
                    .get();
            }
        }
        for reason in CONNECTION_REFUSALS {
            let _ = metrics.api_connections_refused.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        metrics.set_mesh(0, 0, 0, 0, 0);
        metrics.set_politeness_state("run");
        metrics
    }

    /// The VM gauge from the node's full list (every state, zeros included).
    pub fn set_vms(&self, vms: &[VmInfo]) {
        for state in VmState::ALL {
            let n = vms.iter().filter(|v| v.state == state).count();
            self.vms
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(n as i64);
        }
    }

    /// Counts a migration that settled, with its outcome: the daemon calls this once, at
    /// the moment it settles (a migration in doubt is not settled; one that settled in an
    /// earlier run of the daemon was counted by that run: counters restart with the
    /// process). A record not final is ignored, and so is a repeated report of one already
    /// counted among the last few thousand.
    pub fn observe_migration(&self, m: &MigrationInfo) {
        if !m.state.is_final() {
            return;
        }
        {
            let Ok(mut seen) = self.seen_migrations.lock() else {
                return;
            };
            let (set, order) = &mut *seen;
            if !set.insert(m.id.clone()) {
                return;
            }
            order.push_back(m.id.clone());
            if order.len() > SEEN_MIGRATIONS {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
        let direction = match m.direction {
            MigrationDirection::In => "in",
            MigrationDirection::Out => "out",
        };
        let result = match m.state {
            MigrationState::Done => "done",
            MigrationState::Failed => "failed",
            MigrationState::Cancelled => "cancelled",
            MigrationState::Running => return,
        };
        self.migrations
            .get_or_create(&MigrationLabels {
                direction: direction.into(),
                result: result.into(),
            })
            .inc();
        if let Some(end) = m.ended_at_ms {
            let ms = end.saturating_sub(m.started_at_ms);
            self.migration_duration.observe(ms as f64 / 1000.0);
        }
        if let Some(d) = m.downtime_ms.filter(|d| d.is_finite() && *d >= 0.0) {
            self.migration_downtime.observe(d / 1000.0);
        }
        self.migration_bytes.observe(m.wire_bytes as f64);
    }

    /// Mesh and cell sizes: open connections, routing table, cell members live and dead,
    /// the mesh size estimate.
    pub fn set_mesh(
        &self,
        connected: usize,
        routing: usize,
        live: usize,
        dead: usize,
        estimate: u64,
    ) {
        self.connected_peers.set(clamp(connected as u64));
        self.routing_table_peers.set(clamp(routing as u64));
        self.cell_members
            .get_or_create(&LiveLabel {
                live: "true".into(),
            })
            .set(clamp(live as u64));
        self.cell_members
            .get_or_create(&LiveLabel {
                live: "false".into(),
            })
            .set(clamp(dead as u64));
        self.mesh_size_estimate.set(clamp(estimate));
    }

    /// One more cell member declared dead by the failure detector.
    pub fn failure_detected(&self) {
        self.failure_detections.inc();
    }

    /// The politeness gauge: 1 on `p.state`, 0 on the others (all 0 for a state it does not
    /// know, which is logged).
    pub fn set_politeness(&self, p: &PolitenessInfo) {
        self.set_politeness_state(&p.state);
    }

    fn set_politeness_state(&self, current: &str) {
        if !POLITENESS_STATES.contains(&current) {
            tracing::warn!(state = current, "politeness state unknown to the metrics");
        }
        for state in POLITENESS_STATES {
            self.politeness
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::from(state == current));
        }
    }

    /// One API request answered: `route` is the matched route template (`/api/v1/vms/{id}`),
    /// never the raw path, so the label set stays small.
    /// Connections open to the API now.
    pub fn api_connections(&self, open: usize) {
        self.api_connections.set(clamp(open as u64));
    }

    /// A connection the API turned away, with the reason's label.
    pub fn api_connection_refused(&self, reason: &str) {
        self.api_connections_refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn api_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.api_requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteLabels {
                method: method.into(),
                route: route.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
        {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        to_prometheus_text(&text)
    }
}

/// Every family [`Metrics`] exposes, as a scrape names it.
#[cfg(test)]
pub(crate) const FAMILIES: [&str; 15] = [
    "novacron_vms",
    "novacron_migrations_total",
    "novacron_migration_duration_seconds",
    "novacron_migration_downtime_seconds",
    "novacron_migration_bytes",
    "novacron_mesh_connected_peers",
    "novacron_mesh_routing_table_peers",
    "novacron_cell_members",
    "novacron_mesh_size_estimate",
    "novacron_failure_detections_total",
    "novacron_politeness_state",
    "novacron_api_requests_total",
    "novacron_api_request_duration_seconds",
    "novacron_api_connections",
    "novacron_api_connections_refused_total",
];

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// prometheus-client writes OpenMetrics, where a counter's family `x` has samples `x_total`;
/// the Prometheus 0.0.4 text format names the family as its samples. This renames the HELP
/// and TYPE lines of counters (the only difference in what [`Metrics`] registers: no units,
/// no exemplars, no EOF marker is written).
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::MigrationMode;
    use crate::model::fixtures::vm;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
        match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn migration(id: &str, state: MigrationState) -> MigrationInfo {
        MigrationInfo {
            id: id.into(),
            vm_id: "vm1".into(),
            direction: MigrationDirection::Out,
            peer: "12D3Koo".into(),
            mode: MigrationMode::Live,
            state,
            started_at_ms: 1_000,
            ended_at_ms: Some(3_500),
            downtime_ms: Some(12.5),
            wire_bytes: 5 << 20,
            error: None,
            progress: None,
        }
    }

    #[test]
    fn a_fresh_registry_has_every_family_with_zeros_and_parses() {
        let m = Metrics::new();
        m.api_request("GET", "/api/v1/vms", 200, Duration::from_millis(3));
        let text = m.encode();
        assert!(!text.contains("# EOF"), "{text}");
        let scrape = parse(&text);
        for family in FAMILIES {
            assert!(
                scrape.docs.contains_key(family),
                "{family} missing from\n{text}"
            );
        }
        for state in VmState::ALL {
            assert_eq!(
                value(&scrape, "novacron_vms", &[("state", state.as_str())]),
                0.0
            );
        }
        assert_eq!(
            value(&scrape, "novacron_politeness_state", &[("state", "run")]),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "novacron_migrations_total",
                &[("direction", "in"), ("result", "cancelled")]
            ),
            0.0
        );
        let counter = scrape
            .samples
            .iter()
            .find(|s| s.metric == "novacron_api_requests_total")
            .unwrap();
        assert!(
            matches!(counter.value, prometheus_parse::Value::Counter(v) if v == 1.0),
            "counters are typed as counters: {counter:?}"
        );
        assert_eq!(counter.labels.get("route"), Some("/api/v1/vms"));
        assert_eq!(counter.labels.get("status"), Some("200"));
    }

    #[test]
    fn the_daemon_calls_move_the_values() {
        let m = Metrics::new();
        m.set_vms(&[
            vm("a", VmState::Running),
            vm("b", VmState::Running),
            vm("c", VmState::Suspended),
        ]);
        m.observe_migration(&migration("m0", MigrationState::Running));
        m.observe_migration(&migration("m1", MigrationState::Done));
        m.observe_migration(&migration("m1", MigrationState::Done));
        m.observe_migration(&migration("m2", MigrationState::Failed));
        m.set_mesh(7, 40, 5, 2, 1200);
        m.failure_detected();
        m.set_politeness(&PolitenessInfo {
            state: "evacuate".into(),
            reasons: vec!["owner active".into()],
            owner_idle_s: Some(3),
            on_battery: false,
            cpu_cap_percent: 50,
            mem_cap_mib: 1024,
            owner_override: Default::default(),
        });
        let scrape = parse(&m.encode());
        assert_eq!(value(&scrape, "novacron_vms", &[("state", "running")]), 2.0);
        assert_eq!(
            value(&scrape, "novacron_vms", &[("state", "suspended")]),
            1.0
        );
        let done = [("direction", "out"), ("result", "done")];
        assert_eq!(value(&scrape, "novacron_migrations_total", &done), 1.0);
        let failed = [("direction", "out"), ("result", "failed")];
        assert_eq!(value(&scrape, "novacron_migrations_total", &failed), 1.0);
        assert_eq!(value(&scrape, "novacron_mesh_connected_peers", &[]), 7.0);
        assert_eq!(
            value(&scrape, "novacron_mesh_routing_table_peers", &[]),
            40.0
        );
        assert_eq!(
            value(&scrape, "novacron_cell_members", &[("live", "true")]),
            5.0
        );
        assert_eq!(
            value(&scrape, "novacron_cell_members", &[("live", "false")]),
            2.0
        );
        assert_eq!(value(&scrape, "novacron_mesh_size_estimate", &[]), 1200.0);
        assert_eq!(
            value(&scrape, "novacron_failure_detections_total", &[]),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "novacron_politeness_state",
                &[("state", "evacuate")]
            ),
            1.0
        );
        assert_eq!(
            value(&scrape, "novacron_politeness_state", &[("state", "run")]),
            0.0
        );
        assert_eq!(
            value(&scrape, "novacron_migration_duration_seconds_count", &[]),
            2.0
        );
        assert_eq!(
            value(&scrape, "novacron_migration_duration_seconds_sum", &[]),
            5.0
        );
        let downtime = scrape
            .samples
            .iter()
            .find(|s| s.metric == "novacron_migration_downtime_seconds")
            .unwrap();
        let prometheus_parse::Value::Histogram(buckets) = &downtime.value else {
            panic!("{downtime:?}")
        };
        let under_16ms = buckets.iter().find(|b| b.less_than == 0.016).unwrap();
        assert_eq!(under_16ms.count, 2.0, "12.5 ms twice: {buckets:?}");
    }
}
