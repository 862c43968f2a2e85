//! Jobs this node knows (submitted through it or run here, and its cell's): a filterable
//! list, and the form that submits a job signed with a submitter key the node holds.

use leptos::prelude::*;
use novacron_model::{JobInfo, JobState, ReplicaState};

use super::{badge, csrf_field, options, tone_of_job};
use crate::filter::ListFilter;
use crate::format;

/// Rows shown at most (newest first); the filter narrows the rest.
pub const MAX_ROWS: usize = 1_000;

/// A spec the form starts with: a builtin guest that counts and prints.
pub const SAMPLE_SPEC: &str =
    "name: counter\npayload:\n  guest: builtin:counter\narguments: [passes=3]\nreplicas: 1\n";

#[derive(Clone, Debug)]
pub struct JobsData {
    /// Newest first.
    pub jobs: Vec<JobInfo>,
    pub filter: ListFilter,
    /// Names of the submitter keys the node can sign with.
    pub keys: Vec<String>,
    pub csrf: String,
    pub now_ms: u64,
}

fn state_names() -> Vec<&'static str> {
    std::iter::once("")
        .chain(JobState::ALL.iter().map(|s| s.as_str()))
        .collect()
}

/// `finished of replicas` for the list.
pub fn progress_of(job: &JobInfo) -> String {
    let done = job
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Finished)
        .count();
    format!("{done} of {} replicas finished", job.spec.replicas)
}

pub fn render(d: JobsData) -> impl IntoView {
    let total = d.jobs.len();
    let shown: Vec<JobInfo> = d.jobs.into_iter().filter(|j| d.filter.job(j)).collect();
    let count = if shown.len() > MAX_ROWS {
        format!(
            "newest {MAX_ROWS} of {} matching ({total} known)",
            shown.len()
        )
    } else {
        format!("{} of {total}", shown.len())
    };
    let now_ms = d.now_ms;
    let rows = shown
        .into_iter()
        .take(MAX_ROWS)
        .map(|j| {
            let href = format!("/jobs/{}", j.id);
            let nodes: Vec<String> = j
                .replicas
                .iter()
                .filter_map(|r| r.node.as_deref().map(format::short_peer))
                .collect();
            view! {
                <tr data-job=j.id.clone()>
                    <td class="mono"><a href=href>{format::short_hash(&j.id)}</a></td>
                    <td>{j.spec.name.clone().unwrap_or_default()}</td>
                    <td title=j.detail.clone().unwrap_or_default()>{badge(j.state.as_str(), tone_of_job(j.state))}</td>
                    <td class="mono">{nodes.join(", ")}</td>
                    <td>{format::age(j.submitted_at_ms, now_ms)}</td>
                    <td>{progress_of(&j)}</td>
                    <td class="mono">{j.result_hash.as_deref().map(format::short_hash).unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    let states = state_names();
    view! {
        <h1>"Jobs"</h1>
        <form class="filters" method="get" action="/jobs" role="search">
            <label>"State"<select name="state">{options(&states, &d.filter.state)}</select></label>
            <label>"Find"<input type="search" name="q" value=d.filter.q.clone() placeholder="id, name or node"/></label>
            <button type="submit">"Filter"</button>
        </form>
        <section class="panel" data-live="jobs">
            <p class="muted">{count}</p>
            <div class="scroll">
                <table>
                    <thead><tr>
                        <th>"Job"</th><th>"Name"</th><th>"State"</th><th>"Nodes"</th><th>"Submitted"</th>
                        <th>"Progress"</th><th>"Result"</th>
                    </tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            </div>
        </section>
        {submit_form(&d.keys, &d.csrf)}
    }
}

fn submit_form(keys: &[String], csrf: &str) -> impl IntoView {
    if keys.is_empty() {
        return view! {
            <section class="panel">
                <h2>"Submit a job"</h2>
                <p class="muted">
                    "This node holds no submitter key: make one with "
                    <code>"novacron keys new default"</code>
                    " where the node runs, and trust it with "
                    <code>"novacron keys trust default"</code>"."
                </p>
            </section>
        }
        .into_any();
    }
    let key_options = keys
        .iter()
        .map(|k| view! { <option value=k.clone()>{k.clone()}</option> })
        .collect_view();
    view! {
        <section class="panel">
            <h2>"Submit a job"</h2>
            <form class="stack" id="submit-job" method="post" action="/jobs">
                {csrf_field(csrf)}
                <label>"Spec (YAML or JSON; see docs/jobs.md)"
                    <textarea id="spec" name="spec" spellcheck="false" required=true>{SAMPLE_SPEC}</textarea>
                </label>
                <label>"…or a spec file"<input type="file" accept=".yaml,.yml,.json" data-into="spec"/></label>
                <label>"Sign with key"<select name="key">{key_options}</select></label>
                <div class="actions"><button type="submit" class="primary">"Submit"</button></div>
            </form>
        </section>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::fixtures::job_info_in;

    #[test]
    fn jobs_list_links_each_job_and_the_form_signs_with_a_held_key() {
        let html = render(JobsData {
            jobs: vec![
                job_info_in(&"ab".repeat(32), JobState::Running),
                job_info_in(&"cd".repeat(32), JobState::Succeeded),
            ],
            filter: ListFilter {
                state: "running".into(),
                q: String::new(),
            },
            keys: vec!["default".into()],
            csrf: "tok".into(),
            now_ms: 2_000,
        })
        .to_html();
        for want in [
            "1 of 2",
            &format!("href=\"/jobs/{}\"", "ab".repeat(32)),
            "0 of 1 replicas finished",
            "<option value=\"default\">default</option>",
            "name=\"csrf\" value=\"tok\"",
            "builtin:counter",
        ] {
            assert!(html.contains(want), "{want} missing: {html}");
        }
        assert!(!html.contains(&"cd".repeat(32)), "{html}");
        let html = render(JobsData {
            jobs: vec![],
            filter: ListFilter::default(),
            keys: vec![],
            csrf: "tok".into(),
            now_ms: 0,
        })
        .to_html();
        assert!(html.contains("holds no submitter key"), "{html}");
    }
}
