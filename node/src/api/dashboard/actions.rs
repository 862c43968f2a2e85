//! The dashboard's actions: submit a job (signed here with a submitter key the node holds),
//! cancel it, pause, resume, stop or migrate a VM, set the owner override, drain the node.
//! Each is a form POST that must carry the session's CSRF token (and, when the browser says
//! where the form came from, come from this dashboard); the outcome is shown once on the
//! page the action redirects to.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use novacron_dashboard::shell::Notice;
use novacron_mesh::submission::Submission;
use serde::Deserialize;

use super::access::{check_origin, Access, Refused};
use super::answers::see_other;
use super::Dashboard;
use crate::api::service::{NodeService, ServiceError};
use crate::api::types::{MigrationMode, MigrationRequest, OwnerSetting};
use crate::jobs::spec_file::{parse_spec, to_signed_json};

/// Largest spec text taken from the form.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// How long a submission signed here is valid.
const SUBMISSION_LIFETIME: Duration = Duration::from_secs(3600);

/// The CSRF and origin checks every action passes first.
fn check<S>(
    d: &Dashboard<S>,
    access: &Access,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(), Refused> {
    check_origin(headers)?;
    if d.csrf.check(&access.session, csrf) {
        Ok(())
    } else {
        Err(Refused::Csrf)
    }
}

/// Redirects to `to`, showing `outcome` there once.
fn done<S, T>(d: &Dashboard<S>, to: &str, outcome: Result<String, T>) -> Response
where
    T: std::fmt::Display,
{
    let notice = match outcome {
        Ok(text) => Notice { ok: true, text },
        Err(e) => Notice {
            ok: false,
            text: e.to_string(),
        },
    };
    let id = d.flash(notice);
    let sep = if to.contains('?') { '&' } else { '?' };
    see_other(&format!("{to}{sep}flash={id}"))
}

/// Names of the submitter keys in the node's keys directory (`<NAME>.key`).
pub fn key_names(dir: Option<&FsPath>) -> Vec<String> {
    let Ok(dir) = crate::cli::keys::keys_dir_or_default(dir) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".key").map(str::to_string)
        })
        .filter(|n| crate::cli::keys::is_key_name(n))
        .collect();
    names.sort();
    names
}

#[derive(Deserialize)]
pub struct SubmitForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    spec: String,
    #[serde(default)]
    key: String,
}

/// Signs the form's spec with the named key and submits it through this node.
pub async fn submit_job<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    Form(form): Form<SubmitForm>,
) -> Response {
    if let Err(r) = check(&d, &access, &headers, &form.csrf) {
        return r.into_response();
    }
    let signed = match sign(&d, &form) {
        Ok(s) => s,
        Err(e) => return done::<S, String>(&d, "/jobs", Err(e)),
    };
    match d.service.submit_job(signed).await {
        Ok(job) => done::<S, ServiceError>(
            &d,
            &format!("/jobs/{}", job.id),
            Ok(format!("Job accepted: {}.", job.state.as_str())),
        ),
        Err(e) => done::<S, String>(&d, "/jobs", Err(format!("The node refused the job: {e}"))),
    }
}

