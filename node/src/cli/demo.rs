//! `novacron demo`: a local mesh on this machine — N `novacron node` processes on loopback,
//! joined through the first, in one cell — and a live view of it until Ctrl-C.
//!
//! The dashboard comes with its own issue; until then the view is the first node's member
//! table, printed whenever membership changes (and every `--every` seconds). Once two nodes
//! are live, a builtin guest VM starts on the first and wanders the mesh: every
//! `--move-every` seconds it live-migrates to the peer with the most free capacity
//! (`--no-vm` leaves it out, e.g. on a host without KVM).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::api::client::ApiClient;
use crate::api::types::{
    MigrationInfo, MigrationMode, MigrationRequest, MigrationState, VmInfo, VmSpec,
};
use crate::local_mesh::LocalMesh;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Directory for the nodes' data directories (default: a fresh one under the temp dir,
    /// removed at exit).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the member table at least this often (seconds).
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Do not start the wandering VM.
    #[arg(long)]
    no_vm: bool,
    /// Seconds between the VM's moves.
    #[arg(long, default_value_t = 20)]
    move_every: u64,
}

/// The VM the demo moves around: which node holds it, and when it last moved.
struct Wanderer {
    id: String,
    node: usize,
    moved: Instant,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 || args.nodes > 200 {
        bail!("--nodes must be 1 to 200 (got {})", args.nodes);
    }
    let (root, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("novacron-demo-{}", std::process::id())),
            true,
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook_flag(signal, &stop)?;
    }
    let result = show(&args, &root, &stop);
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn show(args: &DemoArgs, root: &std::path::Path, stop: &AtomicBool) -> anyhow::Result<()> {
    eprintln!(
        "novacron: starting {} nodes under {} (Ctrl-C stops them all)",
        args.nodes,
        root.display()
    );
    let mesh = LocalMesh::start(root, args.nodes, &[])?;
    let started = Instant::now();
    let mut last_membership: Vec<(String, bool)> = Vec::new();
    let mut last_print = Instant::now() - Duration::from_secs(args.every);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut wanderer: Option<Wanderer> = None;
    let mut vm_failed = args.no_vm;
    while !stop.load(Ordering::Relaxed) {
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let Ok(status) = mesh.nodes[0].status() else {
            continue;
        };
        let live = status.live_members().count();
        let membership: Vec<(String, bool)> = status
            .cell
            .iter()
            .flat_map(|c| c.members.iter().map(|m| (m.peer_id.clone(), m.live)))
            .collect();
        if membership != last_membership || last_print.elapsed() >= Duration::from_secs(args.every)
        {
            let view = crate::cli::nodes::table(&status, true);
            println!(
                "--- {:.0} s: {live} of {} nodes live in node-000's cell ---\n{view}",
                started.elapsed().as_secs_f64(),
                args.nodes
            );
            last_membership = membership;
            last_print = Instant::now();
        }
        if vm_failed || live < 2 {
            continue;
        }
        let step = runtime.block_on(wander(&mesh, &mut wanderer, args.move_every));
        if let Err(e) = step {
            eprintln!("novacron: demo VM: {e:#} (the mesh runs on without it)");
            vm_failed = true;
        }
    }
    eprintln!("novacron: stopping the demo mesh");
    drop(mesh);
    Ok(())
}

/// Starts the wandering VM, or moves it on when its time has come.
async fn wander(
    mesh: &LocalMesh,
    wanderer: &mut Option<Wanderer>,
    every: u64,
) -> anyhow::Result<()> {
    let client = |i: usize| -> anyhow::Result<ApiClient> {
        let dir = &mesh.nodes[i].data_dir;
        let url = std::fs::read_to_string(dir.join("api.url"))
            .with_context(|| format!("{} has no API address yet", dir.display()))?;
        Ok(ApiClient::new(url.trim(), None, None)?)
    };
    let Some(w) = wanderer else {
        let spec: VmSpec = serde_json::from_value(serde_json::json!({
            "name": "wanderer",
            "guest": "builtin:counter:passes=100000",
            "mem_mib": 64,
        }))?;
        let vm: VmInfo = client(0)?.post("/api/v1/vms", &spec).await?;
        println!("novacron: demo VM {} runs on node-000", vm.id);
        *wanderer = Some(Wanderer {
            id: vm.id,
            node: 0,
            moved: Instant::now(),
        });
        return Ok(());
    };
    if w.moved.elapsed() < Duration::from_secs(every) {
        return Ok(());
    }
    w.moved = Instant::now();
    let from = client(w.node)?;
    let request = MigrationRequest {
        to: "auto".into(),
        mode: MigrationMode::Live,
        downtime_budget_ms: None,
    };
    let path = format!("/api/v1/vms/{}/migrate", w.id);
    let mut m: MigrationInfo = from.post(&path, &request).await?;
    while !m.state.is_final() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = from.get(&format!("/api/v1/migrations/{}", m.id)).await?;
    }
    let to = mesh
        .nodes
        .iter()
        .position(|n| n.peer_id().is_some_and(|p| p == m.peer));
    match (m.state, to) {
        (MigrationState::Done, Some(to)) => {
            println!(
                "novacron: demo VM {} moved live from node-{:03} to node-{to:03}: downtime {:.1} ms, {} KiB on the wire",
                w.id,
                w.node,
                m.downtime_ms.unwrap_or(0.0),
                m.wire_bytes / 1024
            );
            w.node = to;
        }
        _ => println!(
            "novacron: demo VM {} stays on node-{:03}: {}",
            w.id,
            w.node,
            m.error.unwrap_or_else(|| format!("{:?}", m.state))
        ),
    }
    Ok(())
}

/// Sets `flag` when `signal` arrives (an async-signal-safe store, nothing else).
fn signal_hook_flag(signal: libc::c_int, flag: &Arc<AtomicBool>) -> anyhow::Result<()> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = FLAG.set(flag.clone());
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }
    // SAFETY: the handler only performs an atomic store on a value initialised before it is
    // installed; sigaction is given a zeroed, fully initialised struct.
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
