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
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, gossipsub, identify, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::behaviour::{MeshBehaviour, MeshBehaviourEvent};
use super::clock::{unix_now, Epoch};
use super::config::{
    SwarmConfig, ANNOUNCE_TOPIC, CELLS_TOPIC, IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL,
    MAX_ADDRS_PER_PEER,
};
use super::node::{Command, MeshEvent};
use super::sybil::{admit, Admission};
use super::{SwarmError, MAX_ANNOUNCEMENT_BYTES};
use crate::bootstrap_backoff::BootstrapBackoff;
use crate::cells::{verify_summary, CellId, SummaryRecord};
use crate::dht_keys::DhtKey;
use crate::summaries::{dht_prefers, SummaryBook};
use crate::table_refresh::TableRefresh;

/// How often the routing-table size is checked for changes Kademlia does not report
/// (entries dropped after failed dials).
const TABLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A routing table with fewer entries than this is small: the node has not found its
/// neighbourhood yet (Kademlia's k, the bound libp2p's own bootstrap-on-insert uses).
pub(super) const SMALL_TABLE: usize = libp2p::kad::K_VALUE.get();

type Reply<T> = oneshot::Sender<Result<T, SwarmError>>;

/// A Kademlia query someone waits for.
pub(super) enum PendingQuery {
    Closest(Vec<PeerId>, Reply<Vec<PeerId>>),
    Providers(HashSet<PeerId>, Reply<HashSet<PeerId>>),
    Provide(Reply<()>),
    PutSummary(CellId, Reply<CellId>),
    /// Verified summaries of the cell found so far.
    GetSummaries(CellId, Vec<SummaryRecord>, Reply<Vec<SummaryRecord>>),
}

