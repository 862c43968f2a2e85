//! A daemon under measurement: a [`NodeProc`] with an API client, whose drop leaves
//! nothing the bench started running.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::runtime::Runtime;

use crate::api::client::{path_segment, ApiClient, ClientError};
use crate::api::types::{VmInfo, VmSpec, VmState};
use crate::api::{MemberStatus, NodeStatus};
use crate::local_mesh::NodeProc;

/// How long a daemon may take to answer, and two daemons to see each other.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one migration (or a VM start) may take on this slow machine.
pub(super) const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stop is retried while the node answers 409 Conflict.
const STOP_RETRY: Duration = Duration::from_secs(10);

/// Where a start's time went, from the spawn: the daemon's own stderr lines (read by a
/// thread as they come, so a line's time is when it was read) and the first 200 answer.
pub(super) struct StartTimes {
    /// `novacron: API on ...`: after the identity key (made on a fresh directory), the
    /// SQLite database and its schema migrations, the libp2p swarm, VM recovery and the
    /// REST listener's bind.
    pub(super) api_bound: Duration,
    /// `novacron: ready, API at ...`: after the listen addresses and routing table are
    /// printed (the swarm's first answers).
    pub(super) ready_line: Duration,
    /// The first 200 answer to `GET /api/v1/node`, polled every millisecond once `api.url`
    /// exists. It can come before the ready line: the API serves from its bind on.
    pub(super) first_200: Duration,
}

/// A `novacron node --ephemeral` process started by the bench. Dropping it stops every VM
/// it runs (through its API), kills it (its VMMs die with it), then kills any VMM process
/// still in a cgroup of this node: nothing the bench started outlives it, also when a
/// measurement fails half-way. It must
/// be dropped outside the runtime (it blocks on it).
pub(super) struct MeasuredNode {
    pub(super) proc: NodeProc,
    pub(super) client: ApiClient,
    rt: Arc<Runtime>,
    /// The REST API's socket address.
    pub(super) api: SocketAddr,
    pub(super) peer: String,
    /// Its dial address (`.../p2p/PEERID`).
    pub(super) addr: String,
}

