//! `novacron demo`: a local mesh on this machine — N `novacron node` processes on loopback,
//! joined through the first, in one cell — and a live view of it until Ctrl-C.
//!
//! The dashboard comes with its own issue; until then the view is node-001's member table,
//! printed whenever it changes. Once two nodes are live, a builtin guest VM starts on
//! node-001 and tours the mesh: every `--move-every` seconds it live-migrates to the live
//! node it left longest ago ([`tour`]), one line per move (`--no-vm` leaves it out, e.g. on
//! a host without KVM).
//!
//! Nothing outlives the demo. Its nodes are ephemeral (`novacron node --ephemeral`: their
//! VMs die with them), each in a process group of its own (a terminal's Ctrl-C reaches the
//! demo only) and killed by the kernel if the demo dies ([`novacron_vm::process::child_lifetime`]).
//! On Ctrl-C, SIGTERM, SIGHUP, the end of `--seconds` or a closed stdout (`demo | head`) it
//! stops in order: a move under way is cancelled (or settles), the VM is stopped, the nodes
//! stop and are reaped (their VMMs with them), then the temporary directory goes. A second
//! signal hurries it: the nodes are killed at once (their VMMs die with them).

mod jobs;
mod tour;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::api::client::{path_segment, ApiClient};
use crate::api::types::{
    MigrationInfo, MigrationMode, MigrationRequest, MigrationState, VmInfo, VmSpec,
};
use crate::api::NodeStatus;
use crate::cli::output::{is_stdout_closed, note, outln};
use crate::local_mesh::{LocalMesh, STOP_GRACE};
use view::{Names, VmHere};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Directory for the nodes' data directories (default: a fresh one under the temp dir,
    /// removed at exit).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Do not start the wandering VM.
    #[arg(long)]
    no_vm: bool,
    /// Seconds between the VM's moves.
    #[arg(long, default_value_t = 20)]
    move_every: u64,
    /// Do not tell the job story (sample jobs, a node killed under one).
    #[arg(long)]
    no_jobs: bool,
    /// Run the story once (the jobs, the kill and recovery, one live move of the VM), then
    /// stop; exit 0 only if every step succeeded.
    #[arg(long)]
    check: bool,
    /// With --check: print one JSON object summing up each step on stdout (the running
    /// commentary goes to stderr).
    #[arg(long, requires = "check")]
    json: bool,
}

/// Nodes the job story needs: node-001 (the entry node) and three to run a job's replicas.
const STORY_NODES: usize = 4;

/// The demo VM's name.
const VM_NAME: &str = "wanderer";

