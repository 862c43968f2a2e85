//! The list filters a page's query string sets (`?state=running&q=demo`): pure, so the
//! same filter is applied to VMs and jobs and tested once.

use novacron_model::{JobInfo, VmInfo};
use serde::Deserialize;

/// Longest search text kept (a longer one is cut, not refused: it only narrows a list).
pub const MAX_QUERY_CHARS: usize = 100;

/// A list filter: by state, and by text in the id, name or node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ListFilter {
    /// A state name (`running`, `succeeded`, ...); empty or `all` for every state.
    pub state: String,
    /// Text to find (case-insensitive).
    pub q: String,
}

impl ListFilter {
    /// The filter with its text trimmed and bounded.
    pub fn normalized(mut self) -> ListFilter {
        self.q = self.q.trim().chars().take(MAX_QUERY_CHARS).collect();
        self.state = self.state.trim().chars().take(32).collect();
        if self.state == "all" {
            self.state.clear();
        }
        self
    }

    fn matches(&self, state: &str, texts: &[&str]) -> bool {
        if !self.state.is_empty() && self.state != state {
            return false;
        }
        if self.q.is_empty() {
            return true;
        }
        let q = self.q.to_lowercase();
        texts.iter().any(|t| t.to_lowercase().contains(&q))
    }

    pub fn vm(&self, vm: &VmInfo) -> bool {
        let name = vm.spec.name.as_deref().unwrap_or("");
        self.matches(vm.state.as_str(), &[&vm.id, name])
    }

    pub fn job(&self, job: &JobInfo) -> bool {
        let nodes = job.replicas.iter().filter_map(|r| r.node.as_deref());
        let mut texts = vec![job.id.as_str(), job.origin.as_str(), job.submitter.as_str()];
        if let Some(name) = job.spec.name.as_deref() {
            texts.push(name);
        }
        texts.extend(nodes);
        self.matches(job.state.as_str(), &texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::fixtures::{job_info_in, vm};
    use novacron_model::{JobState, VmState};

    #[test]
    fn filters_by_state_and_text() {
        let f = |state: &str, q: &str| {
            ListFilter {
                state: state.into(),
                q: q.into(),
            }
            .normalized()
        };
        let running = vm("vm-abc", VmState::Running);
        assert!(f("", "").vm(&running));
        assert!(f("all", "ABC").vm(&running));
        assert!(f("running", "demo").vm(&running), "the spec's name");
        assert!(!f("exited", "").vm(&running));
        assert!(!f("", "zzz").vm(&running));
        let job = job_info_in("job-1", JobState::Succeeded);
        assert!(f("succeeded", "job-1").job(&job));
        assert!(f("", "12d3koowself").job(&job), "the origin");
        assert!(!f("running", "").job(&job));
        assert_eq!(f("", &"x".repeat(500)).q.len(), MAX_QUERY_CHARS);
    }
}
