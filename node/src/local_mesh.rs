//! A mesh of real `novacron node` processes on this machine, on loopback: what
//! `novacron bench mesh` measures (and what a local demo runs).
//!
//! Each node gets its own data directory under a root directory, listens on an ephemeral
//! loopback TCP port, serves the DHT (`--kad-server`: autonat never confirms loopback) and
//! joins through the first node. Every line a node writes on stderr is kept with the instant
//! it was read, so callers can time events (a member seen up or down) without polling.
//!
//! No node outlives its owner: each runs in a process group of its own (a terminal's Ctrl-C
//! goes to the owner, which stops its nodes in order) and the kernel kills it if the owner
//! dies ([`novacron_vm::process::child_lifetime`]). A mesh's nodes are `--ephemeral`: their VMs die
//! with them. Dropping a node asks it to stop (SIGTERM), then kills it (SIGKILL) after a
//! grace period, and reaps it.

use novacron_mesh::util::lock;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::socket::ask;
use crate::api::{NodeStatus, Request, Response};

/// A line of a node's stderr and when it was read.
pub type TimedLine = (Instant, String);

/// One `novacron node` process.
pub struct NodeProc {
    pub name: String,
    pub data_dir: PathBuf,
    child: Child,
    lines: Arc<Mutex<Vec<TimedLine>>>,
    reader: Option<JoinHandle<()>>,
}

