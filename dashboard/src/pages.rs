//! The dashboard's pages: where each lives, what it is called in the navigation, and which
//! of the node's events make it refresh.

/// One page of the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The mesh: node count, this cell's members, the other cells, churn, capacity.
    Overview,
    /// This node: identity, politeness, VMs here, events, charts.
    Node,
    Vms,
    Jobs,
    /// One job (`/jobs/{id}`).
    Job,
    Migrations,
    /// Asks a caller from another machine for the node's API token.
    Login,
}

/// The pages the navigation lists, in order.
pub const NAVIGATION: [Page; 5] = [
    Page::Overview,
    Page::Node,
    Page::Vms,
    Page::Jobs,
    Page::Migrations,
];

/// Event kinds the stream carries besides the node's own (`NodeEvent`'s `kind`s): a new
/// history sample, sent every few seconds.
pub const SAMPLE_EVENT: &str = "sample";

impl Page {
    /// The path a page is served on (a job page adds its id).
    pub fn path(self) -> &'static str {
        match self {
            Page::Overview => "/",
            Page::Node => "/node",
            Page::Vms => "/vms",
            Page::Jobs => "/jobs",
            Page::Job => "/jobs/",
            Page::Migrations => "/migrations",
            Page::Login => "/login",
        }
    }

    /// The name in the navigation and the title.
    pub fn title(self) -> &'static str {
        match self {
            Page::Overview => "Mesh",
            Page::Node => "Node",
            Page::Vms => "VMs",
            Page::Jobs => "Jobs",
            Page::Job => "Job",
            Page::Migrations => "Migrations",
            Page::Login => "Sign in",
        }
    }

    /// The event kinds (`vm`, `migration`, `member`, `politeness`, `draining`, `job`,
    /// [`SAMPLE_EVENT`]) after which the page's live regions are fetched again.
    pub fn topics(self) -> &'static [&'static str] {
        match self {
            Page::Overview => &["member", "draining", SAMPLE_EVENT],
            Page::Node => &["vm", "politeness", "draining", "member", SAMPLE_EVENT],
            Page::Vms => &["vm", "migration"],
            Page::Jobs => &["job"],
            Page::Job => &["job"],
            Page::Migrations => &["migration"],
            Page::Login => &[],
        }
    }

    /// The navigation entry a page belongs under.
    pub fn section(self) -> Page {
        match self {
            Page::Job => Page::Jobs,
            p => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_navigation_page_has_its_own_path_and_refreshes_on_something() {
        let mut paths: Vec<&str> = NAVIGATION.iter().map(|p| p.path()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), NAVIGATION.len());
        for p in NAVIGATION {
            assert!(!p.topics().is_empty(), "{p:?}");
            assert_eq!(p.section(), p);
        }
        assert_eq!(Page::Job.section(), Page::Jobs);
    }
}
