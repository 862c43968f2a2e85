//! `novacron node`: joins the mesh and stays in the foreground until SIGINT or SIGTERM.
//!
//! Runs the [`Daemon`] (swarm, chunk exchange, cell, VMs, politeness, local API socket) and
//! the REST API from the configuration, and writes lines on stderr that scripts and tests parse —
//! `novacron: node PEERID listening on MULTIADDR/p2p/PEERID` (one per address, as soon as
//! known; the address can be given to another node's `--bootstrap`),
//! `novacron: routing table has N peers` (at start and on every change) and the cell member
//! lines of [`crate::daemon::lines`].
//!
//! What this cannot do yet: rejoin the mesh through the peers it noted before it stopped
//! (it keeps them in its state database but does not dial them): only `--bootstrap` (or
//! mDNS) brings it back.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::api;
use crate::config::{LogLevel, NodeConfig};
use crate::daemon::jobs::TrustSource;
use crate::daemon::lines::{member_line, MemberChange};
use crate::daemon::{Daemon, DaemonOptions};
use crate::jobs::trust::{trust_file_path, TrustedSubmitters};
use crate::vms::VmOptions;
use anyhow::Context;
use clap::Args;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::swarm::cell::CellEvent;
use novacron_mesh::swarm::{MeshEvent, MeshNode, Multiaddr, PeerId, SwarmConfig};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    action: Option<NodeAction>,
    /// YAML configuration (keys: nodeId, logLevel, api, dataDir, dbUrl, mesh); environment
    /// variables NODE_ID, LOG_LEVEL, API_PORT, DB_URL override it, flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the node's identity (`node.key`, created on first start), chunks and API
    /// socket (config: dataDir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (repeatable; default: TCP and QUIC on every interface, ephemeral
    /// ports; config: mesh.listen).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// A peer to join the mesh through, ending in /p2p/PEERID (repeatable; config:
    /// mesh.bootstrap).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Serve the DHT from the start instead of once autonat confirms this node is publicly
    /// reachable. For loopback tests and LANs only (autonat trusts global addresses only).
    #[arg(long)]
    kad_server: bool,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    mdns: bool,
    /// Run a relay for others (only on a publicly reachable node).
    #[arg(long)]
    relay_server: bool,
    /// Take jobs submitted here and place them, but run no job replica here (an entry node
    /// of the mesh, as the demo's node-001 is).
    #[arg(long)]
    no_job_replicas: bool,
    /// Tests only: report a wrong hash for every job replica this node runs (a faulty or
    /// cheating volunteer, for the quorum to outvote).
    #[arg(long, hide = true)]
    test_corrupt_job_results: bool,
    /// Tests only: keep the node in the cell of this many prefix bits, whatever the mesh
    /// size (several cells in a handful of local nodes).
    #[arg(long, hide = true, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=16))]
    test_cell_bits: Option<u8>,
    /// The REST API's port (0: any free port; config: api.port, env API_PORT).
    #[arg(long, value_name = "PORT")]
    api_port: Option<u16>,
    /// The dashboard's port (0: off; config: dashboard.port, env DASHBOARD_PORT; default
    /// 3000, or any free port when that one is taken).
    #[arg(long, value_name = "PORT")]
    dashboard_port: Option<u16>,
    /// The node's VMs die with it: stopped when it exits, killed by the kernel if it dies,
    /// never left running for a next start to adopt (for throw-away nodes, such as the
    /// demo's, whose data directory goes away with them).
    #[arg(long)]
    ephemeral: bool,
}

#[derive(clap::Subcommand, Debug)]
enum NodeAction {
    /// Write a default configuration, an API token and a systemd unit, and say how to start
    /// the service (existing configuration and token are kept).
    Install(crate::install::InstallArgs),
}

