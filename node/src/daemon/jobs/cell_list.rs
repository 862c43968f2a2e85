//! The jobs of this node's cell: what `novacron jobs` shows on any node of a submitter's
//! cell. Each live member is asked (`List`, at once, each within [`LIST_TIMEOUT`]) for the
//! jobs submitted through it; their answers are merged with what this node knows, one row
//! a job, the origin's view first, newest first.
//!
//! What this cannot do: a member that does not answer in time is left out (the answer says
//! how many did not); each member gives at most [`MAX_LISTED`] of its newest jobs; jobs of
//! other cells are found one at a time (`novacron job show ID`, through the DHT).

use std::time::Duration;

use futures::future::join_all;
use novacron_mesh::swarm::PeerId;

use crate::daemon::Daemon;
use crate::jobs::wire::{fit_listed, JobRequest, JobResponse, MAX_LISTED};
use crate::model::JobInfo;

/// How long one member may take to list its jobs.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// The jobs of the cell, and how many live members did not answer.
pub struct CellJobs {
    pub jobs: Vec<JobInfo>,
    pub unanswered: usize,
}

impl Daemon {
    /// The answer to a `List`: the jobs submitted through this node, newest first.
    pub(super) fn jobs_listed_here(&self, limit: u32) -> JobResponse {
        JobResponse::Jobs {
            jobs: fit_listed(self.origin_jobs(), limit),
        }
    }

    /// The jobs of this node's cell (see the module doc).
    pub async fn cell_jobs(&self) -> CellJobs {
        let own = self.mesh.peer_id();
        let peers: Vec<PeerId> = self
            .cell_status()
            .await
            .map(|s| s.live_peers())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != own)
            .collect();
        let link = self.jobs.link();
        let asked = peers.iter().map(|peer| async move {
            let link = link?;
            let request = JobRequest::List {
                limit: MAX_LISTED as u32,
            };
            match tokio::time::timeout(LIST_TIMEOUT, link.request(*peer, &request)).await {
                Ok(Ok(JobResponse::Jobs { jobs })) => Some(jobs),
                _ => None,
            }
        });
        let answers = join_all(asked).await;
        let unanswered = answers.iter().filter(|a| a.is_none()).count();
        let (mine, copies): (Vec<JobInfo>, Vec<JobInfo>) = self
            .jobs_known()
            .into_iter()
            .partition(|j| j.origin == own.to_string());
        let theirs = answers.into_iter().flatten().flatten();
        CellJobs {
            jobs: merge(mine.into_iter().chain(theirs), copies),
            unanswered,
        }
    }
}

/// One row a job, newest first: an origin's own view (`origins`: this node's origin rows
/// and the members' answers) over a copy a runner keeps (`copies`).
pub(super) fn merge(
    origins: impl IntoIterator<Item = JobInfo>,
    copies: impl IntoIterator<Item = JobInfo>,
) -> Vec<JobInfo> {
    let mut out: Vec<JobInfo> = Vec::new();
    for job in origins.into_iter().chain(copies) {
        if !out.iter().any(|j| j.id == job.id) {
            out.push(job);
        }
    }
    newest_first(&mut out);
    out
}

fn newest_first(jobs: &mut [JobInfo]) {
    jobs.sort_by(|a, b| {
        b.submitted_at_ms
            .cmp(&a.submitted_at_ms)
            .then(a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::job_info;

    #[test]
    fn the_origins_view_wins_and_the_newest_come_first() {
        let mut old = job_info(&"a".repeat(64));
        old.submitted_at_ms = 1;
        let mut new = job_info(&"b".repeat(64));
        new.submitted_at_ms = 2;
        let mut copy = new.clone();
        copy.detail = Some("a runner's copy".into());
        copy.updated_at_ms = 99;
        let rows = merge(
            vec![old.clone(), new.clone()],
            vec![copy.clone(), old.clone()],
        );
        assert_eq!(rows, vec![new, old]);
        let only_copy = merge(Vec::new(), vec![copy.clone()]);
        assert_eq!(only_copy, vec![copy]);
    }
}
