//! The swarm task: owns the `Swarm`, turns its events into routing-table decisions and
//! [`MeshEvent`]s, and answers [`Command`]s.
//!
//! Routing-table policy: Kademlia inserts nothing by itself (manual mode). A peer enters the
//! table when it showed it serves the NovaCron DHT (identify lists the protocol, or Kademlia
//! reports a routable connection) and each of its addresses passes the subnet cap
//! ([`super::sybil::admit`]). Configured bootstrap peers skip the cap: the operator chose them.
//!
//! What this cannot do: it trusts the listen addresses a peer announces (a peer can name
//! loopback or private addresses it does not own and have us dial them later), and it never
//! evicts a peer to make room for another.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, gossipsub, identify, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::behaviour::{MeshBehaviour, MeshBehaviourEvent};
use super::config::{
    SwarmConfig, ANNOUNCE_TOPIC, IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL, MAX_ADDRS_PER_PEER,
};
use super::node::{Command, MeshEvent};
use super::sybil::{admit, Admission};
use super::{SwarmError, MAX_ANNOUNCEMENT_BYTES};
use crate::dht_keys::DhtKey;

/// How often the routing-table size is checked for changes Kademlia does not report
/// (entries dropped after failed dials).
const TABLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, SwarmError>>;

/// A Kademlia query someone waits for.
pub(super) enum PendingQuery {
    Closest(Vec<PeerId>, Reply<Vec<PeerId>>),
    Providers(HashSet<PeerId>, Reply<HashSet<PeerId>>),
    Provide(Reply<()>),
}

pub(super) struct Driver {
    pub swarm: Swarm<MeshBehaviour>,
    pub commands: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<MeshEvent>,
    pub cfg: SwarmConfig,
    pub bootstrap_peers: HashSet<PeerId>,
    pub queries: HashMap<QueryId, PendingQuery>,
    pub table_size: usize,
    /// libp2p's bandwidth counters.
    pub metrics: prometheus_client::registry::Registry,
}

