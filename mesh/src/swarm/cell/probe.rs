//! The direct probe that confirms or refutes the failure detector's "dead" (see
//! [`crate::suspicion`]): a fresh [`CELL_PROTOCOL`] stream to the member. Opening it needs the
//! member's own network stack to answer the protocol negotiation, so an answer means the
//! process is alive and its swarm runs; the stream is closed at once (the member's transport
//! reads end-of-stream and drops it). A process that is gone refuses the dial at once; a host
//! that vanished leaves the probe to its timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::PeerId;

use super::members::Member;
use crate::suspicion::{ProbeOutcome, Suspicion};
use crate::swarm::cell_transport::CELL_PROTOCOL;

/// Suspects are members of one generation: a restart is a new member.
pub type Suspect = (PeerId, u64);

/// How a probe of `peer` ended within `limit`: an error before it (dial refused, protocol not
/// served, connection reset) is a refusal.
pub async fn probe(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    limit: Duration,
) -> ProbeOutcome {
    match tokio::time::timeout(limit, control.open_stream(peer, CELL_PROTOCOL)).await {
        Ok(Ok(_)) => ProbeOutcome::Answered,
        Ok(Err(_)) => ProbeOutcome::Refused,
        Err(_) => ProbeOutcome::Silent,
    }
}

/// Reports each member's liveness as the suspicion has it: a suspect is live until its probe
/// goes unanswered.
pub fn apply(suspicion: &Suspicion<Suspect>, members: &mut BTreeMap<PeerId, Member>) {
    for m in members.values_mut().filter(|m| !m.is_self) {
        m.live = suspicion.reported_live(&(m.peer, m.generation), m.live);
    }
}
