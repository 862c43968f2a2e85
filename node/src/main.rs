//! `novacron`: the one NovaCron binary (the daemon, the VMM process, the CLI, the
//! benchmarks); all of it lives in the `novacron_node` library, this is its front door.

use clap::Parser;
use novacron_node::cli;

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