impl NodeArgs {
    /// The configuration: file, then environment, then these flags.
    fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut cfg = NodeConfig::load(self.config.as_deref(), |k| std::env::var(k).ok())?;
        if let Some(d) = &self.data_dir {
            cfg.data_dir = Some(d.clone());
        }
        if !self.listen.is_empty() {
            cfg.mesh.listen = self.listen.clone();
        }
        if !self.bootstrap.is_empty() {
            cfg.mesh.bootstrap = self.bootstrap.clone();
        }
        cfg.mesh.kad_server |= self.kad_server;
        cfg.mesh.mdns |= self.mdns;
        cfg.mesh.relay_server |= self.relay_server;
        if let Some(port) = self.api_port {
            cfg.api.port = port;
        }
        if let Some(port) = self.dashboard_port {
            cfg.dashboard.port = Some(port);
        }
        cfg.check()?;
        Ok(cfg)
    }
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    if let Some(NodeAction::Install(install)) = args.action {
        crate::cli::init_logging("warn");
        return crate::install::run(install);
    }
    // Everything the configuration says is checked before the node makes or opens anything.
    let cfg = args.config()?;
    crate::cli::init_logging(&node_log_filter(cfg.log_level));
    let Some(data_dir) = cfg.data_dir.clone() else {
        anyhow::bail!("no data directory: give --data-dir DIR or dataDir in the config file");
    };
    let db_path = cfg.check_paths(&data_dir)?;
    api::rest::connections::raise_fd_limit();
    let identity = NodeIdentity::load_or_create(&data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    if let Some(name) = &cfg.node_id {
        tracing::info!(node_id = %name, peer = %identity.peer_id(), "starting");
    }
    let swarm = SwarmConfig {
        listen: cfg.mesh.listen.clone(),
        bootstrap: cfg.mesh.bootstrap.clone(),
        force_kad_server: cfg.mesh.kad_server,
        mdns: cfg.mesh.mdns,
        relay_server: cfg.mesh.relay_server,
        ..SwarmConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(
        &identity,
        &cfg,
        &data_dir,
        db_path,
        swarm,
        !args.ephemeral,
        RunFlags {
            run_replicas: !args.no_job_replicas,
            corrupt_results: args.test_corrupt_job_results,
            fixed_cell_bits: args.test_cell_bits,
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// What the command line says of how the node runs, beyond its configuration: whether it
/// runs job replicas (it always places the jobs submitted to it), and the test-only knobs.
struct RunFlags {
    run_replicas: bool,
    corrupt_results: bool,
    fixed_cell_bits: Option<u8>,
}

/// Who may submit jobs: the config's `trustedSubmitters` and the node's trust file (re-read
/// when `novacron keys trust|untrust` changes it).
fn trust_source(cfg: &NodeConfig, data_dir: &Path) -> anyhow::Result<TrustSource> {
    let trusted = TrustedSubmitters::new(cfg.trusted_submitters()?, trust_file_path(data_dir));
    Ok(TrustSource(std::sync::Arc::new(move || {
        trusted.current().map_err(|e| e.to_string())
    })))
}

/// The node's own crates at the configured level, libraries at warn (libp2p at info is
/// chatty); NOVACRON_LOG, when set, wins.
fn node_log_filter(level: LogLevel) -> String {
    let l = level.as_str();
    format!("novacron={l},novacron_node={l},novacron_mesh={l},novacron_vm={l},warn")
}

async fn serve(
    identity: &NodeIdentity,
    cfg: &NodeConfig,
    data_dir: &Path,
    db_path: PathBuf,
    swarm: SwarmConfig,
    outlive_node: bool,
    flags: RunFlags,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    // The API's port and certificate first: a port in use stops the node before it listens
    // on the mesh or starts a VM.
    let rest = api::rest::prepare(&cfg.api, data_dir)?;
    let dashboard = api::dashboard::prepare(&cfg.dashboard, &rest)?;
    let (api, _socket_file) = api::socket::bind(data_dir)?;
    let mesh = MeshNode::start(identity, swarm)?;
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let image_dirs = image_dirs(cfg, data_dir)?;
    let opts = DaemonOptions {
        data_dir: data_dir.to_path_buf(),
        db_path,
        vms: VmOptions {
            exe,
            data_dir: data_dir.to_path_buf(),
            sandbox: true,
            checkpoint_every: Some(Duration::from_secs(cfg.checkpoint_interval_s)),
            host_tag: crate::vms::host_tag(&identity.peer_id().to_bytes()),
            image_dirs,
            outlive_node,
        },
        policy: cfg.politeness.clone(),
        trust: trust_source(cfg, data_dir)?,
        submitter_limits: cfg.submitter_limits.limits(),
        run_job_replicas: flags.run_replicas,
        corrupt_job_results: flags.corrupt_results,
        fixed_cell_bits: flags.fixed_cell_bits,
    };
    let (daemon, recovered) = Daemon::start(mesh, identity.clone(), opts).await?;
    show_recovery(&recovered);
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let (dashboard_stop, dashboard_stopped) = tokio::sync::oneshot::channel::<()>();
    // The dashboard's memory of the node (samples, churn, events) is kept only for it.
    let (dashboard, recorder) = match dashboard {
        Some(d) => {
            let memory = std::sync::Arc::new(api::dashboard::NodeMemory::default());
            let recorder = tokio::spawn(api::dashboard::memory::record(
                daemon.clone(),
                memory.clone(),
                daemon.cell_events(),
            ));
            let served = d.serve(
                api::rest::limits(&cfg.api),
                daemon.clone(),
                memory,
                node_name(cfg, identity),
                cfg.dashboard.keys_dir.clone(),
                async {
                    let _ = dashboard_stopped.await;
                },
            )?;
            (Some(served), Some(recorder))
        }
        None => (None, None),
    };
    let rest = rest.serve(
        api::rest::limits(&cfg.api),
        data_dir,
        daemon.clone(),
        daemon.metrics.clone(),
        async {
            let _ = api_stopped.await;
        },
    )?;
    let maintenance = tokio::spawn(daemon.clone().maintain());
    let mut cell_events = daemon.cell_events();
    let api_task = tokio::spawn(api::socket::serve(api, daemon.clone()));
    let node = &daemon.mesh;
    let me = node.peer_id();
    let mut events = node.subscribe();
    // Addresses that came up before the subscription are only in the listener list.
    let mut shown = HashSet::new();
    for addr in node.listen_addrs().await? {
        show_listen_addr(me, &addr, &mut shown);
    }
    let mut table = node.routing_table_peers().await?.len();
    eprintln!("novacron: routing table has {table} peers");
    // Ready means a VM can be admitted: politeness has looked at the machine once.
    daemon
        .first_politeness_observation(Duration::from_secs(10))
        .await;
    if let Some(d) = &dashboard {
        let file = data_dir.join(api::dashboard::URL_FILE);
        api::rest::write_atomic(&file, format!("{}\n", d.url).as_bytes())
            .with_context(|| format!("cannot write {}", file.display()))?;
        eprintln!("novacron: dashboard at {} ({})", d.url, d.addr);
    }
    match &rest.tls_fingerprint {
        Some(fp) => eprintln!(
            "novacron: ready, API at {} ({}; TLS certificate SHA-256 {fp})",
            rest.url, rest.addr
        ),
        None => eprintln!("novacron: ready, API at {} ({})", rest.url, rest.addr),
    }
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            event = events.recv() => match event {
                Ok(MeshEvent::Listening(addr)) => show_listen_addr(me, &addr, &mut shown),
                Ok(MeshEvent::RoutingTable { peers }) if peers != table => {
                    table = peers;
                    eprintln!("novacron: routing table has {peers} peers");
                }
                Ok(MeshEvent::RoutingRefused { peer, addr, reason }) => {
                    tracing::info!(%peer, %addr, ?reason, "kept out of the routing table");
                }
                Ok(MeshEvent::Reachability { public }) => {
                    tracing::info!(public, "reachability");
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::debug!(n, "missed mesh events"),
                Err(RecvError::Closed) => anyhow::bail!("the mesh task stopped unexpectedly"),
            },
            event = cell_events.recv() => match event {
                Ok(e) => show_cell_event(&daemon, e).await,
                Err(RecvError::Lagged(n)) => tracing::warn!(n, "missed cell events"),
                Err(RecvError::Closed) => anyhow::bail!("the cell membership stopped unexpectedly"),
            },
        }
    }
    drain(
        &daemon,
        Duration::from_secs(cfg.drain_deadline_s),
        &mut sigterm,
        &mut sigint,
    )
    .await;
    let _ = api_stop.send(());
    let _ = dashboard_stop.send(());
    if let Err(e) = rest.stopped().await {
        tracing::warn!(error = %e, "the REST API did not stop cleanly");
    }
    if let Some(d) = dashboard {
        d.stopped().await;
    }
    if let Some(r) = recorder {
        r.abort();
        let _ = r.await;
    }
    api_task.abort();
    let _ = api_task.await;
    maintenance.abort();
    let _ = maintenance.await;
    drop(cell_events);
    drop(events);
    let vms = daemon.vms.clone();
    daemon.stop().await;
    // Supervisors let go of their VMs (left to be adopted, or stopped with an ephemeral
    // node); wait until each has done so and reaped what it stopped.
    vms.wait_unsupervised(REAP_WAIT).await;
    eprintln!("novacron: node {me} stopped");
    Ok(())
}

/// The node's name for people: its `nodeId`, else its PeerId's tail.
fn node_name(cfg: &NodeConfig, identity: &NodeIdentity) -> String {
    match &cfg.node_id {
        Some(n) => n.clone(),
        None => novacron_dashboard::format::short_peer(&identity.peer_id().to_string()),
    }
}

/// The directories VM kernels and initrds may come from (absolute); the default one,
/// `<dataDir>/images`, is created so operators find where to put them.
fn image_dirs(cfg: &NodeConfig, data_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let data_dir = std::path::absolute(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    if cfg.vm.image_dirs.is_none() {
        let dir = data_dir.join(crate::config::IMAGES_DIR);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the image directory {}", dir.display()))?;
    }
    Ok(cfg.vm.image_dirs(&data_dir))
}

/// How long a drained node waits for its VMMs' supervisors to reap them.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// Moves every VM away before the node exits (snapshotting what is still here at the
/// deadline). A second SIGTERM or SIGINT cuts it short: VMs then keep running, to be
/// adopted by the next start (an ephemeral node's stop with it).
async fn drain(
    daemon: &std::sync::Arc<Daemon>,
    deadline: Duration,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    let active = daemon.vms.active().len();
    if active == 0 {
        return;
    }
    let (again, cut_short) = match daemon.vms.outlive_node() {
        true => ("leave them running", "drain cut short; VMs keep running"),
        false => ("stop them", "drain cut short; VMs stop with the node"),
    };
    eprintln!(
        "novacron: draining: moving {active} VMs away (deadline {}s; signal again to {again})",
        deadline.as_secs()
    );
    daemon.start_drain(deadline);
    let wait = async {
        // A VM paused after a migration in doubt is neither moved nor parked: it stays
        // paused, for the next start to adopt and an operator to decide.
        let leaving = || {
            daemon
                .vms
                .active()
                .iter()
                .any(|v| daemon.vms.in_doubt_with(&v.id).is_none())
        };
        while leaving() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The VMMs of moved and parked VMs exit on their own; their supervisors reap them
        // (leaving none to wait, orphaned, for an owner that is not coming back).
        daemon.vms.wait_unsupervised(REAP_WAIT).await;
    };
    tokio::select! {
        _ = wait => eprintln!("novacron: drained"),
        _ = sigterm.recv() => eprintln!("novacron: {cut_short}"),
        _ = sigint.recv() => eprintln!("novacron: {cut_short}"),
    }
}

fn show_recovery(r: &crate::vms::RecoveryReport) {
    if r.adopted.is_empty() && r.restored.is_empty() && r.ended.is_empty() {
        return;
    }
    eprintln!(
        "novacron: recovered VMs: {} adopted, {} restored from checkpoints, {} ended while the node was down",
        r.adopted.len(),
        r.restored.len(),
        r.ended.len()
    );
}

/// Prints a member's arrival or death with the live count after it (the line format of
/// [`crate::daemon::lines`]); a member collected after its grace period is only logged.
async fn show_cell_event(daemon: &Daemon, event: CellEvent) {
    let (change, peer) = match event {
        CellEvent::MemberJoined { peer, .. } => (MemberChange::Up, peer),
        CellEvent::MemberDied { peer } => (MemberChange::Down, peer),
        CellEvent::MemberLeft { peer } => {
            tracing::info!(%peer, "cell member forgotten");
            return;
        }
    };
    let live = daemon.live_members().await;
    eprintln!("{}", member_line(change, &peer.to_string(), live));
}

fn show_listen_addr(me: PeerId, addr: &Multiaddr, shown: &mut HashSet<Multiaddr>) {
    if shown.insert(addr.clone()) {
        eprintln!("novacron: node {me} listening on {addr}/p2p/{me}");
    }
}