impl MeasuredNode {
    /// Starts a daemon on `dir` (joined through `bootstrap`) and waits for its first 200
    /// answer and its ready line.
    pub(super) fn start(
        rt: &Arc<Runtime>,
        name: &str,
        dir: &Path,
        bootstrap: Option<&str>,
    ) -> anyhow::Result<(MeasuredNode, StartTimes)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A killed daemon leaves its api.url behind; polling it would find a dead port.
        let url_file = dir.join("api.url");
        let _ = std::fs::remove_file(&url_file);
        let spawned = Instant::now();
        // Ephemeral: the VMs of a daemon the bench kills die with it.
        let mut proc = NodeProc::spawn(name, dir, bootstrap, &["--ephemeral".into()])?;
        let deadline = spawned + START_TIMEOUT;
        let (client, api, answered) = match rt.block_on(first_answer(&url_file, deadline)) {
            Ok(first) => first,
            Err(e) => bail!("node {name}: {e:#}\nits stderr:\n{}", proc.stderr()),
        };
        let (addr, peer) = proc.wait_listening(START_TIMEOUT)?;
        let api_bound = proc.wait_line("novacron: API on ", deadline)?;
        let ready_line = proc.wait_line("novacron: ready, API at ", deadline)?;
        let times = StartTimes {
            api_bound: api_bound.saturating_duration_since(spawned),
            ready_line: ready_line.saturating_duration_since(spawned),
            first_200: answered.saturating_duration_since(spawned),
        };
        Ok((
            MeasuredNode {
                proc,
                client,
                rt: rt.clone(),
                api,
                peer,
                addr,
            },
            times,
        ))
    }

    /// Creates a VM and waits until it runs.
    pub(super) async fn create_running(&self, spec: &VmSpec) -> anyhow::Result<VmInfo> {
        let vm: VmInfo = self.client.post("/api/v1/vms", spec).await?;
        let path = format!("/api/v1/vms/{}", path_segment(&vm.id));
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        let mut vm = vm;
        while vm.state != VmState::Running {
            if !vm.state.is_active() || Instant::now() > deadline {
                bail!(
                    "VM {} on {} is {} ({}), not running",
                    vm.id,
                    self.proc.name,
                    vm.state.as_str(),
                    vm.detail.as_deref().unwrap_or("no detail")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            vm = self.client.get(&path).await?;
        }
        Ok(vm)
    }

    /// Whether this node's cell view has `peer` live.
    pub(super) async fn sees_live(&self, peer: &str) -> bool {
        self.client
            .get::<Vec<MemberStatus>>("/api/v1/peers")
            .await
            .is_ok_and(|members| members.iter().any(|m| m.peer_id == peer && m.live))
    }

    /// Stops every active VM through the API (best effort, logged).
    async fn stop_vms(&self) {
        let vms = match self.client.get::<Vec<VmInfo>>("/api/v1/vms").await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(node = %self.proc.name, error = %e, "cannot list VMs to stop them");
                return;
            }
        };
        for vm in vms.iter().filter(|v| v.state.is_active()) {
            if let Err(e) = self.stop_vm(&vm.id).await {
                tracing::warn!(vm = %vm.id, error = %e, "cannot stop a VM of the bench");
            }
        }
    }

    /// Stops a VM, retrying while the node answers 409 (a VM that just migrated in is
    /// `running` a moment before its supervisor takes commands).
    pub(super) async fn stop_vm(&self, id: &str) -> Result<Option<VmInfo>, ClientError> {
        let path = format!("/api/v1/vms/{}", path_segment(id));
        let deadline = Instant::now() + STOP_RETRY;
        loop {
            match self.client.delete::<VmInfo>(&path).await {
                Err(ClientError::Api { status: 409, .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }
}

impl Drop for MeasuredNode {
    fn drop(&mut self) {
        self.rt.block_on(self.stop_vms());
        self.proc.kill9();
        match self.peer.parse::<novacron_mesh::swarm::PeerId>() {
            Ok(peer) => kill_vmms_of(&crate::vms::host_tag(&peer.to_bytes())),
            Err(e) => tracing::warn!(peer = %self.peer, error = %e, "cannot name its VMMs"),
        }
    }
}

/// Polls `api.url` and then `GET /api/v1/node` until the first 200 answer: the client, the
/// API's socket address and when the answer came.
async fn first_answer(
    url_file: &Path,
    deadline: Instant,
) -> anyhow::Result<(ApiClient, SocketAddr, Instant)> {
    let mut target: Option<(ApiClient, SocketAddr)> = None;
    let mut last = format!("{} never appeared", url_file.display());
    loop {
        if target.is_none() {
            // Written atomically by the daemon (temp + rename): never half a URL.
            if let Some(url) = NodeProc::api_url_in(url_file) {
                let url = url.as_str();
                let api = url
                    .strip_prefix("http://")
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .with_context(|| {
                        format!("{}: {url:?} is no http://IP:PORT", url_file.display())
                    })?;
                target = Some((ApiClient::new(url, None, None)?, api));
            }
        }
        if let Some((client, api)) = &target {
            match client.get::<NodeStatus>("/api/v1/node").await {
                Ok(_) => return Ok((client.clone(), *api, Instant::now())),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            bail!("no 200 answer to GET /api/v1/node within {START_TIMEOUT:?} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// SIGKILLs every process in a VM cgroup of the node tagged `tag` (`vm-<id>-<tag>`): the
/// VMMs a killed daemon left behind. Only for after the daemon is dead.
fn kill_vmms_of(tag: &str) {
    let suffix = format!("-{tag}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let ours = cgroups
            .split(['/', '\n'])
            .any(|seg| seg.starts_with("vm-") && seg.ends_with(&suffix));
        if ours {
            tracing::warn!(pid, "killing a VMM the bench's daemon left behind");
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
