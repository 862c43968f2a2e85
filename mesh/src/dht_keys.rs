//! The keys NovaCron puts in its DHT, and the only ones a node stores for others.
//!
//! A node keeps provider records and values only under keys it can parse here, so the DHT
//! cannot be used as free storage for arbitrary data. Keys are short byte strings:
//!
//! - `/novacron/cell/<bits>/<prefix hex>` — providers are the cell's members (how a joining
//!   node finds its cell), values are signed cell summaries;
//! - `/novacron/chunkset/<64 hex>` — providers hold every chunk of that chunk set (its id is
//!   the blake3 hash of its manifest);
//! - `/novacron/job/<64 hex>` — providers are the nodes that know the job (the node it was
//!   submitted through, the nodes running its replicas): where `novacron job show` asks.
//!
//! Pure: no IO; the simulator and fuzzers use it as the node does.

use std::fmt;

use crate::cells::CellId;
use crate::util::hex::lower_value;

/// Longest key accepted from the network.
pub const MAX_DHT_KEY_BYTES: usize = 96;

const CELL_PREFIX: &str = "/novacron/cell/";
const CHUNK_SET_PREFIX: &str = "/novacron/chunkset/";
const JOB_PREFIX: &str = "/novacron/job/";

/// A key of the NovaCron DHT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhtKey {
    /// A cell: its members provide it, its representatives store its summary under it.
    Cell(CellId),
    /// A chunk set, by the blake3 hash of its manifest.
    ChunkSet([u8; 32]),
    /// A job, by its id (blake3 of its signed submission).
    Job([u8; 32]),
}

/// Why bytes are not a NovaCron DHT key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtKeyError {
    #[error("DHT key of {len} bytes is over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("DHT key is not UTF-8")]
    NotText,
    #[error("DHT key {0:?} is not in a NovaCron namespace (/novacron/cell/, /novacron/chunkset/, /novacron/job/)")]
    UnknownNamespace(String),
    #[error("DHT key {key:?}: {reason}")]
    Malformed { key: String, reason: &'static str },
}

impl DhtKey {
    /// The key's bytes as stored in the DHT.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses a key received from the network.
    pub fn parse(bytes: &[u8]) -> Result<DhtKey, DhtKeyError> {
        if bytes.len() > MAX_DHT_KEY_BYTES {
            return Err(DhtKeyError::TooLong {
                len: bytes.len(),
                max: MAX_DHT_KEY_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| DhtKeyError::NotText)?;
        if let Some(rest) = text.strip_prefix(CELL_PREFIX) {
            return parse_cell(text, rest).map(DhtKey::Cell);
        }
        if let Some(rest) = text.strip_prefix(CHUNK_SET_PREFIX) {
            return parse_hash(text, rest).map(DhtKey::ChunkSet);
        }
        if let Some(rest) = text.strip_prefix(JOB_PREFIX) {
            return parse_hash(text, rest).map(DhtKey::Job);
        }
        Err(DhtKeyError::UnknownNamespace(text.to_string()))
    }
}

impl fmt::Display for DhtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DhtKey::Cell(cell) => {
                write!(f, "{CELL_PREFIX}{}/{:x}", cell.prefix_bits(), cell.prefix())
            }
            DhtKey::ChunkSet(id) => {
                f.write_str(CHUNK_SET_PREFIX)?;
                crate::util::hex::write(f, id)
            }
            DhtKey::Job(id) => {
                f.write_str(JOB_PREFIX)?;
                crate::util::hex::write(f, id)
            }
        }
    }
}

fn malformed(key: &str, reason: &'static str) -> DhtKeyError {
    DhtKeyError::Malformed {
        key: key.to_string(),
        reason,
    }
}

/// `<bits>/<prefix hex>`, canonical (no leading zeros, lower case), as `Display` writes it.
fn parse_cell(key: &str, rest: &str) -> Result<CellId, DhtKeyError> {
    let (bits, prefix) = rest
        .split_once('/')
        .ok_or_else(|| malformed(key, "a cell key is /novacron/cell/<bits>/<prefix hex>"))?;
    let bits: u8 = bits
        .parse()
        .map_err(|_| malformed(key, "the prefix length is not a small decimal number"))?;
    let prefix = u32::from_str_radix(prefix, 16)
        .map_err(|_| malformed(key, "the prefix is not a 32-bit hex number"))?;
    let cell = CellId::new(bits, prefix)
        .map_err(|_| malformed(key, "the prefix does not fit its length (at most 32 bits)"))?;
    if DhtKey::Cell(cell).to_string() != key {
        return Err(malformed(key, "not in canonical form"));
    }
    Ok(cell)
}

/// 64 lower-case hex digits.
fn parse_hash(key: &str, hex: &str) -> Result<[u8; 32], DhtKeyError> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return Err(malformed(key, "an id is 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = lower_value(pair[0]).ok_or_else(|| malformed(key, "not lower-case hex"))?;
        let lo = lower_value(pair[1]).ok_or_else(|| malformed(key, "not lower-case hex"))?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for key in [
            DhtKey::Cell(CellId::new(0, 0).unwrap()),
            DhtKey::Cell(CellId::new(8, 0xab).unwrap()),
            DhtKey::Cell(CellId::new(32, u32::MAX).unwrap()),
            DhtKey::ChunkSet([0x5a; 32]),
            DhtKey::Job([0xa5; 32]),
        ] {
            assert_eq!(DhtKey::parse(&key.to_bytes()), Ok(key), "{key}");
        }
        assert_eq!(
            DhtKey::Cell(CellId::new(8, 0xab).unwrap()).to_string(),
            "/novacron/cell/8/ab"
        );
    }

    #[test]
    fn foreign_and_malformed_keys_are_refused_with_the_reason() {
        let too_long = vec![b'a'; MAX_DHT_KEY_BYTES + 1];
        assert!(matches!(
            DhtKey::parse(&too_long),
            Err(DhtKeyError::TooLong { len: 97, max: 96 })
        ));
        assert_eq!(DhtKey::parse(&[0xff, 0xfe]), Err(DhtKeyError::NotText));
        assert!(matches!(
            DhtKey::parse(b"/ipfs/whatever"),
            Err(DhtKeyError::UnknownNamespace(_))
        ));
        for bad in [
            "/novacron/cell/8",
            "/novacron/cell/x/ab",
            "/novacron/cell/8/zz",
            "/novacron/cell/4/ab",
            "/novacron/cell/33/0",
            "/novacron/cell/8/0ab",
            "/novacron/cell/8/AB",
            "/novacron/chunkset/abc",
            "/novacron/job/abc",
            "/novacron/chunkset/ZZ5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        ] {
            let err = DhtKey::parse(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, DhtKeyError::Malformed { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