impl Driver {
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TABLE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Stop) | None => break,
                    Some(c) => self.on_command(c),
                },
                _ = tick.tick() => self.check_table(),
            }
        }
        tracing::debug!("swarm task stopped");
    }

    fn emit(&self, event: MeshEvent) {
        // No subscriber is fine: events are a courtesy, state is asked for.
        let _ = self.events.send(event);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(r) => {
                let _ = r.send(self.swarm.listeners().cloned().collect());
            }
            Command::ConnectedPeers(r) => {
                let _ = r.send(self.swarm.connected_peers().copied().collect());
            }
            Command::RoutingTable(r) => {
                let _ = r.send(self.routing_table());
            }
            Command::FindClosest(target, r) => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(target);
                self.queries
                    .insert(id, PendingQuery::Closest(Vec::new(), r));
            }
            Command::StartProviding(key, r) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                match kad.start_providing(kad::RecordKey::new(&key.to_bytes())) {
                    Ok(id) => {
                        self.queries.insert(id, PendingQuery::Provide(r));
                    }
                    Err(e) => {
                        let _ = r.send(Err(SwarmError::Provide(e.to_string())));
                    }
                }
            }
            Command::GetProviders(key, r) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key.to_bytes()));
                self.queries
                    .insert(id, PendingQuery::Providers(HashSet::new(), r));
            }
            Command::Dial(addr, r) => {
                let result = self.swarm.dial(addr.clone()).map_err(|e| SwarmError::Dial {
                    addr,
                    reason: e.to_string(),
                });
                let _ = r.send(result);
            }
            Command::Announce(data, r) => {
                let _ = r.send(self.announce(data));
            }
            Command::AddPeerAddresses(peer, addrs) => {
                for addr in addrs.into_iter().filter(dialable).take(MAX_ADDRS_PER_PEER) {
                    self.swarm.add_peer_address(peer, addr);
                }
            }
            Command::WireBytes(r) => {
                let _ = r.send(super::wire_metrics::wire_bytes(&self.metrics));
            }
            Command::Stop => {}
        }
    }

    fn announce(&mut self, data: Vec<u8>) -> Result<(), SwarmError> {
        if data.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(SwarmError::AnnouncementTooLarge {
                len: data.len(),
                max: MAX_ANNOUNCEMENT_BYTES,
            });
        }
        let topic = gossipsub::IdentTopic::new(ANNOUNCE_TOPIC);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, data)
            .map(|_| ())
            .map_err(|e| SwarmError::Publish(e.to_string()))
    }

    fn routing_table(&mut self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut out = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                let addrs = entry.node.value.iter().cloned().collect();
                out.push((*entry.node.key.preimage(), addrs));
            }
        }
        out
    }

    fn check_table(&mut self) {
        let size: usize = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        if size != self.table_size {
            self.table_size = size;
            self.emit(MeshEvent::RoutingTable { peers: size });
        }
    }

    /// Adds `addr` of `peer` to the routing table if the subnet cap allows it.
    fn offer_to_table(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if !self.bootstrap_peers.contains(&peer) {
            let table = self.routing_table();
            let pairs = table
                .iter()
                .flat_map(|(p, addrs)| addrs.iter().map(move |a| (p, a)));
            let verdict = admit(&peer, &addr, pairs, &self.cfg.subnet_limits);
            if verdict != Admission::Admit {
                tracing::debug!(%peer, %addr, ?verdict, "kept out of the routing table");
                self.emit(MeshEvent::RoutingRefused {
                    peer,
                    addr,
                    reason: verdict,
                });
                return;
            }
        }
        let update = self
            .swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, addr.clone());
        tracing::trace!(%peer, %addr, ?update, "routing table insert");
        self.check_table();
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(e) => self.on_behaviour_event(e),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(MeshEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.emit(MeshEvent::ListenAddrExpired(address));
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } if num_established.get() == 1 => {
                let addr = endpoint.get_remote_address().clone();
                self.emit(MeshEvent::Connected {
                    peer: peer_id,
                    addr,
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.emit(MeshEvent::Disconnected { peer: peer_id });
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: MeshBehaviourEvent) {
        match event {
            MeshBehaviourEvent::Identify(e) => self.on_identify(e),
            MeshBehaviourEvent::Kad(e) => self.on_kad(e),
            MeshBehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let public = matches!(new, autonat::NatStatus::Public(_));
                tracing::info!(?new, "reachability changed");
                self.emit(MeshEvent::Reachability { public });
                if !self.cfg.force_kad_server {
                    let mode = if public {
                        kad::Mode::Server
                    } else {
                        kad::Mode::Client
                    };
                    self.swarm.behaviour_mut().kad.set_mode(Some(mode));
                    self.emit(MeshEvent::KadServer(public));
                }
            }
            MeshBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
                    if let Err(error) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, %error, "mdns dial failed");
                    }
                }
            }
            MeshBehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let ok = message.data.len() <= MAX_ANNOUNCEMENT_BYTES;
                let acceptance = if ok {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if ok {
                    self.emit(MeshEvent::Announcement {
                        from: message.source,
                        data: message.data,
                    });
                } else {
                    tracing::debug!(%propagation_source, len = message.data.len(),
                        "oversized announcement rejected");
                }
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        if info.protocol_version != IDENTIFY_PROTOCOL_VERSION {
            tracing::debug!(%peer_id, version = %info.protocol_version, "not a NovaCron node");
            return;
        }
        let kad_server = info.protocols.contains(&KAD_PROTOCOL);
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(dialable)
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        if kad_server {
            for addr in &addrs {
                self.offer_to_table(peer_id, addr.clone());
            }
        }
        self.emit(MeshEvent::Identified {
            peer: peer_id,
            agent: info.agent_version,
            listen_addrs: addrs,
            kad_server,
        });
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                self.offer_to_table(peer, address);
            }
            kad::Event::RoutingUpdated { .. } => self.check_table(),
            kad::Event::ModeChanged { new_mode } => {
                tracing::info!(%new_mode, "kademlia mode");
            }
            kad::Event::InboundRequest { request } => self.on_kad_inbound(request),
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => self.on_query(id, result, step.last),
            _ => {}
        }
    }

    /// Stores a provider record for a NovaCron key (Kademlia made sure the provider is the
    /// peer that sent it); values and foreign keys are dropped (nothing validates values yet).
    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        match request {
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } => match DhtKey::parse(record.key.as_ref()) {
                Ok(key) => {
                    let provider = record.provider;
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record)
                    {
                        tracing::debug!(%provider, %key, error = %e, "provider record not stored");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "dropped a provider record"),
            },
            kad::InboundRequest::PutRecord { .. } => {
                tracing::debug!("dropped an unvalidated kademlia record");
            }
            _ => {}
        }
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        let Some(pending) = self.queries.get_mut(&id) else {
            return;
        };
        let failure = match (pending, result) {
            (PendingQuery::Closest(found, _), QueryResult::GetClosestPeers(result)) => match result
            {
                Ok(ok) => {
                    found.extend(ok.peers.into_iter().map(|p| p.peer_id));
                    None
                }
                Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                    found.extend(peers.into_iter().map(|p| p.peer_id));
                    Some(SwarmError::QueryTimeout)
                }
            },
            (PendingQuery::Providers(found, _), QueryResult::GetProviders(result)) => {
                match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        found.extend(providers);
                        None
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => None,
                    Err(kad::GetProvidersError::Timeout { .. }) => Some(SwarmError::QueryTimeout),
                }
            }
            (PendingQuery::Provide(_), QueryResult::StartProviding(result)) => {
                result.err().map(|e| SwarmError::Provide(e.to_string()))
            }
            _ => None,
        };
        if !last && failure.is_none() {
            return;
        }
        let Some(pending) = self.queries.remove(&id) else {
            return;
        };
        // A query that found something before it timed out answers with what it found.
        match pending {
            PendingQuery::Closest(found, reply) => {
                let _ = reply.send(match failure {
                    Some(e) if found.is_empty() => Err(e),
                    _ => Ok(found),
                });
            }
            PendingQuery::Providers(found, reply) => {
                let _ = reply.send(match failure {
                    Some(e) if found.is_empty() => Err(e),
                    _ => Ok(found),
                });
            }
            PendingQuery::Provide(reply) => {
                let _ = reply.send(failure.map_or(Ok(()), Err));
            }
        }
    }
}

/// An address worth putting in the routing table: it has an IP that is not unspecified and a
/// transport after it.
fn dialable(addr: &Multiaddr) -> bool {
    let mut it = addr.iter();
    let ip_ok = match it.next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified(),
        _ => false,
    };
    ip_ok && matches!(it.next(), Some(Protocol::Tcp(_) | Protocol::Udp(_)))
}

#[cfg(test)]
mod tests {
    use super::dialable;

    #[test]
    fn only_concrete_ip_addresses_are_dialable() {
        for (s, want) in [
            ("/ip4/127.0.0.1/tcp/4001", true),
            ("/ip4/10.0.0.1/udp/4001/quic-v1", true),
            ("/ip6/::1/tcp/1", true),
            ("/ip4/0.0.0.0/tcp/4001", false),
            ("/ip6/::/tcp/4001", false),
            ("/dns4/example.org/tcp/1", false),
            ("/ip4/1.2.3.4", false),
        ] {
            let addr: libp2p::Multiaddr = s.parse().unwrap();
            assert_eq!(dialable(&addr), want, "{s}");
        }
    }
}
