//! `novacron`: the one NovaCron binary. Today: the VM engine's commands, the internal VMM
//! process and the VM benchmark.

mod bench;
mod cli;
mod size;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("novacron: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
