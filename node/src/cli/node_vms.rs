//! `novacron vms ...`: the local node's VMs through its REST API. IDs may be given by a
//! unique prefix, resolved against the node's list.

use crate::cli::output::{self, outln};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::api_args::{block_on, ApiArgs};
use super::human::{ago, bytes, resolve_id, short_ids, Table};
use crate::api::client::{path_segment, ApiClient};
use crate::api::types::{now_ms, Backend, MigrationMode, PayloadFile, VmInfo, VmSpec, VmState};
use crate::size::parse_size;

#[derive(Args, Debug)]
pub struct VmsArgs {
    #[command(subcommand)]
    cmd: Option<VmsCommand>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print JSON: the list (or the VM) as one JSON document.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum VmsCommand {
    /// Every VM the node knows, running ones and the history it keeps (the default).
    List,
    /// Start a VM on the node.
    ///
    /// Examples:
    ///   novacron vms create --guest builtin:counter
    ///   novacron vms create --guest builtin:counter:passes=4 --mem 128M --vcpus 2 --name job1
    ///   novacron vms create --backend process --mem 256M --command /usr/bin/stress -c 1
    ///   novacron vms create --backend process --file run.sh=<chunk set> --command /bin/sh run.sh
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
    /// Everything the node says about one VM.
    Show { id: String },
    /// Stop a VM (its VMM exits; the node keeps its record).
    Stop { id: String },
    /// Remove the record and files (console, checkpoints) of a VM that ended: exited,
    /// failed or moved away (stop a running one first).
    #[command(alias = "remove")]
    Rm { id: String },
    /// Pause a VM's vCPUs (it keeps its memory on this node).
    Pause { id: String },
    /// Resume a paused VM.
    Resume { id: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Kvm,
    Process,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Live,
    Warm,
    Cold,
}

#[derive(Args, Debug)]
struct CreateArgs {
    #[arg(long, help = format!("kvm: a builtin guest kit program: {}", novacron_vm::guest_kit::usage()))]
    guest: Option<String>,
    /// kvm: a Linux kernel on the node's host to boot instead of a builtin guest.
    #[arg(long, conflicts_with = "guest")]
    kernel: Option<String>,
    /// kvm: an initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<String>,
    /// kvm: the kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Guest memory (kvm) or memory limit (process): 64M, 1G, ... (whole MiB).
    #[arg(long, default_value = crate::api::types::DEFAULT_MEM, value_parser = parse_mib)]
    mem: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    vcpus: u8,
    /// A name for people (the id names the VM).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_enum, default_value = "kvm")]
    backend: BackendArg,
    /// process: the program and its arguments (everything after --command; put it last).
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM [ARG]...")]
    command: Option<Vec<String>>,
    /// How the VM may move when the node needs it gone, in the order tried.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "live,warm")]
    migration: Vec<ModeArg>,
    /// Builtin guests: before the guest starts, write the benchmark pattern into this much
    /// guest memory at 16 MiB (the migration benchmarks' workloads): 64M, ...
    #[arg(long, value_parser = parse_mib, requires = "guest")]
    prefill: Option<u64>,
    /// process: a file placed in the command's directory before it starts, fetched from the
    /// mesh by chunk set (`novacron chunks publish FILE` prints the id); repeatable.
    #[arg(long = "file", value_name = "NAME=CHUNKSET", value_parser = parse_file)]
    files: Vec<PayloadFile>,
    /// 0 (lowest) to 9: when the node must give memory back, lower priorities leave first
    /// (default 5).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    priority: Option<u8>,
}

/// `NAME=CHUNKSET` of `--file` (the node checks both).
fn parse_file(s: &str) -> Result<PayloadFile, String> {
    let (name, set) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': give NAME=CHUNKSET, e.g. run.sh=5d41...(64 hex digits)"))?;
    Ok(PayloadFile {
        name: name.to_string(),
        chunk_set: set.to_string(),
    })
}

/// A size in whole MiB.
fn parse_mib(s: &str) -> Result<u64, String> {
    let b = parse_size(s)?;
    if b == 0 || b % (1 << 20) != 0 {
        return Err(format!(
            "'{s}' is not a whole number of MiB (at least 1M): use e.g. 64M or 1G"
        ));
    }
    Ok(b >> 20)
}

impl CreateArgs {
    fn spec(&self) -> anyhow::Result<VmSpec> {
        let backend = match self.backend {
            BackendArg::Kvm => Backend::Kvm,
            BackendArg::Process => Backend::Process,
        };
        match backend {
            Backend::Kvm if self.guest.is_none() && self.kernel.is_none() => {
                bail!("say what to boot: --guest builtin:NAME or --kernel PATH (or --backend process --command ...)")
            }
            Backend::Kvm if self.command.is_some() => {
                bail!("--command is for --backend process; a kvm VM boots --guest or --kernel")
            }
            Backend::Process if self.command.is_none() => {
                bail!("--backend process needs --command PROGRAM [ARG]... (put it last)")
            }
            Backend::Kvm if !self.files.is_empty() => {
                bail!("--file is for --backend process (a command's files)")
            }
            Backend::Process if self.guest.is_some() || self.kernel.is_some() => {
                bail!("--guest and --kernel are for --backend kvm; a process VM runs --command")
            }
            _ => {}
        }
        let mut migration: Vec<MigrationMode> = Vec::new();
        for m in &self.migration {
            let m = match m {
                ModeArg::Live => MigrationMode::Live,
                ModeArg::Warm => MigrationMode::Warm,
                ModeArg::Cold => MigrationMode::Cold,
            };
            if !migration.contains(&m) {
                migration.push(m);
            }
        }
        Ok(VmSpec {
            name: self.name.clone(),
            backend,
            guest: self.guest.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            command: self.command.clone(),
            mem_mib: self.mem,
            vcpus: self.vcpus,
            migration,
            prefill_mib: self.prefill,
            checkpoint_interval_s: None,
            downtime_budget_ms: None,
            files: self.files.clone(),
            priority: self.priority,
        })
    }
}

pub fn run(args: VmsArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
    let json = args.json;
    block_on(async move {
        match args.cmd.unwrap_or(VmsCommand::List) {
            VmsCommand::List => {
                let vms: Vec<VmInfo> = client.get("/api/v1/vms").await?;
                if json {
                    outln!("{}", serde_json::to_string(&vms)?)?;
                } else {
                    output::print(&table(&vms, now_ms()))?;
                }
            }
            VmsCommand::Create(c) => {
                let spec = c.spec()?;
                let vm: VmInfo = client.post("/api/v1/vms", &spec).await?;
                if json {
                    outln!("{}", serde_json::to_string(&vm)?)?;
                } else {
                    outln!("created VM {} ({})", vm.id, vm.state.as_str())?;
                }
            }
            VmsCommand::Show { id } => {
                let id = resolve(&client, &id).await?;
                let vm: VmInfo = client
                    .get(&format!("/api/v1/vms/{}", path_segment(&id)))
                    .await?;
                if json {
                    outln!("{}", serde_json::to_string(&vm)?)?;
                } else {
                    output::print(&details(&vm, now_ms()))?;
                }
            }
            VmsCommand::Stop { id } => act(&client, &id, "stop", json).await?,
            VmsCommand::Rm { id } => remove(&client, &id, json).await?,
            VmsCommand::Pause { id } => act(&client, &id, "pause", json).await?,
            VmsCommand::Resume { id } => act(&client, &id, "resume", json).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Stops (DELETE), pauses or resumes a VM and says what state it is in now.
async fn act(client: &ApiClient, given: &str, action: &str, json: bool) -> anyhow::Result<()> {
    let id = resolve(client, given).await?;
    let path = format!("/api/v1/vms/{}", path_segment(&id));
    let vm: VmInfo = match action {
        "stop" => {
            // DELETE of a VM that ended removes it: stop only stops.
            let vm: VmInfo = client.get(&path).await?;
            if !vm.state.is_active() && vm.state != VmState::Suspended {
                bail!(
                    "VM {id} is {} already (`novacron vms rm {id}` removes its record)",
                    vm.state.as_str()
                );
            }
            match client.delete(&path).await? {
                Some(vm) => vm,
                None => bail!("VM {id} ended meanwhile, and its record was removed"),
            }
        }
        _ => {
            client
                .post(&format!("{path}/{action}"), &serde_json::json!({}))
                .await?
        }
    };
    if json {
        outln!("{}", serde_json::to_string(&vm)?)?;
    } else {
        outln!("VM {}: {}", vm.id, vm.state.as_str())?;
    }
    Ok(())
}

/// Removes a VM that ended (DELETE); a VM still here is left alone.
async fn remove(client: &ApiClient, given: &str, json: bool) -> anyhow::Result<()> {
    let id = resolve(client, given).await?;
    let path = format!("/api/v1/vms/{}", path_segment(&id));
    let vm: VmInfo = client.get(&path).await?;
    if vm.state.is_active() || vm.state == VmState::Suspended {
        bail!(
            "VM {id} is {}: stop it first (`novacron vms stop {id}`)",
            vm.state.as_str()
        );
    }
    if let Some(vm) = client.delete::<VmInfo>(&path).await? {
        // It came back meanwhile (migrated in again) and is stopped now, not removed.
        bail!(
            "VM {id} came back meanwhile and is {} now: not removed",
            vm.state.as_str()
        );
    }
    if json {
        println!("{}", serde_json::json!({ "removed": id }));
    } else {
        println!("removed VM {id}");
    }
    Ok(())
}

/// The full id of the VM `given` names (itself or a unique prefix).
pub async fn resolve(client: &ApiClient, given: &str) -> anyhow::Result<String> {
    let vms: Vec<VmInfo> = client.get("/api/v1/vms").await?;
    resolve_id(
        vms.iter().map(|v| v.id.as_str()),
        given,
        "VM",
        "novacron vms",
    )
    .map_err(|e| anyhow!(e))
}

/// What a VM runs, in a few words.
fn what(spec: &VmSpec) -> String {
    if let Some(g) = &spec.guest {
        return g.clone();
    }
    if let Some(k) = &spec.kernel {
        return format!("kernel {k}");
    }
    match &spec.command {
        Some(c) => c.join(" "),
        None => "-".into(),
    }
}

/// One line per VM: short id, name, state, what it runs, size, age, detail.
pub fn table(vms: &[VmInfo], now_ms: u64) -> String {
    if vms.is_empty() {
        return "no VMs (start one: novacron vms create --guest builtin:counter)\n".into();
    }
    let ids: Vec<&str> = vms.iter().map(|v| v.id.as_str()).collect();
    let short = short_ids(&ids, 8);
    let mut t = Table::new(&[
        "ID", "NAME", "STATE", "BACKEND", "RUNS", "MEM", "VCPUS", "CREATED", "DETAIL",
    ])
    .right(&[5, 6]);
    for (vm, id) in vms.iter().zip(short) {
        t.row(vec![
            id,
            vm.spec.name.clone().unwrap_or_else(|| "-".into()),
            vm.state.as_str().into(),
            vm.spec.backend.as_str().into(),
            clip(&what(&vm.spec), 40),
            bytes(vm.spec.mem_mib.saturating_mul(1 << 20)),
            vm.spec.vcpus.to_string(),
            ago(now_ms, vm.created_at_ms),
            clip(vm.detail.as_deref().unwrap_or(""), 60),
        ]);
    }
    t.render()
}

/// Every field of one VM, one per line.
pub fn details(vm: &VmInfo, now_ms: u64) -> String {
    let s = &vm.spec;
    let mut rows: Vec<(&str, String)> = vec![
        ("id", vm.id.clone()),
        ("name", s.name.clone().unwrap_or_else(|| "-".into())),
        ("state", vm.state.as_str().into()),
        ("detail", vm.detail.clone().unwrap_or_else(|| "-".into())),
        ("backend", s.backend.as_str().into()),
        ("runs", what(s)),
        ("memory", bytes(s.mem_mib.saturating_mul(1 << 20))),
        ("vcpus", s.vcpus.to_string()),
        (
            "migration",
            s.migration
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("pid", vm.pid.map_or_else(|| "-".into(), |p| p.to_string())),
        ("created", ago(now_ms, vm.created_at_ms)),
        ("updated", ago(now_ms, vm.updated_at_ms)),
        (
            "snapshot",
            vm.snapshot_at_ms
                .map_or_else(|| "none".into(), |t| ago(now_ms, t)),
        ),
        (
            "last report",
            vm.last_report
                .map_or_else(|| "-".into(), |(c, v)| format!("code {c}, value {v}")),
        ),
        ("adoptions", vm.adoptions.to_string()),
    ];
    if let Some(k) = &s.cmdline {
        rows.insert(6, ("cmdline", k.clone()));
    }
    if let Some(i) = &s.initrd {
        rows.insert(6, ("initrd", i.clone()));
    }
    rows.iter().map(|(k, v)| format!("{k:<12} {v}\n")).collect()
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::VmState;
    use crate::model::fixtures::vm;

    #[test]
    fn the_list_is_an_aligned_table_with_short_ids() {
        let mut b = vm("0123456789abcdef", VmState::Paused);
        b.spec.mem_mib = 1024;
        b.detail = Some("paused by the API".into());
        let text = table(&[vm("fedcba9876543210", VmState::Running), b], 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("ID        NAME  STATE    BACKEND  RUNS"),
            "{text}"
        );
        assert!(
            lines[1].starts_with(
                "fedcba98  demo  running  kvm      builtin:counter   64 MiB      1  1m00s ago"
            ),
            "{text}"
        );
        assert!(
            lines[2].contains("1.0 GiB") && lines[2].ends_with("paused by the API"),
            "{text}"
        );
        assert!(table(&[], 0).contains("novacron vms create"));
    }

    #[test]
    fn details_name_every_field() {
        let text = details(&vm("abc", VmState::Running), 3_000);
        for k in [
            "id ",
            "state ",
            "memory ",
            "migration    live, warm",
            "last report  code 1, value 7",
            "pid          42",
        ] {
            assert!(text.contains(k), "{k:?} not in\n{text}");
        }
    }

    #[test]
    fn create_arguments_become_a_spec_or_say_what_is_missing() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            c: CreateArgs,
        }
        let spec = |args: &[&str]| {
            T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
                .and_then(|t| t.c.spec().map_err(|e| e.to_string()))
        };
        let s = spec(&[
            "--guest",
            "builtin:counter",
            "--mem",
            "128M",
            "--migration",
            "warm,cold,warm",
        ])
        .unwrap();
        assert_eq!(s.mem_mib, 128);
        assert_eq!(s.migration, vec![MigrationMode::Warm, MigrationMode::Cold]);
        let s = spec(&[
            "--backend",
            "process",
            "--mem",
            "1G",
            "--command",
            "/bin/sleep",
            "-x",
            "10",
        ])
        .unwrap();
        assert_eq!(s.command.unwrap(), vec!["/bin/sleep", "-x", "10"]);
        assert_eq!(s.mem_mib, 1024);
        assert!(spec(&[]).unwrap_err().contains("--guest builtin:NAME"));
        assert!(spec(&["--backend", "process"])
            .unwrap_err()
            .contains("--command"));
        assert!(spec(&["--guest", "g", "--mem", "1500K"])
            .unwrap_err()
            .contains("whole number of MiB"));
        assert!(spec(&["--guest", "g", "--vcpus", "0"]).is_err());
    }

    #[test]
    fn long_cells_are_clipped() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
