//! Bytes on the wire, read back from libp2p's bandwidth counters.
//!
//! The swarm's transport is wrapped in `libp2p_metrics::BandwidthTransport`, which counts
//! every byte each connection writes and reads after noise and the multiplexer (what the
//! network carries, minus TCP/UDP/IP headers), into a prometheus registry. The counters are
//! private to that family, so they are read back through the registry's text encoding.

use prometheus_client::registry::Registry;

use super::node::WireBytes;

/// The counter family `BandwidthTransport` registers (under the `libp2p` prefix, unit bytes).
const BANDWIDTH_METRIC: &str = "libp2p_bandwidth_bytes_total{";

/// The totals of every bandwidth counter in `registry`.
pub(super) fn wire_bytes(registry: &Registry) -> WireBytes {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "cannot encode the bandwidth metrics");
        return WireBytes::default();
    }
    sum_bandwidth(&text)
}

/// Sums the bandwidth counters of an OpenMetrics text by direction.
fn sum_bandwidth(text: &str) -> WireBytes {
    let mut total = WireBytes::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(BANDWIDTH_METRIC) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        if labels.contains("direction=\"Outbound\"") {
            total.sent += value;
        } else if labels.contains("direction=\"Inbound\"") {
            total.received += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_counters_by_direction_across_protocol_stacks() {
        let text = "# HELP libp2p_bandwidth_bytes Bandwidth usage.\n\
            # TYPE libp2p_bandwidth_bytes counter\n\
            # UNIT libp2p_bandwidth_bytes bytes\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp/p2p\",direction=\"Inbound\"} 100\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp/p2p\",direction=\"Outbound\"} 250\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/udp/quic-v1/p2p\",direction=\"Outbound\"} 50\n\
            libp2p_other_total{direction=\"Outbound\"} 999\n\
            # EOF\n";
        assert_eq!(
            sum_bandwidth(text),
            WireBytes {
                sent: 300,
                received: 100
            }
        );
    }

    #[test]
    fn garbage_counts_nothing() {
        assert_eq!(
            sum_bandwidth("libp2p_bandwidth_bytes_total{direction=\"Inbound\"} many\n"),
            WireBytes::default()
        );
    }
}
