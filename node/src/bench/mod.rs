//! `novacron bench <suite>`: measurements, printed as a human table or one JSON object.
//! Benchmarks are not tests: they report speed and compare it with a reference measured in
//! the same run, never assert it.

pub mod browser;
mod chunks;
mod dashboard;
mod detection;
mod jobs;
mod mesh;
mod migrate;
mod node;
pub(crate) mod proc_usage;
mod report;
mod vm;

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::output::{self, outln};

pub use vm::bare_kvm_first_exit_ns;

#[derive(Subcommand, Debug)]
pub enum Suite {
    /// The VM engine: VMM start, memory overhead, snapshot and restore.
    Vm(vm::VmBenchArgs),
    /// The content-addressed chunk store: chunk sizes 4/16/64 KiB on the benchmark
    /// workloads, against blake3 and zstd over the whole buffer.
    Chunks(chunks::ChunksBenchArgs),
    /// Live migration between two jailed VMM processes over loopback TCP, on the
    /// workloads QEMU 7.2 was measured on (idle, dirtier, random, remigrate).
    Migrate(migrate::MigrateBenchArgs),
    /// N real `novacron node` processes on loopback: join time, failure detection, bytes
    /// per node in steady state.
    Mesh(mesh::MeshBenchArgs),
    /// Mesh jobs: the placement decision over a 50,000-node view, submit to running and
    /// recovery after a kill -9 through a local mesh.
    Jobs(jobs::JobsBenchArgs),
    /// The dashboard: the slowest page's render with 200 members and 1,000 VMs and jobs,
    /// a change through the API to its paint in headless Chromium, the memory it costs.
    Dashboard(dashboard::DashboardBenchArgs),
    /// The node daemon: start to ready, API latency under 200 clients, live migration
    /// between two daemons against the direct-TCP path.
    Node(node::NodeBenchArgs),
}

pub fn run(suite: Suite) -> anyhow::Result<ExitCode> {
    let (report, json) = match suite {
        Suite::Vm(args) => (vm::run(&args)?, args.json()),
        Suite::Chunks(args) => (chunks::run(&args)?, args.json()),
        Suite::Migrate(args) => (migrate::run(&args)?, args.json()),
        Suite::Mesh(args) => (mesh::run(&args)?, args.json()),
        Suite::Node(args) => (node::run(&args)?, args.json()),
        Suite::Jobs(args) => (jobs::run(&args)?, args.json()),
        Suite::Dashboard(args) => (dashboard::run(&args)?, args.json()),
    };
    if json {
        outln!("{}", report.to_json())?;
    } else {
        output::print(&report.to_table())?;
    }
    Ok(ExitCode::SUCCESS)
}
