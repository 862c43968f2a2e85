//! Command-line interface (clap derive).

mod chunks;
mod demo;
mod jail_run;
mod migrate;
mod node;
pub(crate) mod nodes;
mod receive;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "novacron",
    version,
    about = "NovaCron: a peer-to-peer volunteer compute mesh of KVM microVMs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Run, snapshot and restore one microVM in the foreground.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Join the mesh and run in the foreground until SIGINT or SIGTERM.
    Node(node::NodeArgs),
    /// The live members of the local node's cell (asks the running node).
    Nodes(nodes::NodesArgs),
    /// A local mesh: N node processes on loopback, joined in one cell, shown live until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Share files with the mesh as chunk sets (through the running node).
    #[command(subcommand)]
    Chunks(chunks::ChunksCommand),
    /// Measure a subsystem (human table, or one JSON object with --json).
    Bench {
        #[command(subcommand)]
        suite: crate::bench::Suite,
    },
    /// Internal: the per-VM sandboxed VMM process (spawned by novacron itself; its
    /// control socket is fd 3).
    #[command(hide = true)]
    Vmm,
    /// Internal: a `process`-backend command in the VM jail (spawned by the daemon).
    #[command(hide = true)]
    JailRun(jail_run::JailRunArgs),
    /// Internal: the bare-KVM reference program of `novacron bench vm` (prints the
    /// CLOCK_MONOTONIC ns of its first I/O exit).
    #[command(hide = true)]
    BareKvm,
}

/// Logs to stderr at `default` (an env-filter directive) unless NOVACRON_LOG says otherwise.
/// The first call wins.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NOVACRON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

impl Cli {
    /// Whether the command sets up logging itself (from its configuration).
    pub fn configures_logging(&self) -> bool {
        matches!(self.command, Top::Node(_))
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Top::Vm(cmd) => vm::run(cmd),
        Top::Node(args) => node::run(args),
        Top::Nodes(args) => nodes::run(args),
        Top::Chunks(cmd) => chunks::run(cmd),
        Top::Demo(args) => demo::run(args),
        Top::Bench { suite } => crate::bench::run(suite),
        Top::BareKvm => {
            println!("{}", crate::bench::bare_kvm_first_exit_ns()?);
            Ok(ExitCode::SUCCESS)
        }
        Top::JailRun(args) => Ok(jail_run::run(args)),
        Top::Vmm => {
            let code = novacron_vm::vmm::main();
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}