/// How long a cancelled move may take to settle before the demo stops anyway.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 || args.nodes > 200 {
        bail!("--nodes must be 1 to 200 (got {})", args.nodes);
    }
    if args.move_every == 0 {
        bail!("--move-every must be at least 1 second");
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        count_signal(signal)?;
    }
    let root = DemoDir::new(args.dir.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // A URL a node-001 of an earlier run left behind would be read as this one's.
    let _ = std::fs::remove_file(
        root.path
            .join("node-001")
            .join(crate::api::dashboard::URL_FILE),
    );
    // The dashboard first: node-001 serves it, on 3000 unless something else holds that
    // (then on another port, said once node-001 is up).
    let promised = dashboard_url_if_free();
    match &promised {
        Some(url) => note(&format!(
            "novacron: dashboard: {url} (open it in a browser: the mesh fills in as its nodes \
             come up)"
        )),
        None => note(&format!(
            "novacron: dashboard: port {} is taken; node-001's address follows once it is up",
            crate::config::DEFAULT_DASHBOARD_PORT
        )),
    }
    note(&format!(
        "novacron: starting {} nodes under {} (Ctrl-C stops them all)",
        args.nodes,
        root.path.display()
    ));
    // The story needs an entry node and three nodes to run a job's replicas.
    let story = match args.no_jobs || args.nodes < STORY_NODES {
        true => None,
        false => Some(StoryKey::make(&root.path)?),
    };
    if !args.no_jobs && args.nodes < STORY_NODES {
        note(&format!(
            "novacron: the job story needs {STORY_NODES} nodes or more; it is left out"
        ));
    }
    let extra = story.as_ref().map(|k| k.node_args()).unwrap_or_default();
    // node-001 is the story's entry node: it places jobs and runs none, so the node the
    // story kills is never the one that placed the job.
    let first_extra = vec!["--no-job-replicas".to_string()];
    let mesh = match LocalMesh::start(&root.path, args.nodes, &extra, &first_extra, &|| {
        signals() > 0
    }) {
        Ok(mesh) => mesh,
        // Interrupted while the first node started: it is stopped already.
        Err(_) if signals() > 0 => {
            note("novacron: stopped before the mesh was up");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    confirm_dashboard(&root.path, promised.as_deref());
    let mut demo = Demo {
        names: Names::new(vec![None; args.nodes]),
        mesh: Some(mesh),
        args: &args,
        runtime,
        started: Instant::now(),
        clients: vec![None; args.nodes],
        shown: None,
        wanderer: None,
        vm_off: args.no_vm,
        story: story.map(|key| (key, jobs::JobStory::default())),
        moves: Vec::new(),
    };
    let result = demo.show();
    let summary = demo.summary();
    demo.stop();
    drop(demo);
    // The nodes are reaped: only now may their directories go.
    drop(root);
    result?;
    if !args.check {
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        for s in &summary.steps {
            let word = if s.ok { "ok" } else { "FAILED" };
            outln!("{word:6} {:10} {:6.1} s  {}", s.step, s.seconds, s.detail)?;
        }
    }
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The dashboard's URL when its usual port is free now (node-001 takes it as it starts).
fn dashboard_url_if_free() -> Option<String> {
    let port = crate::config::DEFAULT_DASHBOARD_PORT;
    std::net::TcpListener::bind(("127.0.0.1", port))
        .ok()
        .map(|_| format!("http://localhost:{port}/"))
}

/// Says where node-001's dashboard really is when that is not what was `promised` (its
/// port was taken meanwhile, or was taken from the start). Waits a while for node-001 to
/// write its URL.
fn confirm_dashboard(root: &std::path::Path, promised: Option<&str>) {
    let file = root.join("node-001").join(crate::api::dashboard::URL_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            break format!("{}/", text.trim());
        }
        if Instant::now() > deadline || signals() > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if promised != Some(url.as_str()) {
        note(&format!(
            "novacron: dashboard: {url} (open it in a browser)"
        ));
    }
}

/// What `demo --check` found: each step, and whether all succeeded.
#[derive(serde::Serialize)]
struct Summary {
    ok: bool,
    nodes: usize,
    steps: Vec<jobs::StepReport>,
}

/// The submitter key the demo signs its jobs with (in its directory), trusted by its nodes
/// through a config file beside it.
struct StoryKey {
    key: novacron_mesh::submitter_key::SubmitterKey,
    config: PathBuf,
}

impl StoryKey {
    fn make(root: &std::path::Path) -> anyhow::Result<StoryKey> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let path = root.join("demo-submitter.key");
        let key = match path.exists() {
            true => novacron_mesh::submitter_key::SubmitterKey::load(&path)?,
            false => novacron_mesh::submitter_key::SubmitterKey::create(&path)?,
        };
        let config = root.join("demo-node.yaml");
        // The dashboard signs jobs with the keys in the demo's directory (this one).
        std::fs::write(
            &config,
            format!(
                "trustedSubmitters:\n  - {}\ndashboard:\n  keysDir: {}\n",
                key.public(),
                root.display()
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(StoryKey { key, config })
    }

    fn node_args(&self) -> Vec<String> {
        vec!["--config".into(), self.config.display().to_string()]
    }

    /// `spec` signed for a submission, valid for an hour.
    fn sign(&self, spec: &str) -> anyhow::Result<crate::api::types::SubmitJobRequest> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
        let bytes = novacron_mesh::submission::Submission::new(
            spec.as_bytes().to_vec(),
            nonce,
            novacron_mesh::swarm::clock::unix_now(),
            Duration::from_secs(3600),
        )
        .sign(self.key.identity())?;
        Ok(crate::api::types::SubmitJobRequest {
            submission: novacron_mesh::util::hex::encode(&bytes),
        })
    }
}

/// The nodes' root directory; a temporary one is removed when this is dropped (also when
/// the demo fails or panics), after the mesh that lives in it.
struct DemoDir {
    path: PathBuf,
    temporary: bool,
}

impl DemoDir {
    fn new(given: Option<PathBuf>) -> DemoDir {
        match given {
            Some(path) => DemoDir {
                path,
                temporary: false,
            },
            None => DemoDir {
                path: std::env::temp_dir().join(format!("novacron-demo-{}", std::process::id())),
                temporary: true,
            },
        }
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    note(&format!(
                        "novacron: cannot remove {}: {e}",
                        self.path.display()
                    ));
                }
            }
        }
    }
}

