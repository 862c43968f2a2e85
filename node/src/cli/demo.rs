//! `novacron demo`: a local mesh on this machine — N `novacron node` processes on loopback,
//! joined through the first, in one cell — and a live view of it until Ctrl-C.
//!
//! The dashboard comes with its own issue; until then the view is the first node's member
//! table, printed whenever membership changes (and every `--every` seconds).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

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
    }
    eprintln!("novacron: stopping the demo mesh");
    drop(mesh);
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
