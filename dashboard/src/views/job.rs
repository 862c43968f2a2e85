//! One job: its spec, timeline, replicas with their nodes and result hashes, its log
//! (followed live while it runs), the result's download, and cancel.

use leptos::prelude::*;
use novacron_model::JobInfo;

use super::{badge, csrf_field, tone_of_job, tone_of_replica};
use crate::format;

/// The log as far as the node had it when the page was made.
#[derive(Clone, Debug, Default)]
pub struct LogView {
    pub text: String,
    pub next_offset: u64,
    pub finished: bool,
}

#[derive(Clone, Debug)]
pub struct JobData {
    pub job: JobInfo,
    /// The winning (or first) replica's output; None when no replica has output yet.
    pub log: Option<LogView>,
    pub csrf: String,
    pub now_ms: u64,
}

/// What happened, in order: submitted, each replica's latest state, the job's end.
pub fn timeline(job: &JobInfo) -> Vec<(u64, String)> {
    let mut t = vec![(
        job.submitted_at_ms,
        format!("submitted through {}", format::short_peer(&job.origin)),
    )];
    for r in &job.replicas {
        let node = r
            .node
            .as_deref()
            .map(format::short_peer)
            .unwrap_or_else(|| "no node yet".into());
        let mut line = format!("replica {} {} on {node}", r.index, r.state.as_str());
        if r.generation > 0 {
            line.push_str(&format!(" (generation {})", r.generation));
        }
        if let Some(from) = &r.moved_from {
            line.push_str(&format!(", moved from {}", format::short_peer(from)));
        }
        if let Some(seq) = r.restored_from {
            line.push_str(&format!(", restored from checkpoint {seq}"));
        }
        t.push((r.updated_at_ms, line));
    }
    if job.state.is_final() {
        t.push((job.updated_at_ms, format!("job {}", job.state.as_str())));
    }
    t.sort_by_key(|(at, _)| *at);
    t
}

