//! `novacron chunks publish|fetch`: share files with the mesh as content-addressed chunk sets,
//! through the local node (it must be running on `--data-dir`).

use crate::cli::output::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::api::socket::ask;
use crate::api::{Request, Response};

#[derive(Subcommand, Debug)]
pub enum ChunksCommand {
    /// Chunk a file into the node's store and provide it to the mesh; prints the set's id.
    Publish {
        /// The running node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Name recorded in the set's manifest (default: the file name).
        #[arg(long)]
        name: Option<String>,
        file: PathBuf,
    },
    /// Fetch a chunk set from its providers in parallel, verify every chunk, write the file.
    Fetch {
        /// The running node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The set's id (64 hex digits, as `publish` printed it).
        id: String,
        /// Where to write the reassembled file (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print the fetch report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ChunksCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChunksCommand::Publish {
            data_dir,
            name,
            file,
        } => {
            let path = std::path::absolute(&file)?;
            match ask(&data_dir, &Request::PublishFile { path, name })? {
                Response::Published(p) => {
                    eprintln!(
                        "novacron: published {:?}: {} bytes in {} chunks",
                        p.name, p.bytes, p.chunks
                    );
                    outln!("{}", p.id)?;
                }
                other => bail!("{}", unexpected(other)),
            }
        }
        ChunksCommand::Fetch {
            data_dir,
            id,
            out,
            json,
        } => {
            let out = std::path::absolute(&out)?;
            match ask(
                &data_dir,
                &Request::Fetch {
                    id,
                    out: out.clone(),
                },
            )? {
                Response::Fetched(f) if json => outln!("{}", serde_json::to_string(&f)?)?,
                Response::Fetched(f) => {
                    outln!(
                        "fetched {:?} ({} bytes) to {}: {} chunks ({} bytes, {} on the wire) in \
                         {:.2} s = {:.1} MiB/s from {} providers, {} retries",
                        f.name,
                        f.bytes,
                        out.display(),
                        f.chunks_fetched,
                        f.bytes_fetched,
                        f.wire_bytes,
                        f.seconds,
                        f.mib_per_sec,
                        f.providers.len(),
                        f.retries
                    )?;
                    for bad in &f.bad_providers {
                        outln!("provider {bad} sent chunks that did not verify: dropped")?;
                    }
                }
                other => bail!("{}", unexpected(other)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unexpected(r: Response) -> String {
    match r {
        Response::Error(e) => format!("the node answered: {e}"),
        other => format!("the node gave an unexpected answer: {other:?}"),
    }
}