/// Verifies `bytes` as a summary of `cell` at `now`.
fn verify_summary_of(cell: CellId, bytes: &[u8], now: Duration) -> Result<SummaryRecord, String> {
    let record = verify_summary(bytes, now).map_err(|e| e.to_string())?;
    match record.summary.cell() {
        Ok(c) if c == cell => Ok(record),
        Ok(c) => Err(format!("summary of cell {c} under the key of cell {cell}")),
        Err(e) => Err(e.to_string()),
    }
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
    /// Verified cell summaries heard on gossipsub or put by this node.
    pub book: SummaryBook,
    /// When a small table bootstraps again.
    pub small_table: BootstrapBackoff,
    /// When the table is refreshed (None: never on a schedule).
    pub refresh: Option<TableRefresh>,
    /// What `small_table` counts time from.
    pub epoch: Epoch,
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
                _ = tick.tick() => {
                    self.check_table();
                    self.bootstrap_if_small();
                    self.refresh_if_due();
                    self.book.prune(unix_now());
                }
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
            Command::PutCellSummary(bytes, r) => match self.put_summary(bytes) {
                Ok((cell, id)) => {
                    self.queries.insert(id, PendingQuery::PutSummary(cell, r));
                }
                Err(e) => {
                    let _ = r.send(Err(e));
                }
            },
            Command::PublishCellSummary(bytes, r) => {
                let _ = r.send(self.publish_summary(bytes));
            }
            Command::GetCellSummaries(cell, r) => {
                let key = kad::RecordKey::new(&DhtKey::Cell(cell).to_bytes());
                let id = self.swarm.behaviour_mut().kad.get_record(key);
                self.queries
                    .insert(id, PendingQuery::GetSummaries(cell, Vec::new(), r));
            }
            Command::CellSummaries(r) => {
                self.book.prune(unix_now());
                let _ = r.send(self.book.all().cloned().collect());
            }
            Command::GossipPeerScore(peer, r) => {
                let _ = r.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
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

    /// Verifies our own summary and keeps it in the book (an older or crowded-out one is
    /// still sent: the network may need it more than the book does).
    fn own_summary(&mut self, bytes: &[u8], now: Duration) -> Result<SummaryRecord, SwarmError> {
        let record = verify_summary(bytes, now)?;
        let cell = record.summary.cell()?;
        if let Err(e) = self.book.insert(record.clone(), now) {
            tracing::debug!(%cell, error = %e, "own summary not kept in the book");
        }
        Ok(record)
    }

    /// Starts a Kademlia put of a verified summary under its cell's key, expiring with it.
    fn put_summary(&mut self, bytes: Vec<u8>) -> Result<(CellId, QueryId), SwarmError> {
        let now = unix_now();
        let record = self.own_summary(&bytes, now)?;
        let cell = record.summary.cell()?;
        let key = kad::RecordKey::new(&DhtKey::Cell(cell).to_bytes());
        let held = self.held_summary(&key, cell, now);
        let mut kad_record = kad::Record::new(key, bytes);
        kad_record.expires = Some(
            Instant::now() + Duration::from_secs(record.expires_at.saturating_sub(now.as_secs())),
        );
        let kad = &mut self.swarm.behaviour_mut().kad;
        let id = kad
            .put_record(kad_record, kad::Quorum::One)
            .map_err(|e| SwarmError::PutRecord(e.to_string()))?;
        // libp2p stores the publisher's own copy unconditionally; put back a summary this
        // node held for others that the rule prefers, so its answer does not depend on
        // whether it is itself a representative.
        if let Some((held_record, held_summary)) = held {
            if !dht_prefers(&held_summary, &record) {
                if let Err(e) = kad.store_mut().put(held_record) {
                    tracing::debug!(%cell, error = %e, "held summary not restored");
                }
            }
        }
        Ok((cell, id))
    }

    fn publish_summary(&mut self, bytes: Vec<u8>) -> Result<CellId, SwarmError> {
        let record = self.own_summary(&bytes, unix_now())?;
        let cell = record.summary.cell()?;
        let topic = gossipsub::IdentTopic::new(CELLS_TOPIC);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, bytes)
            .map_err(|e| SwarmError::Publish(e.to_string()))?;
        Ok(cell)
    }

    /// The record stored under `key` and the summary it carries, if it still verifies.
    fn held_summary(
        &mut self,
        key: &kad::RecordKey,
        cell: CellId,
        now: Duration,
    ) -> Option<(kad::Record, SummaryRecord)> {
        let held = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .get(key)?
            .into_owned();
        let summary = verify_summary_of(cell, &held.value, now).ok()?;
        Some((held, summary))
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

    /// Looks up this node's own id again if the table is small but not empty, as the
    /// backoff says ([`BootstrapBackoff`]): the lookup that finds a node's neighbours. Not
    /// Kademlia's whole bootstrap, which adds a lookup per bucket: in a small mesh each one
    /// asks every peer, ~200 KB per node per run at 20 nodes. Kademlia keeps a peer whose dial
    /// failed in the table, so this also dials a bootstrap peer that was down at start.
    fn bootstrap_if_small(&mut self) {
        if !self.small_table.due(self.epoch.now(), self.table_size) {
            return;
        }
        let me = *self.swarm.local_peer_id();
        self.swarm.behaviour_mut().kad.get_closest_peers(me);
    }

    /// Refreshes the routing table when its jittered schedule says so ([`TableRefresh`]).
    fn refresh_if_due(&mut self) {
        let now = self.epoch.now();
        if !self.refresh.as_mut().is_some_and(|r| r.due(now)) || self.table_size == 0 {
            return;
        }
        if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
            tracing::debug!(error = %e, "routing table refresh");
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
                let acceptance = if message.topic == gossipsub::IdentTopic::new(CELLS_TOPIC).hash()
                {
                    self.on_gossiped_summary(propagation_source, &message.data)
                } else if message.topic == gossipsub::IdentTopic::new(ANNOUNCE_TOPIC).hash() {
                    self.on_announcement(propagation_source, message.source, message.data)
                } else {
                    tracing::debug!(%propagation_source, topic = %message.topic,
                        "message on a topic we do not serve rejected");
                    gossipsub::MessageAcceptance::Reject
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            _ => {}
        }
    }

    fn on_announcement(
        &mut self,
        propagation_source: PeerId,
        from: Option<PeerId>,
        data: Vec<u8>,
    ) -> gossipsub::MessageAcceptance {
        if data.len() > MAX_ANNOUNCEMENT_BYTES {
            tracing::debug!(%propagation_source, len = data.len(),
                "oversized announcement rejected");
            return gossipsub::MessageAcceptance::Reject;
        }
        self.emit(MeshEvent::Announcement { from, data });
        gossipsub::MessageAcceptance::Accept
    }

    /// A summary that does not verify is rejected (its sender's score drops); a valid one the
    /// book does not take (older than held, crowded out, book full) is ignored: not forwarded,
    /// not penalised.
    fn on_gossiped_summary(
        &mut self,
        propagation_source: PeerId,
        data: &[u8],
    ) -> gossipsub::MessageAcceptance {
        let now = unix_now();
        let record = match verify_summary(data, now) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%propagation_source, error = %e, "invalid cell summary rejected");
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        let (Ok(cell), Ok(signer)) = (record.summary.cell(), record.check_limits()) else {
            return gossipsub::MessageAcceptance::Reject;
        };
        match self.book.insert(record, now) {
            Ok(_) => {
                self.emit(MeshEvent::CellSummary { cell, signer });
                gossipsub::MessageAcceptance::Accept
            }
            Err(e) => {
                tracing::debug!(%propagation_source, error = %e, "cell summary not kept");
                gossipsub::MessageAcceptance::Ignore
            }
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
            kad::Event::InboundRequest { request } => {
                tracing::trace!(request = inbound_kind(&request), "kademlia request served");
                self.on_kad_inbound(request)
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => {
                if step.last {
                    tracing::debug!(
                        query = query_kind(&result),
                        requests = stats.num_requests(),
                        ms = stats.duration().map_or(0, |d| d.as_millis()),
                        "kademlia query finished"
                    );
                }
                self.on_query(id, result, step.last)
            }
            _ => {}
        }
    }

    /// Stores a provider record for a NovaCron key (Kademlia made sure the provider is the
    /// peer that sent it) and a value that is a valid summary of the cell its key names
    /// ([`Driver::on_put_record`]); everything else is dropped.
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
            kad::InboundRequest::PutRecord {
                source,
                record: Some(record),
                ..
            } => self.on_put_record(source, record),
            _ => {}
        }
    }

    /// Stores a value from `source` only when its key is a cell, it verifies now as a summary
    /// of that cell, and it beats the summary held under the key ([`dht_prefers`]). The
    /// record keeps the expiry Kademlia gave it, capped at the summary's own.
    fn on_put_record(&mut self, source: PeerId, mut record: kad::Record) {
        let cell = match DhtKey::parse(record.key.as_ref()) {
            Ok(DhtKey::Cell(cell)) => cell,
            Ok(key) => {
                tracing::debug!(%source, %key, "dropped a value under a key that takes none");
                return;
            }
            Err(e) => {
                tracing::debug!(%source, error = %e, "dropped a value under a foreign key");
                return;
            }
        };
        let now = unix_now();
        let summary = match verify_summary_of(cell, &record.value, now) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%source, %cell, error = %e, "dropped an invalid cell summary");
                return;
            }
        };
        if let Some((_, held)) = self.held_summary(&record.key, cell, now) {
            if !dht_prefers(&held, &summary) {
                tracing::debug!(%source, %cell, "kept the cell summary already held");
                return;
            }
        }
        let until =
            Instant::now() + Duration::from_secs(summary.expires_at.saturating_sub(now.as_secs()));
        record.expires = Some(record.expires.map_or(until, |e| e.min(until)));
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
            tracing::debug!(%source, %cell, error = %e, "cell summary not stored");
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
            (PendingQuery::PutSummary(..), QueryResult::PutRecord(result)) => {
                result.err().map(|e| SwarmError::PutRecord(e.to_string()))
            }
            (PendingQuery::GetSummaries(cell, found, _), QueryResult::GetRecord(result)) => {
                match result {
                    Ok(kad::GetRecordOk::FoundRecord(peer_record)) => {
                        let from = peer_record.peer;
                        match verify_summary_of(*cell, &peer_record.record.value, unix_now()) {
                            Ok(summary) => found.push(summary),
                            Err(e) => {
                                tracing::debug!(?from, %cell, error = %e,
                                    "dropped an invalid cell summary from the DHT");
                            }
                        }
                        None
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. })
                    | Err(kad::GetRecordError::NotFound { .. }) => None,
                    Err(kad::GetRecordError::Timeout { .. }) => Some(SwarmError::QueryTimeout),
                }
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
            PendingQuery::PutSummary(cell, reply) => {
                let _ = reply.send(failure.map_or(Ok(cell), Err));
            }
            PendingQuery::GetSummaries(cell, found, reply) => {
                let _ = reply.send(match failure {
                    Some(e) if found.is_empty() => Err(e),
                    _ => Ok(newest_per_signer(cell, found)),
                });
            }
        }
    }
}

