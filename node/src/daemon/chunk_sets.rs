//! Chunk sets on a running node: publishing a file from the local disk and fetching a set
//! from the mesh into a file. The chunks live in `<data_dir>/chunks` (the store migration
//! uses too); the mesh part is [`ChunkExchange`].
//!
//! What this cannot do: files are read whole into memory (sets up to [`MAX_FILE_BYTES`]);
//! published sets are forgotten when the node stops (it still holds their chunks, but
//! must publish them again to serve them).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use novacron_mesh::chunks::ChunkStore;
use novacron_mesh::swarm::{ChunkExchange, MeshNode};
use novacron_mesh::transfer::ChunkSetManifest;

use crate::api::{Fetched, Published};
use crate::vms::payload::{FetchFuture, PayloadSource};
use novacron_mesh::util::hex;

/// Largest file published in one go.
pub const MAX_FILE_BYTES: u64 = 4 << 30;

pub async fn publish(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    path: &Path,
    name: Option<String>,
) -> anyhow::Result<Published> {
    put_file(mesh, exchange, path, name, true).await
}

/// [`publish`] without the DHT announcement: peers are told where to fetch it.
pub async fn serve(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    path: &Path,
    name: Option<String>,
) -> anyhow::Result<Published> {
    put_file(mesh, exchange, path, name, false).await
}

async fn put_file(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    path: &Path,
    name: Option<String>,
    announce: bool,
) -> anyhow::Result<Published> {
    let name = match name {
        Some(n) => n,
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into()),
    };
    let file = path.to_path_buf();
    let data = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let len = std::fs::metadata(&file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        if len > MAX_FILE_BYTES {
            bail!(
                "{} is {len} bytes, over the {MAX_FILE_BYTES}-byte limit",
                file.display()
            );
        }
        std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))
    })
    .await??;
    put_bytes(mesh, exchange, data, name, announce).await
}

/// [`publish`] of bytes already in memory, named `name`.
pub async fn publish_bytes(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    data: Vec<u8>,
    name: String,
) -> anyhow::Result<Published> {
    put_bytes(mesh, exchange, data, name, true).await
}

/// [`publish_bytes`] without the DHT announcement: peers are told where to fetch it.
pub async fn serve_bytes(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    data: Vec<u8>,
    name: String,
) -> anyhow::Result<Published> {
    put_bytes(mesh, exchange, data, name, false).await
}

async fn put_bytes(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    data: Vec<u8>,
    name: String,
    announce: bool,
) -> anyhow::Result<Published> {
    let store = exchange.store().clone();
    let set_name = name.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        ChunkSetManifest::from_store_data(&set_name, &data, &store)
    })
    .await??;
    let id = match announce {
        true => exchange.publish(mesh, &manifest).await?,
        false => exchange.serve(&manifest).await?,
    };
    Ok(Published {
        id: hex::encode(&id),
        name,
        bytes: manifest.total_len(),
        chunks: manifest.chunks().len(),
    })
}

pub async fn fetch(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    id: &str,
    out: &Path,
) -> anyhow::Result<Fetched> {
    fetch_from(mesh, exchange, id, &[], out).await
}

/// [`fetch`] from `providers` (known from elsewhere: no DHT lookup), or from the set's
/// providers in the DHT when `providers` is empty.
pub async fn fetch_from(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    id: &str,
    providers: &[novacron_mesh::swarm::PeerId],
    out: &Path,
) -> anyhow::Result<Fetched> {
    let set = parse_id(id)?;
    let report = match providers {
        [] => exchange.fetch(mesh, set).await?,
        some => exchange.fetch_from(mesh, set, some).await?,
    };
    let manifest = exchange
        .manifest(&set)
        .with_context(|| format!("chunk set {id} was fetched but its manifest is not held"))?;
    let store = exchange.store().clone();
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || write_set(&manifest, &store, &out)).await??;
    Ok(Fetched {
        id: id.to_string(),
        name: report.name.clone(),
        bytes: report.total_len,
        chunks_fetched: report.chunks,
        bytes_fetched: report.bytes,
        wire_bytes: report.wire_bytes,
        seconds: report.seconds,
        mib_per_sec: report.mib_per_sec,
        providers: report
            .providers
            .iter()
            .map(|(p, s)| (p.to_string(), s.chunks))
            .collect(),
        retries: report.retries,
        bad_providers: report.bad_providers.iter().map(|p| p.to_string()).collect(),
    })
}