pub fn render(d: JobData) -> impl IntoView {
    let job = d.job;
    let id = job.id.clone();
    let spec_json = serde_json::to_string_pretty(&job.spec).unwrap_or_default();
    let now_ms = d.now_ms;
    let events = timeline(&job)
        .into_iter()
        .map(|(at, what)| view! { <li><span class="muted">{format!("{}: ", format::age(at, now_ms))}</span>{what}</li> })
        .collect_view();
    let replicas = job
        .replicas
        .iter()
        .map(|r| {
            view! {
                <tr>
                    <td class="num">{r.index}</td>
                    <td>{badge(r.state.as_str(), tone_of_replica(r.state))}</td>
                    <td class="mono" title=r.node.clone().unwrap_or_default()>{r.node.as_deref().map(format::short_peer).unwrap_or_default()}</td>
                    <td class="num">{r.generation}</td>
                    <td class="mono" title=r.result_hash.clone().unwrap_or_default()>{r.result_hash.as_deref().map(format::short_hash).unwrap_or_default()}</td>
                    <td>{r.signed_status.is_some().then_some("signed")}</td>
                    <td>{r.detail.clone().unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    let cancel = (!job.state.is_final()).then(|| {
        view! {
            <form class="inline" method="post" action=format!("/jobs/{id}/cancel")>
                {csrf_field(&d.csrf)}
                <button type="submit" class="danger">"Cancel job"</button>
            </form>
        }
    });
    let download = job.result_hash.is_some().then(|| {
        view! { <a class="button" href=format!("/jobs/{id}/result") download=format!("{id}.result")>"Download result"</a> }
    });
    // A running job's output is followed even before it has any: the script appends what
    // comes (this part is not a live region, so a refresh never drops what was appended).
    let log = match (d.log, job.state.is_final()) {
        (None, true) => view! { <p class="muted">"No output."</p> }.into_any(),
        (log, _) => {
            let l = log.unwrap_or_default();
            let done = if l.finished { "1" } else { "0" };
            view! {
                <pre class="log" id="log" data-follow=format!("/jobs/{id}/log") data-offset=l.next_offset.to_string()
                    data-done=done tabindex="0">{l.text}</pre>
            }
            .into_any()
        }
    };
    let result = job.result_hash.clone().unwrap_or_else(|| "none yet".into());
    view! {
        <h1>"Job " <span class="mono">{format::short_hash(&id)}</span></h1>
        <section class="panel" data-live="summary">
            <dl class="facts">
                <dt>"Id"</dt><dd class="mono">{id.clone()}</dd>
                <dt>"Name"</dt><dd>{job.spec.name.clone().unwrap_or_default()}</dd>
                <dt>"State"</dt><dd>{badge(job.state.as_str(), tone_of_job(job.state))} " " {job.detail.clone().unwrap_or_default()}</dd>
                <dt>"Submitter"</dt><dd class="mono">{job.submitter.clone()}</dd>
                <dt>"Origin"</dt><dd class="mono">{job.origin.clone()}</dd>
                <dt>"Result hash"</dt><dd class="mono">{result}</dd>
                <dt>"Retries"</dt><dd>{job.retries}</dd>
            </dl>
            <div class="actions">{download}{cancel}</div>
        </section>
        <div class="grid2">
            <section class="panel" data-live="timeline"><h2>"Timeline"</h2><ol class="timeline">{events}</ol></section>
            <section class="panel"><h2>"Spec"</h2><pre class="log">{spec_json}</pre></section>
        </div>
        <section class="panel" data-live="replicas">
            <h2>"Replicas"</h2>
            <div class="scroll">
                <table>
                    <thead><tr>
                        <th class="num">"#"</th><th>"State"</th><th>"Node"</th><th class="num">"Generation"</th>
                        <th>"Result hash"</th><th>"Status"</th><th>"Detail"</th>
                    </tr></thead>
                    <tbody>{replicas}</tbody>
                </table>
            </div>
        </section>
        <section class="panel"><h2>"Output"</h2>{log}</section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novacron_model::fixtures::job_info_in;
    use novacron_model::{JobState, ReplicaInfo, ReplicaState};

    fn replica(index: u32, state: ReplicaState) -> ReplicaInfo {
        ReplicaInfo {
            index,
            state,
            node: Some("12D3KooWRunnerNode".into()),
            generation: 1,
            vm_id: Some("vm-1".into()),
            result_hash: Some("f00d".repeat(16)),
            log_set: None,
            result_set: None,
            detail: None,
            updated_at_ms: 5,
            moved_from: None,
            checkpoint: None,
            restored_from: Some(3),
            signed_status: Some("00".into()),
        }
    }

    #[test]
    fn a_job_page_shows_replicas_timeline_log_and_its_actions() {
        let mut job = job_info_in(&"ab".repeat(32), JobState::Succeeded);
        job.replicas = vec![replica(0, ReplicaState::Finished)];
        job.result_hash = Some("f00d".repeat(16));
        job.updated_at_ms = 9;
        let html = render(JobData {
            job: job.clone(),
            log: Some(LogView {
                text: "pass 1\n<b>".into(),
                next_offset: 11,
                finished: true,
            }),
            csrf: "tok".into(),
            now_ms: 10,
        })
        .to_html();
        for want in [
            "replica 0 finished on …nnerNode (generation 1), restored from checkpoint 3",
            "job succeeded",
            "Download result",
            "pass 1\n&lt;b&gt;",
            "data-offset=\"11\"",
            "data-done=\"1\"",
            "builtin:hello",
            ">signed<",
        ] {
            assert!(html.contains(want), "{want} missing: {html}");
        }
        assert!(
            !html.contains("Cancel job"),
            "a finished job cannot be cancelled"
        );
        job.state = JobState::Running;
        job.result_hash = None;
        let html = render(JobData {
            job,
            log: None,
            csrf: "tok".into(),
            now_ms: 10,
        })
        .to_html();
        assert!(html.contains("Cancel job"), "{html}");
        assert!(
            html.contains("data-offset=\"0\"") && html.contains("data-done=\"0\""),
            "a running job's empty log is followed: {html}"
        );
        assert!(!html.contains("Download result"), "{html}");
    }
}