impl NodeProc {
    /// Starts `novacron node` on `data_dir` with `extra` arguments after the usual ones.
    pub fn spawn(
        name: &str,
        data_dir: &Path,
        bootstrap: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<NodeProc> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let exe = std::env::current_exe().context("cannot find the novacron binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("node").arg("--data-dir").arg(data_dir).args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--kad-server",
            "--api-port",
            "0",
        ]);
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = novacron_vm::process::child_lifetime::spawn(cmd, libc::SIGKILL)
            .with_context(|| format!("cannot start node {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|pipe| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    lock(&lines).push((Instant::now(), line));
                }
            })
        });
        Ok(NodeProc {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            child,
            lines,
            reader,
        })
    }

    /// The first stderr line (and when it came) that `pick` accepts, if any yet.
    pub fn find_line<T>(&self, mut pick: impl FnMut(&str) -> Option<T>) -> Option<(Instant, T)> {
        lock(&self.lines)
            .iter()
            .find_map(|(at, line)| pick(line).map(|v| (*at, v)))
    }

    /// Runs `read` on every stderr line so far (when each was read, the line).
    pub fn with_lines<T>(&self, read: impl FnOnce(&[(Instant, String)]) -> T) -> T {
        read(&lock(&self.lines))
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> String {
        lock(&self.lines)
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The dial address (`.../p2p/PEERID`) and PeerId of the node's first `listening on`
    /// line, once it printed one.
    fn listening(&self) -> Option<(String, String)> {
        self.find_line(|line| {
            let rest = line.strip_prefix("novacron: node ")?;
            let (peer, addr) = rest.split_once(" listening on ")?;
            Some((addr.trim().to_string(), peer.to_string()))
        })
        .map(|(_, found)| found)
    }

    /// The node's PeerId, once it printed it.
    pub fn peer_id(&self) -> Option<String> {
        self.listening().map(|(_, peer)| peer)
    }

    /// Waits for the node's `listening on` line and returns its dial address
    /// (`.../p2p/PEERID`) and PeerId.
    pub fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<(String, String)> {
        self.wait_listening_unless(timeout, &|| false)
    }

    /// [`wait_listening`](Self::wait_listening), giving up once `cancelled` says so.
    fn wait_listening_unless(
        &mut self,
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> anyhow::Result<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.listening() {
                return Ok(found);
            }
            if cancelled() {
                bail!("stopped while node {} started", self.name);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("node {} exited with {status}: {}", self.name, self.stderr());
            }
            if Instant::now() > deadline {
                bail!("node {} did not listen within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// When the node's first stderr line starting with `prefix` was read, waiting for it
    /// until `deadline`.
    pub fn wait_line(&self, prefix: &str, deadline: Instant) -> anyhow::Result<Instant> {
        loop {
            if let Some((at, ())) = self.find_line(|l| l.starts_with(prefix).then_some(())) {
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} printed no {prefix:?} line; its stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The node's REST API URL, once it wrote its `api.url` ([`Self::api_url_in`]).
    pub fn api_url(&self) -> Option<String> {
        Self::api_url_in(&self.data_dir.join("api.url"))
    }

    /// The URL in the `api.url` file `path`, if it is there: the daemon writes it atomically
    /// (temp + rename) once its API listens, so it is never half a URL.
    pub fn api_url_in(path: &Path) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|url| url.trim().to_string())
    }

    /// Sends one request to the node's API socket.
    pub fn ask(&self, request: &Request) -> anyhow::Result<Response> {
        ask(&self.data_dir, request)
    }

    /// The node's status over its API socket.
    pub fn status(&self) -> anyhow::Result<NodeStatus> {
        match self.ask(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            Response::Error(e) => bail!("node {} answered: {e}", self.name),
            other => bail!("node {} gave an unexpected answer: {other:?}", self.name),
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProc {
    /// Asks the node to stop (SIGTERM: it drains its VMs, parking what no peer takes), unless
    /// it was reaped already (its pid may then be another process's).
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, which it keeps until we reap it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Waits up to `grace` for the node to exit after [`terminate`](Self::terminate) (less
    /// once `hurry` says so), then kills it.
    fn finish(&mut self, grace: Duration, hurry: &dyn Fn() -> bool) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !hurry() {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

/// How long a node stopping with the mesh may take to drain.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.terminate();
        self.finish(STOP_GRACE, &|| false);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// N nodes joined through the first.
pub struct LocalMesh {
    pub nodes: Vec<NodeProc>,
    /// When the joiners were started (after the first node listened).
    pub started: Instant,
    /// When the last of them was started (`started` unless the start was paced).
    pub last_started: Instant,
}

impl LocalMesh {
    /// Starts `n` ephemeral nodes under `root` (`root/node-001`, ...): the first, then, once
    /// it listens, all the others at once. Every node gets `extra` arguments, the first also
    /// `first_extra`; only the first may have a dashboard (as `first_extra` says; the others
    /// run with theirs off, so a mesh of many costs no more than one). Gives up (the nodes
    /// started so far are stopped) once `cancelled` says so.
    pub fn start(
        root: &Path,
        n: usize,
        extra: &[String],
        first_extra: &[String],
        cancelled: &dyn Fn() -> bool,
    ) -> anyhow::Result<LocalMesh> {
        Self::start_paced(root, n, extra, first_extra, cancelled, Duration::ZERO)
    }

    /// [`LocalMesh::start`] with `gap` between two joiners' starts, as volunteers arrive
    /// rather than all in one second.
    pub fn start_paced(
        root: &Path,
        n: usize,
        extra: &[String],
        first_extra: &[String],
        cancelled: &dyn Fn() -> bool,
        gap: Duration,
    ) -> anyhow::Result<LocalMesh> {
        if n == 0 {
            bail!("a mesh needs at least one node");
        }
        let mut args = vec!["--ephemeral".to_string()];
        args.extend_from_slice(extra);
        let name = |i: usize| format!("node-{:03}", i + 1);
        let first_args = [args.as_slice(), first_extra].concat();
        let mut first = NodeProc::spawn(&name(0), &root.join(name(0)), None, &first_args)?;
        let (bootstrap, _) = first.wait_listening_unless(Duration::from_secs(30), cancelled)?;
        let started = Instant::now();
        let mut last_started = started;
        let mut nodes = vec![first];
        for i in 1..n {
            if cancelled() {
                break;
            }
            if i > 1 && !gap.is_zero() {
                std::thread::sleep(gap);
            }
            let dir = root.join(name(i));
            let mut args = args.clone();
            args.extend(["--dashboard-port".to_string(), "0".to_string()]);
            last_started = Instant::now();
            nodes.push(NodeProc::spawn(&name(i), &dir, Some(&bootstrap), &args)?);
        }
        Ok(LocalMesh {
            nodes,
            started,
            last_started,
        })
    }

    /// Stops every node at once (each drains in parallel), then waits up to `grace` for
    /// each (not once `hurry` says so) before it kills it.
    pub fn stop(mut self, grace: Duration, hurry: &dyn Fn() -> bool) {
        self.stop_all(grace, hurry);
    }

    fn stop_all(&mut self, grace: Duration, hurry: &dyn Fn() -> bool) {
        for n in &mut self.nodes {
            n.terminate();
        }
        for n in &mut self.nodes {
            n.finish(grace, hurry);
        }
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        self.stop_all(STOP_GRACE, &|| false);
    }
}
