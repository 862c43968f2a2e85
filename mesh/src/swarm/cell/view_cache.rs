//! Reading chitchat's state into [`NodeView`]s once per round without redoing the work for
//! members whose key-values did not change.
//!
//! Why: every round reads every member held. Parsing a member's `peer` key-value (base58, then
//! its short id checked with blake3) and its [`MemberInfo`] (numbers, addresses, a hex record)
//! each time was ~6% of an idle node's CPU in a cell of 30 (`perf`). chitchat bumps a node's
//! `max_version` whenever one of its key-values changes (the heartbeat is not a key-value), so
//! a node whose `max_version` is the one read last time has the same `peer` and info.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chitchat::{Chitchat, ChitchatId};
use libp2p::PeerId;

use super::members::{MemberInfo, NodeView};
use crate::cell_wire::{check_peer_key, ShortId, WireNodeId, PEER_KEY};

/// What was read of one chitchat node at a `max_version`.
struct Read {
    max_version: u64,
    /// None when the node's `peer` key-value is missing or does not name a PeerId with its
    /// short id (such a node is held but not viewed).
    peer: Option<PeerId>,
    info: Arc<MemberInfo>,
}

/// The last read of each node chitchat holds, by node id.
#[derive(Default)]
pub struct ViewCache {
    reads: HashMap<WireNodeId, Read>,
}

impl ViewCache {
    /// Chitchat's nodes as [`NodeView`]s, and the ids it holds. Node ids that are not short ids
    /// (none pass the transport) are skipped; so are nodes (held, not viewed) without a `peer`
    /// key-value naming a PeerId with their short id.
    pub fn read(&mut self, cc: &Chitchat) -> (Vec<NodeView>, BTreeSet<WireNodeId>) {
        let live: HashSet<&ChitchatId> = cc.live_nodes().collect();
        let mut views = Vec::new();
        let mut held = BTreeSet::new();
        for (id, state) in cc.node_states() {
            let Ok(short) = ShortId::parse(&id.node_id) else {
                continue;
            };
            let node = WireNodeId {
                id: short,
                generation: id.generation_id,
            };
            held.insert(node);
            let max_version = state.max_version();
            if self
                .reads
                .get(&node)
                .is_none_or(|r| r.max_version != max_version)
            {
                let peer = state
                    .get(PEER_KEY)
                    .and_then(|v| check_peer_key(&short, v).ok());
                let info = if peer.is_some() {
                    MemberInfo::from_key_values(state.key_values())
                } else {
                    MemberInfo::default()
                };
                let read = Read {
                    max_version,
                    peer,
                    info: Arc::new(info),
                };
                self.reads.insert(node, read);
            }
            let Some(read) = self.reads.get(&node) else {
                continue;
            };
            let Some(peer) = read.peer else {
                continue;
            };
            views.push(NodeView {
                peer,
                generation: id.generation_id,
                live: live.contains(id),
                heartbeat: u64::from(state.heartbeat()),
                info: Arc::clone(&read.info),
            });
        }
        self.reads.retain(|node, _| held.contains(node));
        (views, held)
    }
}
