//! `novacron vm receive`: waits for one migrating VM, runs it in a jailed VMM process and
//! streams its console. It keeps listening afterwards to answer a source that lost the link
//! during switchover and asks whether the VM started here.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use novacron_vm::migration::links;
use novacron_vm::migration::messages::Message;
use novacron_vm::migration::wire::{write_message, FrameReader};
use novacron_vm::process::control::{Event, Launch, LaunchSource, SandboxSettings};
use novacron_vm::process::launcher::VmmProcess;

use super::ended::exit_code;
use super::paths::absolute;
use crate::size::parse_size;

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Address to listen on (host:port; port 0 picks one, printed on stderr).
    #[arg(long)]
    pub listen: String,
    /// Chunk store: chunks it holds are not sent again, and the chunks received are kept
    /// in it, so the same VM received again sends only what changed (created if missing).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Largest guest accepted.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    max_mem: u64,
    /// Most vCPUs accepted.
    #[arg(long, default_value_t = 8)]
    max_vcpus: u8,
    /// Seconds to wait for a VM.
    #[arg(long, default_value_t = 600)]
    wait: u64,
    /// Hash all guest memory before the VM resumes and print it (costs downtime).
    #[arg(long)]
    verify_memory: bool,
    /// Run the VMM without its sandbox (for measuring the sandbox's cost only).
    #[arg(long)]
    no_sandbox: bool,
}

/// Whether the VM started here: None until the VMM said so (or died).
#[derive(Default)]
struct Started {
    state: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Started {
    fn set(&self, started: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none() {
            *s = Some(started);
            self.changed.notify_all();
        }
    }

    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = *s {
                return v;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

pub fn run(args: ReceiveArgs) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let store = args.store.as_deref().map(absolute).transpose()?;
    if let Some(dir) = &store {
        // Opened here first so a broken store is an error before anything listens (the
        // VMM opens it again, and refuses the migration if it broke meanwhile).
        novacron_mesh::chunks::ChunkStore::open(dir, novacron_mesh::chunks::Level::default())
            .with_context(|| format!("--store {}: not a usable chunk store", dir.display()))?;
    }
    eprintln!("novacron: waiting for a VM on {addr}");
    let links = links::accept(&listener, Duration::from_secs(args.wait))
        .with_context(|| format!("no VM arrived on {addr}"))?;
    let session = links.session;
    let started = Arc::new(Started::default());
    answer_queries(listener, session, started.clone());
    let launch = Launch {
        vm_id: novacron_vm::process::launcher::new_vm_id(),
        source: LaunchSource::Incoming {
            session,
            store: store.clone(),
            verify_memory: args.verify_memory,
        },
        mem_bytes: args.max_mem,
        vcpus: args.max_vcpus,
        fill_pattern: None,
        start_paused: false,
        adopt: None,
        result_blob: None,
        sandbox: SandboxSettings {
            enabled: !args.no_sandbox,
            writable_dirs: store.into_iter().collect(),
            ..SandboxSettings::default()
        },
    };
    let exe = std::env::current_exe().context("cannot find the novacron executable")?;
    let mut vmm =
        VmmProcess::spawn_with_streams(&exe, &launch, Stdio::inherit(), &links.into_streams())?;
    loop {
        let event = match vmm.next_event(None) {
            Ok(e) => e,
            Err(e) => {
                started.set(false);
                return Err(e.into());
            }
        };
        match event {
            Event::MigratedIn {
                wire_bytes,
                chunks_received,
                chunks_from_store,
                memory_blake3,
                ..
            } => {
                started.set(true);
                eprintln!(
                    "novacron: VM received ({:.1} MiB on the wire, {chunks_received} chunks \
                     received, {chunks_from_store} from the store) and running",
                    wire_bytes as f64 / (1 << 20) as f64
                );
                if let Some(h) = memory_blake3 {
                    eprintln!("novacron: memory blake3 at switchover (destination): {h}");
                }
            }
            Event::ChunksKept {
                new_chunks,
                held_chunks,
                skipped_chunks,
            } => {
                let skipped = if skipped_chunks > 0 {
                    format!(", {skipped_chunks} not kept (the disk could not keep up)")
                } else {
                    String::new()
                };
                eprintln!(
                    "novacron: kept the chunks received in the chunk store: {new_chunks} new, \
                     {held_chunks} already there{skipped}"
                );
            }
            Event::Exited(reason) => {
                started.set(false);
                let _ = vmm.wait();
                return exit_code(reason);
            }
            _ => {}
        }
    }
}

/// Answers `Query` from a source that lost its link after sending the state.
fn answer_queries(listener: TcpListener, session: [u8; 16], started: Arc<Started>) {
    std::thread::spawn(move || loop {
        let Ok(links) = links::accept(&listener, Duration::from_secs(24 * 3600)) else {
            continue;
        };
        let Ok(stream) = links.control.try_clone() else {
            continue;
        };
        let mut reader = FrameReader::new(stream);
        let _ = links
            .control
            .set_read_timeout(Some(Duration::from_secs(10)));
        match reader.read_message() {
            Ok(Message::Query { vm_id }) if vm_id == session => {
                let answer = Message::Status {
                    started: started.wait(),
                };
                let mut control = links.control;
                let _ = write_message(&mut control, &answer);
            }
            Ok(other) => tracing::warn!(kind = other.kind(), "ignoring a second migration"),
            Err(e) => tracing::warn!(error = %e, "unreadable connection after the migration"),
        }
    });
}
