//! `novacron`: the one NovaCron binary. Today: the VM engine's commands, the internal VMM
//! process, a minimal mesh node (`novacron node`) and the benchmarks.

mod api;
mod bench;
mod cli;
mod config;
mod daemon;
mod hex;
mod install;
mod local_mesh;
mod mesh_migration;
mod metrics;
mod politeness;
mod size;
mod state;
mod vms;
mod yaml_keys;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    if !args.configures_logging() {
        cli::init_logging("warn");
    }
    match cli::run(args) {
        Ok(code) => code,
        // Its reader went away (`| head`): the command stopped cleanly, nothing to say.
        Err(e) if cli::output::is_stdout_closed(&e) => {
            std::process::ExitCode::from(cli::output::STDOUT_CLOSED_EXIT)
        }
        Err(e) => {
            cli::output::note(&format!("novacron: error: {}", error_text(&e)));
            std::process::ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, skipping causes whose text an outer message
/// already quotes (library errors often include their source in their own message).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}