/// The VM the demo moves around: which node holds it, where it has been, what was said.
struct Wanderer {
    id: String,
    node: usize,
    moved: Instant,
    visits: tour::Visits,
    /// Its state as last seen (`running`).
    state: &'static str,
}

struct Demo<'a> {
    args: &'a DemoArgs,
    mesh: Option<LocalMesh>,
    names: Names,
    runtime: tokio::runtime::Runtime,
    started: Instant,
    clients: Vec<Option<ApiClient>>,
    /// The table as last printed (what changes it: [`view::table_key`]).
    shown: Option<Vec<(String, bool, u32, bool)>>,
    wanderer: Option<Wanderer>,
    /// No VM (`--no-vm`), or it failed: the mesh runs on without it.
    vm_off: bool,
    /// The job story and the key it signs with (none with `--no-jobs`).
    story: Option<(StoryKey, jobs::JobStory)>,
    /// The VM's moves as `--check` reports them.
    moves: Vec<jobs::StepReport>,
}

impl Demo<'_> {
    fn mesh(&self) -> &LocalMesh {
        self.mesh
            .as_ref()
            .expect("the mesh runs until the demo stops")
    }

    /// `  12.3 s  ` before each line.
    fn at(&self) -> String {
        format!("{:6.1} s ", self.started.elapsed().as_secs_f64())
    }

    /// Shows the mesh and moves the VM until a signal, the end of `--seconds`, or an error
    /// printing (a closed stdout).
    fn show(&mut self) -> anyhow::Result<()> {
        let until = self
            .args
            .seconds
            .map(|s| self.started + Duration::from_secs(s));
        while signals() == 0 && until.is_none_or(|u| Instant::now() < u) && !self.checked() {
            std::thread::sleep(Duration::from_millis(250));
            let Ok(status) = self.mesh().nodes[0].status() else {
                continue;
            };
            self.learn_names();
            let live = self.live_nodes(&status);
            if !self.vm_off && live.len() >= 2 {
                if let Err(e) = self.step(&live) {
                    if is_stdout_closed(&e) {
                        return Err(e);
                    }
                    note(&format!(
                        "novacron: demo VM: {e:#} (the mesh runs on without it)"
                    ));
                    self.vm_off = true;
                    self.moves.push(jobs::StepReport {
                        step: "live_move",
                        ok: false,
                        seconds: 0.0,
                        detail: format!("the touring VM failed: {e:#}"),
                    });
                }
            }
            // The story starts once the whole cell is up.
            if live.len() >= self.args.nodes || self.story_started() {
                self.tell_story(&live)?;
            }
            self.show_table(&status)?;
        }
        Ok(())
    }

    /// With `--check`: whether the story is told and the VM moved once (or failed).
    fn checked(&self) -> bool {
        if !self.args.check {
            return false;
        }
        let story_done = self.story.as_ref().is_none_or(|(_, s)| s.done());
        let moved = self.vm_off || !self.moves.is_empty();
        story_done && moved
    }

    fn story_started(&self) -> bool {
        self.story
            .as_ref()
            .is_some_and(|(_, s)| !s.reports.is_empty())
    }

    /// What `--check` reports.
    fn summary(&self) -> Summary {
        let mut steps = self
            .story
            .as_ref()
            .map(|(_, s)| s.reports.clone())
            .unwrap_or_default();
        steps.extend(self.moves.iter().take(1).cloned());
        if self.args.check && !self.checked() {
            steps.push(jobs::StepReport {
                step: "finished",
                ok: false,
                seconds: self.started.elapsed().as_secs_f64(),
                detail: "the demo stopped before every step was done".into(),
            });
        }
        Summary {
            ok: steps.iter().all(|s| s.ok) && !steps.is_empty(),
            nodes: self.args.nodes,
            steps,
        }
    }

    /// One step of the job story: what it asks, done.
    fn tell_story(&mut self, live: &[usize]) -> anyhow::Result<()> {
        let Some((key, mut story)) = self.story.take() else {
            return Ok(());
        };
        let wanderer_on = self.wanderer.as_ref().map(|w| w.node);
        let mut acts = story.step(wanderer_on, live);
        let result = (|| -> anyhow::Result<()> {
            while let Some(act) = acts.pop() {
                match act {
                    jobs::Act::Say(line) => self.say(&format!("{}{line}", self.at()))?,
                    jobs::Act::Migrate { vm, from, to } => {
                        let moved = self.move_job_vm(&vm, from, to);
                        acts.extend(story.moved(moved));
                    }
                    jobs::Act::Kill { node } => {
                        if let Some(mesh) = self.mesh.as_mut() {
                            mesh.nodes[node].kill9();
                        }
                        self.clients[node] = None;
                    }
                    jobs::Act::Submit { spec } => {
                        let client = self.client(0)?;
                        let body = key.sign(&spec)?;
                        let job = self
                            .runtime
                            .block_on(
                                client.post::<_, crate::api::types::JobInfo>("/api/v1/jobs", &body),
                            )
                            .map_err(|e| e.to_string());
                        acts.extend(story.submitted(job));
                    }
                    jobs::Act::Look { job } => {
                        let client = self.client(0)?;
                        let path = format!("/api/v1/jobs/{}", path_segment(&job));
                        let Ok(info) = self
                            .runtime
                            .block_on(client.get::<crate::api::types::JobInfo>(&path))
                        else {
                            continue;
                        };
                        let names =
                            |peer: &str| (self.names.label(peer), self.names.index_of(peer));
                        let mut result = |id: &str| {
                            let path = format!("/api/v1/jobs/{}/result", path_segment(id));
                            match self.runtime.block_on(client.get_bytes(&path)) {
                                Ok(b) => last_line(&b),
                                Err(e) => format!("(cannot read it: {e})"),
                            }
                        };
                        acts.extend(story.seen(&info, &names, &mut result));
                    }
                }
            }
            Ok(())
        })();
        self.story = Some((key, story));
        result
    }

    /// Moves job VM `vm` live from node `from` to node `to`; `Err` says why it did not.
    fn move_job_vm(&mut self, vm: &str, from: usize, to: usize) -> Result<(), String> {
        let peer = self.mesh().nodes[to]
            .peer_id()
            .ok_or_else(|| format!("{} has no PeerId yet", Names::name(to)))?;
        let client = self.client(from).map_err(|e| e.to_string())?;
        let request = MigrationRequest {
            to: peer,
            mode: MigrationMode::Live,
            downtime_budget_ms: None,
        };
        let path = format!("/api/v1/vms/{}/migrate", path_segment(vm));
        let ended = self.runtime.block_on(async {
            let started: MigrationInfo = client.post(&path, &request).await?;
            settle(&client, started).await
        });
        match ended {
            Ok(m) if m.state == MigrationState::Done => Ok(()),
            Ok(m) => Err(format!(
                "the move ended {:?}: {}",
                m.state,
                m.error.unwrap_or_default()
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// A line of commentary: stdout, or stderr under `--json` (stdout is the summary's).
    fn say(&self, line: &str) -> anyhow::Result<()> {
        if self.args.json {
            eprintln!("{line}");
            Ok(())
        } else {
            outln!("{line}")
        }
    }

    fn learn_names(&mut self) {
        let peers = self.mesh().nodes.iter().map(|n| n.peer_id()).collect();
        self.names = Names::new(peers);
    }

    /// The demo's nodes that node-001 sees live (indices).
    fn live_nodes(&self, status: &NodeStatus) -> Vec<usize> {
        let mut live: Vec<usize> = status
            .live_members()
            .filter_map(|m| self.names.index_of(&m.peer_id))
            .collect();
        live.sort_unstable();
        live
    }

    /// Prints node-001's member table if it changed.
    fn show_table(&mut self, status: &NodeStatus) -> anyhow::Result<()> {
        let Some(cell) = &status.cell else {
            return Ok(());
        };
        let what = self
            .wanderer
            .as_ref()
            .map(|w| format!("{VM_NAME}, {}", w.state));
        let here = self
            .wanderer
            .as_ref()
            .zip(what.as_deref())
            .map(|(w, what)| VmHere { node: w.node, what });
        let key = view::table_key(&cell.members, here.as_ref());
        if self.shown.as_ref() == Some(&key) {
            return Ok(());
        }
        let live = cell.members.iter().filter(|m| m.live).count();
        self.say(&format!(
            "{}cell of node-001: {live} of {} nodes live\n{}",
            self.at(),
            self.args.nodes,
            view::members_table(&self.names, &cell.members, here.as_ref())
        ))?;
        self.shown = Some(key);
        Ok(())
    }

    /// The API client of node `i` (once it wrote its `api.url`).
    fn client(&mut self, i: usize) -> anyhow::Result<ApiClient> {
        if let Some(c) = &self.clients[i] {
            return Ok(c.clone());
        }
        let node = &self.mesh().nodes[i];
        let url = node
            .api_url()
            .with_context(|| format!("{} has no API address yet", node.data_dir.display()))?;
        let client = ApiClient::new(&url, None, None)?;
        self.clients[i] = Some(client.clone());
        Ok(client)
    }

    /// Starts the VM, reports a change of its state, or moves it on when its time came.
    fn step(&mut self, live: &[usize]) -> anyhow::Result<()> {
        let Some(w) = &self.wanderer else {
            return self.start_vm();
        };
        let (id, node) = (w.id.clone(), w.node);
        let due = w.moved.elapsed() >= Duration::from_secs(self.args.move_every);
        // Never onto the node the job story is about to kill.
        let doomed = self.story.as_ref().and_then(|(_, s)| s.doomed_node());
        let open: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&n| Some(n) != doomed)
            .collect();
        let next = w.visits.next(node, &open);
        let client = self.client(node)?;
        let path = format!("/api/v1/vms/{}", path_segment(&id));
        let vm: VmInfo = self.runtime.block_on(client.get(&path))?;
        if !vm.state.is_active() {
            bail!(
                "it is {} on {}: {}",
                vm.state.as_str(),
                Names::name(node),
                vm.detail.as_deref().unwrap_or("no detail")
            );
        }
        if let Some(w) = self.wanderer.as_mut() {
            w.state = vm.state.as_str();
        }
        match next.filter(|_| due) {
            Some(to) => self.move_vm(&vm, to),
            None => Ok(()),
        }
    }

    fn start_vm(&mut self) -> anyhow::Result<()> {
        let spec: VmSpec = serde_json::from_value(serde_json::json!({
            "name": VM_NAME,
            "guest": "builtin:counter:passes=100000",
            "mem_mib": 64,
        }))?;
        let client = self.client(0)?;
        let vm: VmInfo = self.runtime.block_on(client.post("/api/v1/vms", &spec))?;
        self.say(&format!(
            "{}{VM_NAME} (VM {}, {}) starts on node-001: {}",
            self.at(),
            vm.id,
            spec.guest.as_deref().unwrap_or("?"),
            view::vm_state(&vm)
        ))?;
        self.wanderer = Some(Wanderer {
            id: vm.id.clone(),
            node: 0,
            moved: Instant::now(),
            visits: tour::Visits::starting_at(self.args.nodes, 0),
            state: vm.state.as_str(),
        });
        Ok(())
    }

    /// Moves the VM live to node `to` and waits for the end; a signal meanwhile cancels it.
    fn move_vm(&mut self, vm: &VmInfo, to: usize) -> anyhow::Result<()> {
        let Some(w) = &self.wanderer else {
            return Ok(());
        };
        let from = w.node;
        let Some(peer) = self.mesh().nodes[to].peer_id() else {
            return Ok(());
        };
        self.say(&format!(
            "{}{VM_NAME} on {} is {}; moving it live to {}",
            self.at(),
            Names::name(from),
            view::vm_state(vm),
            Names::name(to)
        ))?;
        let client = self.client(from)?;
        let request = MigrationRequest {
            to: peer,
            mode: MigrationMode::Live,
            downtime_budget_ms: None,
        };
        let path = format!("/api/v1/vms/{}/migrate", path_segment(&vm.id));
        let started: MigrationInfo = self.runtime.block_on(client.post(&path, &request))?;
        let ended = self.runtime.block_on(settle(&client, started))?;
        let w = self.wanderer.as_mut().expect("the VM is there");
        w.moved = Instant::now();
        if ended.state == MigrationState::Done {
            w.node = to;
            w.visits.arrive(to);
        }
        let line = view::move_line(VM_NAME, &Names::name(from), &Names::name(to), &ended);
        self.moves.push(jobs::StepReport {
            step: "live_move",
            ok: ended.state == MigrationState::Done,
            seconds: ended
                .ended_at_ms
                .unwrap_or(ended.started_at_ms)
                .saturating_sub(ended.started_at_ms) as f64
                / 1000.0,
            detail: line.clone(),
        });
        self.say(&format!("{}{line}", self.at()))
    }

    /// Stops everything in order: the VM (a move under way was settled in `move_vm`), the
    /// nodes (they reap their VMMs), then — in `run` — the directory. A second signal, now
    /// or meanwhile, skips the VM's stop and kills the nodes at once.
    fn stop(&mut self) {
        if let (Some(w), true) = (self.wanderer.take(), signals() < 2) {
            note(&format!(
                "novacron: stopping the demo VM on {}",
                Names::name(w.node)
            ));
            if let Ok(client) = self.client(w.node) {
                let path = format!("/api/v1/vms/{}", path_segment(&w.id));
                let stopped = self.runtime.block_on(async {
                    tokio::select! {
                        r = client.delete::<VmInfo>(&path) => Some(r),
                        _ = until_signals(2) => None,
                    }
                });
                if let Some(Err(e)) = stopped {
                    note(&format!("novacron: the demo VM did not stop cleanly: {e}"));
                }
            }
        }
        note("novacron: stopping the demo mesh");
        if let Some(mesh) = self.mesh.take() {
            mesh.stop(STOP_GRACE, &|| signals() >= 2);
        }
    }
}

/// Follows a migration to its end; the first signal meanwhile cancels it, then it is
/// followed until it settles (at most [`SETTLE_WAIT`], or a second signal).
async fn settle(client: &ApiClient, started: MigrationInfo) -> anyhow::Result<MigrationInfo> {
    let path = format!("/api/v1/migrations/{}", path_segment(&started.id));
    let mut m = started;
    let mut cancelled: Option<tokio::time::Instant> = None;
    while !m.state.is_final() {
        if signals() >= 2 || cancelled.is_some_and(|at| at.elapsed() > SETTLE_WAIT) {
            bail!("the move did not settle before the demo stopped");
        }
        if signals() > 0 && cancelled.is_none() {
            cancelled = Some(tokio::time::Instant::now());
            let cancel = format!("{path}/cancel");
            if let Err(e) = client.post_ignore(&cancel, &serde_json::json!({})).await {
                tracing::info!(error = %e, "cancelling the demo's move");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = client.get(&path).await?;
    }
    Ok(m)
}

/// The last non-empty line of a job's output.
fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Stop signals received (SIGINT, SIGTERM, SIGHUP).
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

fn signals() -> usize {
    SIGNALS.load(Ordering::SeqCst)
}

/// Resolves once `n` stop signals came.
async fn until_signals(n: usize) {
    while signals() < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts `signal` in [`SIGNALS`] (an async-signal-safe increment, nothing else).
fn count_signal(signal: libc::c_int) -> anyhow::Result<()> {
    extern "C" fn on_signal(_: libc::c_int) {
        SIGNALS.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: the handler only increments an atomic; sigaction is given a zeroed, fully
    // initialised struct.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot catch a signal");
    }
    Ok(())
}
