//! The origin's watch over the replicas it placed outside its own cell
//! (`policy::remote_runners`): no failure detector of its cell sees their nodes, so on the
//! follower's tick the origin asks each such node, when due, for the job (`Status`). A node
//! that stays silent (30 s, 3 probes in a row) is presumed dead, and one that answers that
//! it does not know the job has lost it: either way the replica is placed again under a
//! new generation — restored by a holder of its latest checkpoint when it has one — as for
//! a death inside the cell.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use novacron_mesh::swarm::PeerId;
use novacron_mesh::util::lock;

use crate::api::types::now_ms;
use crate::daemon::Daemon;
use crate::jobs::wire::{JobRequest, JobResponse};
use crate::policy::remote_runners::{Verdict, Watched};
use crate::state::JobRole;

/// How long a probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Daemon {
    /// Probes the nodes due a probe of the replicas placed here (as origin) outside this
    /// node's cell.
    pub(super) async fn watch_remote_replicas(self: &Arc<Self>) {
        let me = self.mesh.peer_id().to_string();
        let mut watched = Vec::new();
        for rec in self.state_db.jobs(JobRole::Origin).unwrap_or_default() {
            if rec.info.state.is_final() {
                continue;
            }
            for r in rec.info.replicas.iter().filter(|r| !r.state.is_final()) {
                let Some(node) = &r.node else { continue };
                if *node != me {
                    watched.push(Watched {
                        job_id: rec.info.id.clone(),
                        replica: r.index,
                        generation: r.generation,
                        node: node.clone(),
                    });
                }
            }
        }
        // Nothing placed elsewhere (an idle node): the cell is not even read.
        if watched.is_empty() {
            return;
        }
        let Some(members) = self.cell_member_peers().await else {
            return;
        };
        // Members of the cell, live or not: its failure detector speaks for them.
        let members: HashSet<String> = members.iter().map(|p| p.to_string()).collect();
        watched.retain(|w| !members.contains(&w.node));
        let due = lock(&self.jobs.remote).due(&watched, now_ms());
        for w in due {
            tokio::spawn(self.clone().probe_remote(w));
        }
    }

    /// Asks `w`'s node for the job and acts on what its silence or answer means.
    async fn probe_remote(self: Arc<Self>, w: Watched) {
        let Ok(peer) = w.node.parse::<PeerId>() else {
            return;
        };
        let Some(link) = self.jobs.link() else {
            return;
        };
        let ask = JobRequest::Status {
            job_id: w.job_id.clone(),
        };
        let answer = tokio::time::timeout(PROBE_TIMEOUT, link.request(peer, &ask)).await;
        let detail = match answer {
            Ok(Ok(JobResponse::NotFound)) => {
                lock(&self.jobs.remote).forget(&w);
                format!(
                    "its node {} (in another cell) no longer knows the job",
                    w.node
                )
            }
            Ok(Ok(_)) => {
                lock(&self.jobs.remote).answered(&w, now_ms());
                return;
            }
            Ok(Err(_)) | Err(_) => match lock(&self.jobs.remote).missed(&w, now_ms()) {
                Verdict::Alive => return,
                Verdict::PresumedDead => format!(
                    "its node {} (in another cell) did not answer for {} s",
                    w.node,
                    crate::policy::remote_runners::DEAD_AFTER_MS / 1000
                ),
            },
        };
        tracing::warn!(job = %w.job_id, replica = w.replica, "{detail}; placing it again");
        self.place_replica_again(&w.job_id, w.replica, w.generation, &w.node, &detail);
    }
}