/// The newest summary of each signer among `found`, best-ranked signer first (at most
/// [`crate::cells::MAX_CONTACTS`]).
fn newest_per_signer(cell: CellId, found: Vec<SummaryRecord>) -> Vec<SummaryRecord> {
    let mut book = SummaryBook::new(1);
    let now = unix_now();
    for record in found {
        let _ = book.insert(record, now);
    }
    book.for_cell(cell).into_iter().cloned().collect()
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

/// The name of a Kademlia query's kind, for logs.
fn query_kind(result: &QueryResult) -> &'static str {
    match result {
        QueryResult::Bootstrap(_) => "bootstrap",
        QueryResult::GetClosestPeers(_) => "get_closest_peers",
        QueryResult::GetProviders(_) => "get_providers",
        QueryResult::StartProviding(_) => "start_providing",
        QueryResult::RepublishProvider(_) => "republish_provider",
        QueryResult::GetRecord(_) => "get_record",
        QueryResult::PutRecord(_) => "put_record",
        QueryResult::RepublishRecord(_) => "republish_record",
    }
}

/// The name of a served Kademlia request's kind, for logs.
fn inbound_kind(request: &kad::InboundRequest) -> &'static str {
    match request {
        kad::InboundRequest::FindNode { .. } => "find_node",
        kad::InboundRequest::GetProvider { .. } => "get_provider",
        kad::InboundRequest::AddProvider { .. } => "add_provider",
        kad::InboundRequest::GetRecord { .. } => "get_record",
        kad::InboundRequest::PutRecord { .. } => "put_record",
    }
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
