//! Command-line interface (clap derive).

mod api_args;
pub(crate) mod cell_members;
mod chunks;
mod demo;
mod drain;
mod events;
mod foreground_vm;
mod jail_run;
mod jobs;
pub mod keys;
mod mesh_migrate;
pub(crate) mod node_vms;
pub mod output;
mod owner;
mod run_node;
mod sim;
mod status;
mod submit;

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
    Vm(foreground_vm::VmCommand),
    /// Join the mesh and run in the foreground until SIGINT or SIGTERM.
    Node(run_node::NodeArgs),
    /// The live members of the local node's cell (asks its REST API).
    Nodes(cell_members::NodesArgs),
    /// The local node at a glance (asks its REST API)
    ///
    /// Identity, version, uptime, addresses, peers, cell, politeness, VMs by state and
    /// migrations running.
    ///
    /// Examples:
    ///   novacron status
    ///   novacron status --data-dir /var/lib/novacron --json
    ///   novacron status --api https://10.0.0.5:8080 --ca node.crt --token-file api.token
    #[command(verbatim_doc_comment)]
    Status(status::StatusArgs),
    /// The local node's VMs: list, create, show, stop, pause, resume, rm
    ///
    /// IDs may be given by a unique prefix.
    ///
    /// Examples:
    ///   novacron vms
    ///   novacron vms create --guest builtin:counter --mem 64M --name demo
    ///   novacron vms create --backend process --mem 128M --command /bin/sleep 600
    ///   novacron vms show 3f2a
    ///   novacron vms pause 3f2a ; novacron vms resume 3f2a ; novacron vms stop 3f2a
    ///   novacron vms rm 3f2a
    ///   novacron vms --json
    #[command(verbatim_doc_comment)]
    Vms(node_vms::VmsArgs),
    /// Move a VM of the local node to a peer over the mesh, and watch it move
    ///
    /// Exits 0 when the VM runs on the peer, 1 when the migration failed or was cancelled
    /// (the VM then keeps running here). Ctrl-C while watching cancels the migration.
    /// Not `novacron vm migrate`, which sends a foreground VM over direct TCP.
    ///
    /// Examples:
    ///   novacron migrate 3f2a --to auto
    ///   novacron migrate 3f2a --to 12D3KooW... --mode warm
    ///   novacron migrate 3f2a --to auto --downtime-budget 20 --json
    ///   novacron migrate 3f2a --to auto --detach
    #[command(verbatim_doc_comment)]
    Migrate(mesh_migrate::MigrateArgs),
    /// Ask the local node to move every VM away, and follow until none is left
    ///
    /// VMs move to peers (or are snapshotted when no peer can take one). Exits 0 when no
    /// VM is active on the node, 1 if the deadline (plus 10 s) passes first.
    ///
    /// Examples:
    ///   novacron drain
    ///   novacron drain --deadline 300 --json
    #[command(verbatim_doc_comment)]
    Drain(drain::DrainArgs),
    /// Follow the local node's events, one line each
    ///
    /// VMs, migrations, members, politeness, draining; from now on (no backlog), until
    /// Ctrl-C or the node closes the stream.
    ///
    /// Examples:
    ///   novacron events
    ///   novacron events --kind vm,migration --json
    #[command(verbatim_doc_comment)]
    Events(events::EventsArgs),
    /// Tell the local node what its owner is doing: active, idle, or auto (asks its REST API)
    ///
    /// active: "I'm using the machine" (VMs get the busy memory cap, or leave in idle-only
    /// mode); idle: "I'm away"; auto: the node judges by its hook files and input devices
    /// again. The word beats both and is kept across restarts until auto.
    ///
    /// Examples:
    ///   novacron owner active
    ///   novacron owner auto --json
    #[command(verbatim_doc_comment)]
    Owner(owner::OwnerArgs),
    /// A local mesh: N node processes on loopback, joined in one cell, shown live until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Submitter keys: make, list, show; and which of them a node trusts
    ///
    /// Keys live in --keys-dir, else $NOVACRON_KEYS_DIR, else
    /// $XDG_CONFIG_HOME/novacron/keys, else ~/.config/novacron/keys. trust and untrust
    /// edit the node's <dataDir>/trusted-submitters; a running node sees it at once.
    ///
    /// Examples:
    ///   novacron keys new alice
    ///   novacron keys list --json
    ///   novacron keys show alice
    ///   novacron keys trust alice --data-dir /var/lib/novacron
    ///   novacron keys untrust ed25519:3b6a27bc... --data-dir /var/lib/novacron
    #[command(verbatim_doc_comment)]
    Keys(keys::KeysArgs),
    /// Sign a job spec with a submitter key and send it into the mesh through the node.
    ///
    /// Examples:
    ///   novacron keys new default && novacron keys trust default --data-dir /tmp/n1
    ///   novacron submit job.yaml --data-dir /tmp/n1
    ///   novacron submit job.yaml --wait          # follow it; print the result
    #[command(verbatim_doc_comment)]
    Submit(submit::SubmitArgs),
    /// The jobs the node knows: submitted through it, or running a replica there.
    Jobs(jobs::JobsArgs),
    /// One job: show, logs [--follow], result [--out FILE], cancel.
    Job(jobs::JobArgs),
    /// Share files with the mesh as chunk sets (through the running node).
    #[command(subcommand)]
    Chunks(chunks::ChunksCommand),
    /// Measure a subsystem (human table, or one JSON object with --json).
    Bench {
        #[command(subcommand)]
        suite: crate::bench::Suite,
    },
    /// Simulate the mesh in virtual time from a scenario file (simulator/scenarios/).
    #[command(subcommand)]
    Sim(sim::SimCommand),
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
        Top::Vm(cmd) => foreground_vm::run(cmd),
        Top::Node(args) => run_node::run(args),
        Top::Nodes(args) => cell_members::run(args),
        Top::Status(args) => status::run(args),
        Top::Vms(args) => node_vms::run(args),
        Top::Migrate(args) => mesh_migrate::run(args),
        Top::Drain(args) => drain::run(args),
        Top::Events(args) => events::run(args),
        Top::Owner(args) => owner::run(args),
        Top::Chunks(cmd) => chunks::run(cmd),
        Top::Keys(args) => keys::run(args),
        Top::Submit(args) => submit::run(args),
        Top::Jobs(args) => jobs::run_list(args),
        Top::Job(args) => jobs::run(args),
        Top::Demo(args) => demo::run(args),
        Top::Bench { suite } => crate::bench::run(suite),
        Top::Sim(cmd) => sim::run_command(cmd),
        Top::BareKvm => {
            output::outln!("{}", crate::bench::bare_kvm_first_exit_ns()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Top::JailRun(args) => Ok(jail_run::run(args)),
        Top::Vmm => {
            let code = novacron_vm::process::vmm::main();
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}

/// What the API commands print for people: aligned tables, short ids, sizes, durations,
/// and id prefixes resolved against a list. Pure functions (tested below).
pub(crate) mod human {
    /// A table whose columns are as wide as their widest cell; numbers can align right.
    pub struct Table {
        headers: Vec<String>,
        right: Vec<bool>,
        rows: Vec<Vec<String>>,
    }

    impl Table {
        pub fn new(headers: &[&str]) -> Table {
            Table {
                headers: headers.iter().map(|h| h.to_string()).collect(),
                right: vec![false; headers.len()],
                rows: Vec::new(),
            }
        }

        /// Aligns these columns (by index) to the right.
        pub fn right(mut self, cols: &[usize]) -> Table {
            for &c in cols {
                if let Some(r) = self.right.get_mut(c) {
                    *r = true;
                }
            }
            self
        }

        /// Adds a row; missing cells are empty, extra ones dropped.
        pub fn row(&mut self, mut cells: Vec<String>) {
            cells.resize(self.headers.len(), String::new());
            self.rows.push(cells);
        }

        /// The table, one line per row, two spaces between columns, no trailing spaces.
        pub fn render(&self) -> String {
            let width = |s: &str| s.chars().count();
            let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
            for row in &self.rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(width(cell));
                }
            }
            let mut out = String::new();
            for line in std::iter::once(&self.headers).chain(&self.rows) {
                let mut text = String::new();
                for (i, cell) in line.iter().enumerate() {
                    if i > 0 {
                        text.push_str("  ");
                    }
                    let pad = widths[i].saturating_sub(width(cell));
                    if self.right[i] {
                        text.extend(std::iter::repeat_n(' ', pad));
                        text.push_str(cell);
                    } else {
                        text.push_str(cell);
                        text.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                out.push_str(text.trim_end());
                out.push('\n');
            }
            out
        }
    }

    /// Bytes as people read them: 512 B, 1.5 KiB, 64 MiB, 2.0 GiB.
    pub fn bytes(n: u64) -> String {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if n < 1024 {
            return format!("{n} B");
        }
        let mut v = n as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        if v < 10.0 {
            format!("{v:.1} {}", UNITS[unit])
        } else {
            format!("{v:.0} {}", UNITS[unit])
        }
    }

    /// A duration as people read it: 850 ms, 12.3 s, 4m05s, 3h12m, 2d04h.
    pub fn duration_ms(ms: u64) -> String {
        let s = ms / 1000;
        match ms {
            0..=999 => format!("{ms} ms"),
            1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
            60_000..=3_599_999 => format!("{}m{:02}s", s / 60, s % 60),
            3_600_000..=86_399_999 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
            _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
        }
    }

    /// How long ago `at_ms` was at `now_ms` ("-" for a time in the future).
    pub fn ago(now_ms: u64, at_ms: u64) -> String {
        match now_ms.checked_sub(at_ms) {
            Some(d) => format!("{} ago", duration_ms(d)),
            None => "-".into(),
        }
    }

    /// The UTC time of day of Unix milliseconds: 13:04:05.123.
    pub fn clock(at_ms: u64) -> String {
        let day_ms = at_ms % 86_400_000;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            day_ms / 3_600_000,
            (day_ms / 60_000) % 60,
            (day_ms / 1000) % 60,
            day_ms % 1000
        )
    }

    /// The shortest prefixes, at least `min` characters, that tell each id apart from the
    /// others in `ids`.
    pub fn short_ids(ids: &[&str], min: usize) -> Vec<String> {
        ids.iter()
            .map(|id| {
                let chars: Vec<char> = id.chars().collect();
                let mut len = min.min(chars.len());
                while len < chars.len() {
                    let p: String = chars[..len].iter().collect();
                    if !ids.iter().any(|o| o != id && o.starts_with(&p)) {
                        break;
                    }
                    len += 1;
                }
                chars[..len].iter().collect()
            })
            .collect()
    }

    /// A peer id shortened for a table: its head and tail (`12D3KooW…x7Qk`).
    pub fn short_peer(peer: &str) -> String {
        let chars: Vec<char> = peer.chars().collect();
        if chars.len() <= 16 {
            return peer.to_string();
        }
        let head: String = chars[..8].iter().collect();
        let tail: String = chars[chars.len() - 6..].iter().collect();
        format!("{head}…{tail}")
    }

    /// The one id in `ids` that is `given` or starts with it; the error says what to do
    /// (`what` names the kind of thing: "VM", "migration").
    pub fn resolve_id<'a>(
        ids: impl IntoIterator<Item = &'a str>,
        given: &str,
        what: &str,
        list_cmd: &str,
    ) -> Result<String, String> {
        if given.is_empty() {
            return Err(format!(
                "an empty {what} id: give an id or its first characters"
            ));
        }
        let ids: Vec<&str> = ids.into_iter().collect();
        if ids.contains(&given) {
            return Ok(given.to_string());
        }
        let matches: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| id.starts_with(given))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(format!(
                "no {what} id starts with {given:?} (list them with `{list_cmd}`)"
            )),
            many => {
                let shown: Vec<&str> = many.iter().copied().take(10).collect();
                Err(format!(
                    "{given:?} is the start of {} {what} ids: {}{}; give more characters",
                    many.len(),
                    shown.join(", "),
                    if many.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ))
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tables_align_columns_and_numbers_right() {
            let mut t = Table::new(&["ID", "MEM", "NAME"]).right(&[1]);
            t.row(vec!["abc".into(), "64 MiB".into(), "x".into()]);
            t.row(vec!["abcdefgh".into(), "1 GiB".into()]);
            assert_eq!(
                t.render(),
                "ID           MEM  NAME\n\
                 abc       64 MiB  x\n\
                 abcdefgh   1 GiB\n"
            );
        }

        #[test]
        fn sizes_and_durations_read_like_people_write_them() {
            assert_eq!(bytes(0), "0 B");
            assert_eq!(bytes(1023), "1023 B");
            assert_eq!(bytes(1536), "1.5 KiB");
            assert_eq!(bytes(64 << 20), "64 MiB");
            assert_eq!(bytes(3 << 29), "1.5 GiB");
            assert_eq!(bytes(u64::MAX), "16384 PiB");
            assert_eq!(duration_ms(850), "850 ms");
            assert_eq!(duration_ms(12_345), "12.3 s");
            assert_eq!(duration_ms(245_000), "4m05s");
            assert_eq!(duration_ms(11_520_000), "3h12m");
            assert_eq!(duration_ms(187_200_000), "2d04h");
            assert_eq!(ago(10_000, 4_000), "6.0 s ago");
            assert_eq!(ago(1, 4_000), "-");
            assert_eq!(
                clock(86_400_000 + 13 * 3_600_000 + 4 * 60_000 + 5_123),
                "13:04:05.123"
            );
            assert_eq!(short_peer("12D3KooWAbCdEfGhIjKlMnOpQr"), "12D3KooW…MnOpQr");
            assert_eq!(short_peer("peer-b"), "peer-b");
        }

        #[test]
        fn short_ids_are_unique_prefixes() {
            let ids = ["0123456789ab", "0123456799ab", "ffff0000", "abc"];
            assert_eq!(
                short_ids(&ids, 8),
                vec!["012345678", "012345679", "ffff0000", "abc"]
            );
        }

        #[test]
        fn prefixes_resolve_to_one_id_or_say_why_not() {
            let ids = ["a1b2c3", "a1b2ff", "d4e5f6"];
            let r = |g: &str| resolve_id(ids.iter().copied(), g, "VM", "novacron vms");
            assert_eq!(r("d4").unwrap(), "d4e5f6");
            assert_eq!(r("a1b2c3").unwrap(), "a1b2c3");
            let err = r("a1b2").unwrap_err();
            assert!(
                err.contains("2 VM ids") && err.contains("a1b2c3") && err.contains("a1b2ff"),
                "{err}"
            );
            let err = r("zz").unwrap_err();
            assert!(
                err.contains("\"zz\"") && err.contains("novacron vms"),
                "{err}"
            );
            assert!(r("").unwrap_err().contains("empty"));
            // An id that is also a prefix of another is taken as given.
            let ids = ["ab", "abc"];
            assert_eq!(
                resolve_id(ids.iter().copied(), "ab", "VM", "x").unwrap(),
                "ab"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{default_mem_mib, DEFAULT_MEM_MIB};

    #[test]
    fn vm_run_and_vms_create_default_to_the_apis_memory() {
        let parsed = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("novacron").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            format!("{cli:?}")
        };
        assert_eq!(default_mem_mib(), DEFAULT_MEM_MIB);
        let run = parsed(&["vm", "run", "--guest", "builtin:hello"]);
        assert!(
            run.contains(&format!("mem: {},", DEFAULT_MEM_MIB << 20)),
            "{run}"
        );
        let create = parsed(&["vms", "create", "--guest", "builtin:hello"]);
        assert!(
            create.contains(&format!("mem: {DEFAULT_MEM_MIB},")),
            "{create}"
        );
    }
}