/// Chunk set `id`'s manifest, the set held in the local store (at most `max` bytes): from
/// the exchange when this node serves it already (it published or fetched it), else
/// fetched from `providers` (from its providers in the DHT when empty), a set over `max`
/// refused by its manifest before any chunk is.
async fn held_up_to(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    id: &str,
    providers: &[novacron_mesh::swarm::PeerId],
    max: u64,
) -> anyhow::Result<ChunkSetManifest> {
    let set = parse_id(id)?;
    let manifest = match exchange.manifest(&set) {
        Some(m) => m,
        None => {
            match providers {
                [] => exchange.fetch_up_to(mesh, set, max).await?,
                some => exchange.fetch_from_up_to(mesh, set, some, max).await?,
            };
            exchange.manifest(&set).with_context(|| {
                format!("chunk set {id} was fetched but its manifest is not held")
            })?
        }
    };
    if manifest.total_len() > max {
        bail!(
            "chunk set {id} is {} bytes, over the {max}-byte limit",
            manifest.total_len()
        );
    }
    Ok(manifest)
}

/// Chunk set `id` (hex) as bytes, at most `max` of them ([`held_up_to`]).
pub async fn fetch_bytes(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    id: &str,
    max: u64,
) -> anyhow::Result<Vec<u8>> {
    fetch_bytes_from(mesh, exchange, id, &[], max).await
}

/// [`fetch_bytes`] from `providers` known from elsewhere (no DHT lookup).
pub async fn fetch_bytes_from(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    id: &str,
    providers: &[novacron_mesh::swarm::PeerId],
    max: u64,
) -> anyhow::Result<Vec<u8>> {
    let manifest = held_up_to(mesh, exchange, id, providers, max).await?;
    let store = exchange.store().clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(manifest.total_len() as usize);
        manifest.reassemble_to(&store, &mut out)?;
        Ok(out)
    })
    .await?
}

/// Reassembles the set into `out` through a temp file renamed into place, so `out` never
/// holds half a set.
fn write_set(
    manifest: &ChunkSetManifest,
    store: &Arc<ChunkStore>,
    out: &Path,
) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        manifest.reassemble_to(store, &mut w)?;
        w.flush()
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot sync {}", out.display()))?;
    tmp.persist(out)
        .with_context(|| format!("cannot move the fetched set to {}", out.display()))?;
    Ok(())
}

/// Writes chunk set `id` (at most `max` bytes) to `out` ([`held_up_to`]).
pub async fn write_up_to(
    mesh: &MeshNode,
    exchange: &ChunkExchange,
    id: &str,
    out: &Path,
    max: u64,
) -> anyhow::Result<()> {
    let manifest = held_up_to(mesh, exchange, id, &[], max).await?;
    let store = exchange.store().clone();
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || write_set(&manifest, &store, &out)).await?
}

/// The VM manager's [`PayloadSource`]: the daemon's chunk exchange. It holds the daemon
/// weakly (the daemon holds the manager).
pub struct MeshPayloads(pub std::sync::Weak<super::Daemon>);

impl PayloadSource for MeshPayloads {
    fn fetch(&self, set: &str, out: &Path, max: u64) -> FetchFuture {
        let daemon = self.0.upgrade();
        let (set, out) = (set.to_string(), out.to_path_buf());
        Box::pin(async move {
            let daemon = daemon.ok_or("the node is stopping")?;
            write_up_to(&daemon.mesh, &daemon.exchange, &set, &out, max)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

pub fn parse_id(id: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(id)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .with_context(|| format!("chunk set id {id:?} is not 64 hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_hex_and_bad_ones_are_named() {
        let id = [0xab; 32];
        assert_eq!(parse_id(&hex::encode(&id)).unwrap(), id);
        for bad in ["abc", &"zz".repeat(32), &"é".repeat(32)] {
            let err = parse_id(bad).unwrap_err().to_string();
            assert!(err.contains("chunk set id"), "{err}");
        }
    }
}