fn sign<S>(d: &Dashboard<S>, form: &SubmitForm) -> Result<Vec<u8>, String> {
    if form.spec.len() > MAX_SPEC_BYTES {
        return Err(format!("The spec is over {MAX_SPEC_BYTES} bytes."));
    }
    let spec = parse_spec("the form's spec", form.spec.as_bytes()).map_err(|e| e.to_string())?;
    let key = crate::cli::keys::load_submitter_key(d.keys_dir.as_deref(), &form.key)
        .map_err(|e| format!("{e:#}"))?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| format!("no random bytes for the nonce: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Submission::new(to_signed_json(&spec), nonce, now, SUBMISSION_LIFETIME)
        .sign(key.identity())
        .map_err(|e| format!("cannot sign the job: {e}"))
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn cancel_job<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(r) = check(&d, &access, &headers, &form.csrf) {
        return r.into_response();
    }
    let outcome = d
        .service
        .cancel_job(&id)
        .await
        .map(|j| format!("Job {}.", j.state.as_str()));
    done(&d, &format!("/jobs/{}", path_segment(&id)), outcome)
}

#[derive(Deserialize)]
pub struct VmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

/// `pause`, `resume`, `stop` or `migrate` a VM.
pub async fn vm_action<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<VmForm>,
) -> Response {
    if let Err(r) = check(&d, &access, &headers, &form.csrf) {
        return r.into_response();
    }
    let s = &d.service;
    let outcome = match action.as_str() {
        "pause" => s
            .pause_vm(&id)
            .await
            .map(|v| format!("VM {} paused.", v.id)),
        "resume" => s
            .resume_vm(&id)
            .await
            .map(|v| format!("VM {} resumed.", v.id)),
        "stop" => s.delete_vm(&id).await.map(|_| format!("VM {id} stopped.")),
        "migrate" => {
            let mode = match form.mode.as_deref().unwrap_or("live") {
                "live" => MigrationMode::Live,
                "warm" => MigrationMode::Warm,
                "cold" => MigrationMode::Cold,
                other => {
                    return done::<S, String>(
                        &d,
                        "/vms",
                        Err(format!("No migration mode {other:?}: live, warm or cold.")),
                    )
                }
            };
            let request = MigrationRequest {
                to: form.target.clone().unwrap_or_else(|| "auto".into()),
                mode,
                downtime_budget_ms: None,
            };
            match s.start_migration(&id, request).await {
                Ok(m) => {
                    return done::<S, String>(
                        &d,
                        "/migrations",
                        Ok(format!("Moving VM {} to {}.", m.vm_id, m.peer)),
                    )
                }
                Err(e) => Err(e),
            }
        }
        other => {
            return (StatusCode::NOT_FOUND, format!("no VM action {other:?}\n")).into_response()
        }
    };
    done(&d, "/vms", outcome)
}

#[derive(Deserialize)]
pub struct OwnerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    owner: String,
}

pub async fn set_owner<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    Form(form): Form<OwnerForm>,
) -> Response {
    if let Err(r) = check(&d, &access, &headers, &form.csrf) {
        return r.into_response();
    }
    let owner = match form.owner.as_str() {
        "active" => OwnerSetting::Active,
        "idle" => OwnerSetting::Idle,
        "auto" => OwnerSetting::Auto,
        other => {
            return done::<S, String>(
                &d,
                "/node",
                Err(format!("No owner setting {other:?}: active, idle or auto.")),
            )
        }
    };
    let outcome = d.service.set_owner(owner).await.map(|p| {
        format!(
            "Owner set to {}: the node now says {}.",
            owner.as_str(),
            p.state
        )
    });
    done(&d, "/node", outcome)
}

#[derive(Deserialize)]
pub struct DrainForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    deadline_s: String,
}

pub async fn drain<S: NodeService>(
    State(d): State<Arc<Dashboard<S>>>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    Form(form): Form<DrainForm>,
) -> Response {
    if let Err(r) = check(&d, &access, &headers, &form.csrf) {
        return r.into_response();
    }
    let deadline = match form.deadline_s.trim().parse::<u64>() {
        Ok(s) if (1..=3600).contains(&s) => s,
        _ => {
            return done::<S, String>(
                &d,
                "/node",
                Err(format!(
                    "A drain deadline is 1 to 3600 seconds, not {:?}.",
                    form.deadline_s
                )),
            )
        }
    };
    let outcome = d
        .service
        .drain(deadline)
        .await
        .map(|()| format!("Draining: VMs leave within {deadline} s, then the node stops."));
    done(&d, "/node", outcome)
}

/// `id` as one path segment (anything but ids' characters dropped).
fn path_segment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(128)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(path_segment("ab/../c?d"), "abcd");
        assert_eq!(path_segment(&"x".repeat(500)).len(), 128);
    }
}
