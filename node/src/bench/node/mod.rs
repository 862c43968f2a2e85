//! `novacron bench node`: the node daemon as volunteers and operators meet it.
//!
//! - `daemon_start_to_ready_ms`: from spawning `novacron node` on a fresh data directory to
//!   the first 200 answer of `GET /api/v1/node`, and `daemon_restart_to_ready_ms` on the same
//!   directory right after a kill -9 (identity key and database exist). Reference: spawn to
//!   exit of `novacron --version`, the floor of starting this binary at all.
//! - `api_p99_ms`: `GET /api/v1/vms` of a daemon running up to 4 idle VMs (as many as its
//!   slots take, one per CPU), under `--clients` closed-loop clients, each on its own
//!   keep-alive HTTP/1.1 connection. Reference: the same load against a minimal axum server
//!   in this process answering the same bytes from memory.
//! - `mesh_migrate_downtime_ms`: live migration of the migration issue's idle workload
//!   between two daemons on loopback (libp2p streams), alternating direction. Reference: the
//!   same workload moved by `bench migrate`'s direct-TCP path between two bare VMMs.
//!
//! What it cannot do: separate the load generator from the server. On this 2-core machine
//! the clients (one thread) and the daemon (two runtime threads) share the cores, so the API
//! latencies include waiting for a core; the reference pays the same. It cannot SIGTERM a
//! daemon either (the local-mesh process handle only kills), so a restart follows a kill -9.

mod api;
mod measured_node;
mod mesh_downtime;
mod start;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use super::report::{in_scratch_dir, Report};
use crate::api::types::{Backend, VmSpec};

#[derive(Args, Debug)]
pub struct NodeBenchArgs {
    /// Daemon starts (fresh, then restart) and mesh migrations measured; medians reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent API clients, each on its own keep-alive HTTP/1.1 connection.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Seconds of API load measured, after a 1 s warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Parts to run (all by default).
    #[arg(long, value_delimiter = ',', default_value = "start,api,migrate")]
    parts: Vec<Part>,
    /// Scratch directory for the daemons' data directories (default: under the system temp
    /// dir); removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Daemon start and restart to the first API answer.
    Start,
    /// API latency under concurrent clients.
    Api,
    /// Live migration between two daemons.
    Migrate,
}

const MAX_RUNS: usize = 100;
/// Each client holds a socket in this process and one in the server's.
const MAX_CLIENTS: usize = 5000;
const MAX_SECONDS: u64 = 600;

impl NodeBenchArgs {
    pub fn json(&self) -> bool {
        self.json
    }

    /// Refuses values the bench cannot run with, naming the flag and its range.
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=MAX_RUNS).contains(&self.runs) {
            bail!("--runs {}: give 1 to {MAX_RUNS}", self.runs);
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            bail!(
                "--clients {}: give 1 to {MAX_CLIENTS} (each client is a connection)",
                self.clients
            );
        }
        if !(1..=MAX_SECONDS).contains(&self.seconds) {
            bail!("--seconds {}: give 1 to {MAX_SECONDS}", self.seconds);
        }
        if self.parts.is_empty() {
            bail!("--parts is empty: give some of start,api,migrate");
        }
        Ok(())
    }

    fn wants(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

pub fn run(args: &NodeBenchArgs) -> anyhow::Result<Report> {
    args.check()?;
    let rt = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
    );
    in_scratch_dir("node", args.dir.as_deref(), |scratch| {
        let mut report = Report::new("node");
        if args.wants(Part::Start) {
            start::start_figures(&rt, args, scratch, &mut report)?;
        }
        if args.wants(Part::Api) {
            api::api_figures(&rt, args, scratch, &mut report)?;
        }
        if args.wants(Part::Migrate) {
            mesh_downtime::migrate_figures(&rt, args, scratch, &mut report)?;
        }
        report.notes.push(format!(
            "daemons, VMMs and the bench share this machine's {} cores{}",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            if cfg!(debug_assertions) {
                "; debug build: every figure is slower than a release build's"
            } else {
                ""
            }
        ));
        Ok(report)
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn idle_spec(mem_mib: u64, prefill_mib: Option<u64>) -> VmSpec {
    VmSpec {
        name: Some("bench-node".into()),
        backend: Backend::Kvm,
        guest: Some("builtin:idle".into()),
        kernel: None,
        initrd: None,
        cmdline: None,
        command: None,
        mem_mib,
        vcpus: 1,
        migration: crate::api::types::default_migration_modes(),
        prefill_mib,
        checkpoint_interval_s: None,
        downtime_budget_ms: None,
        files: Vec::new(),
        priority: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        suite: crate::bench::Suite,
    }

    fn parse(args: &[&str]) -> Result<NodeBenchArgs, String> {
        let all = ["bench", "node"].iter().chain(args).copied();
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.suite {
            crate::bench::Suite::Node(a) => Ok(a),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn arguments_have_the_issue_defaults_and_bad_ones_are_named() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.runs, a.clients, a.seconds), (5, 200, 5));
        assert_eq!(a.parts, vec![Part::Start, Part::Api, Part::Migrate]);
        assert!(!a.json() && a.dir.is_none());
        a.check().unwrap();

        let a = parse(&[
            "--runs",
            "3",
            "--clients",
            "50",
            "--seconds",
            "2",
            "--parts",
            "api,start",
            "--json",
        ])
        .unwrap();
        assert_eq!((a.runs, a.clients, a.seconds), (3, 50, 2));
        assert!(a.wants(Part::Api) && a.wants(Part::Start) && !a.wants(Part::Migrate));
        assert!(a.json());

        let err = parse(&["--parts", "api,nope"]).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let err = parse(&["--clients=-3"]).unwrap_err();
        assert!(err.contains("--clients"), "{err}");
        for (flag, value) in [
            ("--clients", "0"),
            ("--clients", "100000"),
            ("--runs", "0"),
            ("--seconds", "0"),
        ] {
            let err = parse(&[flag, value])
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag) && err.contains(value), "{err}");
        }
    }
}
