//! One module per page, each a function from the page's data (the node's domain model, read
//! by the node) to its content; [`crate::shell`] puts it in the frame. Parts that change
//! with events are `data-live` regions. What pages share is here: badges, progress bars,
//! cards, the hidden CSRF field.

pub mod job;
pub mod jobs;
pub mod login;
pub mod migrations;
pub mod node;
pub mod overview;
pub mod vms;

use leptos::prelude::*;
use novacron_model::{JobState, MigrationState, ReplicaState, VmState};

use crate::csrf;

/// How a state looks: `good`, `warn`, `bad`, `info` or `idle`.
pub fn tone_of_vm(s: VmState) -> &'static str {
    match s {
        VmState::Running => "good",
        VmState::Starting | VmState::Migrating => "info",
        VmState::Paused | VmState::Suspended => "warn",
        VmState::Failed => "bad",
        VmState::Exited | VmState::MovedAway => "idle",
    }
}

pub fn tone_of_job(s: JobState) -> &'static str {
    match s {
        JobState::Succeeded => "good",
        JobState::Running | JobState::Placed | JobState::Migrating => "info",
        JobState::Queued => "warn",
        JobState::Failed | JobState::Lost => "bad",
        JobState::Cancelled => "idle",
    }
}

pub fn tone_of_replica(s: ReplicaState) -> &'static str {
    match s {
        ReplicaState::Finished => "good",
        ReplicaState::Running | ReplicaState::Starting | ReplicaState::Migrating => "info",
        ReplicaState::Placing => "warn",
        ReplicaState::Failed | ReplicaState::Lost => "bad",
        ReplicaState::Cancelled => "idle",
    }
}

pub fn tone_of_migration(s: MigrationState) -> &'static str {
    match s {
        MigrationState::Running => "info",
        MigrationState::Done => "good",
        MigrationState::Failed => "bad",
        MigrationState::Cancelled => "idle",
    }
}

/// A state as a coloured word.
pub fn badge(text: &'static str, tone: &'static str) -> impl IntoView {
    view! { <span class=format!("badge {tone}")>{text}</span> }
}

/// A progress bar of `done` out of `total`, with its words on it.
pub fn progress_bar(done: u64, total: u64, words: String) -> impl IntoView {
    let percent = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
    };
    let now = format!("{percent:.0}");
    view! {
        <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow=now>
            <span style=format!("width:{percent:.1}%")></span>
            <em>{words}</em>
        </div>
    }
}

/// A figure with its label and a line under it.
pub fn card(label: &'static str, value: String, sub: String) -> impl IntoView {
    view! {
        <div class="card">
            <div class="label">{label}</div>
            <div class="value">{value}</div>
            <div class="sub">{sub}</div>
        </div>
    }
}

/// The hidden field every action's form carries.
pub fn csrf_field(token: &str) -> impl IntoView {
    view! { <input type="hidden" name=csrf::FIELD value=token.to_string()/> }
}

/// `<option>`s for `values`, `selected` marked.
pub fn options(values: &[&'static str], selected: &str) -> impl IntoView {
    values
        .iter()
        .map(|v| {
            let label = if v.is_empty() { "all" } else { v };
            view! { <option value=*v selected={*v == selected}>{label}</option> }
        })
        .collect_view()
}
