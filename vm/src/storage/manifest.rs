//! The snapshot manifest: which state file and which layers (in order) make the snapshot,
//! with their blake3 hashes, plus the guest memory layout they were taken from.
//!
//! Binary payload (little endian), stored inside a [`super::checksummed`] frame of kind
//! `MANIFEST`:
//! ```text
//! generation u64
//! region count u16, then (start gpa u64, length u64) per region
//! state entry
//! layer count u16, then one entry per layer, oldest first
//! entry = name length u8, name bytes, blake3 [32], file bytes u64, pages u64
//! ```
//! What this cannot do: it does not check that the files exist; see [`super::snapshot_dir`].

use std::path::Path;

use super::{Result, StorageError};

/// What is wrong with a manifest, read or about to be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{got} memory regions, above the limit of {MAX_REGIONS}")]
    TooManyRegions { got: usize },
    #[error("{got} layers, above the limit of {MAX_CHAIN_LAYERS}")]
    TooManyLayers { got: usize },
    #[error("file name {name:?} has length {}, expected 1..={MAX_NAME_LEN}", name.len())]
    NameLength { name: String },
    #[error("file name {name:?} is not a plain file name")]
    NotPlainName { name: String },
    #[error("{what} file name is not UTF-8")]
    NameNotUtf8 { what: &'static str },
    /// A bad name in the `what` entry (state or layer).
    #[error("{what} {source}")]
    Entry {
        what: &'static str,
        source: Box<ManifestError>,
    },
    #[error("ends at byte {len} while reading {what} ({n} more bytes needed)")]
    Truncated {
        len: usize,
        what: &'static str,
        n: usize,
    },
    #[error("{0} unexpected bytes after the last layer")]
    Trailing(usize),
    #[error("no memory layers")]
    NoLayers,
}

/// Most layers a snapshot chain may hold.
pub const MAX_CHAIN_LAYERS: usize = 64;
/// Most guest memory regions a manifest may describe.
pub const MAX_REGIONS: usize = 64;
/// Longest file name a manifest may reference.
pub const MAX_NAME_LEN: usize = 64;
/// Largest manifest payload accepted; comfortably above the largest valid manifest.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 10;

/// One file referenced by the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// File name inside the snapshot directory (no separators).
    pub name: String,
    /// blake3 of the file's payload (state) or of everything before its trailer (layer).
    pub hash: blake3::Hash,
    /// File size in bytes.
    pub bytes: u64,
    /// Guest pages held (0 for the state file).
    pub pages: u64,
}

/// Decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub generation: u64,
    /// Guest memory regions as (start gpa, length in bytes).
    pub memory: Vec<(u64, u64)>,
    pub state: ManifestEntry,
    /// Oldest (the full layer) first.
    pub layers: Vec<ManifestEntry>,
}

impl Manifest {
    /// Serializes the manifest. Fails if it breaks a limit the decoder enforces.
    pub fn encode(&self) -> std::result::Result<Vec<u8>, ManifestError> {
        self.check_limits()?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(self.memory.len() as u16).to_le_bytes());
        for (start, len) in &self.memory {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        encode_entry(&mut out, &self.state);
        out.extend_from_slice(&(self.layers.len() as u16).to_le_bytes());
        for layer in &self.layers {
            encode_entry(&mut out, layer);
        }
        Ok(out)
    }

    fn check_limits(&self) -> std::result::Result<(), ManifestError> {
        if self.memory.len() > MAX_REGIONS {
            return Err(ManifestError::TooManyRegions {
                got: self.memory.len(),
            });
        }
        if self.layers.len() > MAX_CHAIN_LAYERS {
            return Err(ManifestError::TooManyLayers {
                got: self.layers.len(),
            });
        }
        for e in std::iter::once(&self.state).chain(&self.layers) {
            check_name(&e.name)?;
        }
        Ok(())
    }

    /// Parses and checks a manifest payload read from `path` (for error messages).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest> {
        let invalid = |reason: ManifestError| StorageError::InvalidManifest {
            path: path.to_path_buf(),
            reason,
        };
        let mut c = Cursor { bytes, at: 0 };
        let generation = c.u64("generation").map_err(invalid)?;
        let memory = decode_memory(&mut c).map_err(invalid)?;
        let state = decode_entry(&mut c, "state").map_err(invalid)?;
        let layers = decode_layers(&mut c).map_err(invalid)?;
        if c.at != bytes.len() {
            return Err(invalid(ManifestError::Trailing(bytes.len() - c.at)));
        }
        if layers.is_empty() {
            return Err(invalid(ManifestError::NoLayers));
        }
        Ok(Manifest {
            generation,
            memory,
            state,
            layers,
        })
    }
}

fn encode_entry(out: &mut Vec<u8>, e: &ManifestEntry) {
    out.push(e.name.len() as u8);
    out.extend_from_slice(e.name.as_bytes());
    out.extend_from_slice(e.hash.as_bytes());
    out.extend_from_slice(&e.bytes.to_le_bytes());
    out.extend_from_slice(&e.pages.to_le_bytes());
}

fn decode_memory(c: &mut Cursor<'_>) -> std::result::Result<Vec<(u64, u64)>, ManifestError> {
    let count = usize::from(c.u16("region count")?);
    if count > MAX_REGIONS {
        return Err(ManifestError::TooManyRegions { got: count });
    }
    (0..count)
        .map(|i| {
            let what = if i == 0 { "region" } else { "next region" };
            Ok((c.u64(what)?, c.u64(what)?))
        })
        .collect()
}

fn decode_layers(c: &mut Cursor<'_>) -> std::result::Result<Vec<ManifestEntry>, ManifestError> {
    let count = usize::from(c.u16("layer count")?);
    if count > MAX_CHAIN_LAYERS {
        return Err(ManifestError::TooManyLayers { got: count });
    }
    (0..count).map(|_| decode_entry(c, "layer")).collect()
}

fn decode_entry(
    c: &mut Cursor<'_>,
    what: &'static str,
) -> std::result::Result<ManifestEntry, ManifestError> {
    let name_len = usize::from(c.u8(what)?);
    let name = std::str::from_utf8(c.take(name_len, what)?)
        .map_err(|_| ManifestError::NameNotUtf8 { what })?
        .to_owned();
    check_name(&name).map_err(|e| ManifestError::Entry {
        what,
        source: Box::new(e),
    })?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(c.take(32, what)?);
    Ok(ManifestEntry {
        name,
        hash: blake3::Hash::from_bytes(hash),
        bytes: c.u64(what)?,
        pages: c.u64(what)?,
    })
}

/// Accepts plain file names only: `[A-Za-z0-9._-]`, not starting with a dot, at most
/// [`MAX_NAME_LEN`] bytes. This keeps a hostile manifest from naming files elsewhere.
pub fn check_name(name: &str) -> std::result::Result<(), ManifestError> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ManifestError::NameLength { name: name.into() });
    }
    if name.starts_with('.') || !name.bytes().all(ok_char) {
        return Err(ManifestError::NotPlainName { name: name.into() });
    }
    Ok(())
}

/// Bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> std::result::Result<&'a [u8], ManifestError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(ManifestError::Truncated {
            len: self.bytes.len(),
            what,
            n,
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> std::result::Result<u8, ManifestError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> std::result::Result<u16, ManifestError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self, what: &'static str) -> std::result::Result<u64, ManifestError> {
        let mut v = [0u8; 8];
        v.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, pages: u64) -> ManifestEntry {
        ManifestEntry {
            name: name.into(),
            hash: blake3::hash(name.as_bytes()),
            bytes: 1234 + pages,
            pages,
        }
    }

    fn sample() -> Manifest {
        Manifest {
            generation: 7,
            memory: vec![(0, 1 << 20), (4 << 20, 2 << 20)],
            state: entry("state-7.ncs", 0),
            layers: vec![entry("layer-5.ncl", 100), entry("layer-7.ncl", 3)],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode(Path::new("M"), &bytes).unwrap(), m);
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            let err = Manifest::decode(Path::new("M"), &bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidManifest { .. }),
                "{cut}: {err}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = Manifest::decode(Path::new("M"), &longer).unwrap_err();
        assert!(err.to_string().contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn hostile_names_and_counts_are_rejected() {
        for name in [
            "",
            "../etc/passwd",
            "a/b",
            ".hidden",
            "x y",
            &"n".repeat(65),
        ] {
            let mut m = sample();
            m.layers[0].name = name.to_string();
            assert!(m.encode().is_err(), "{name:?}");
            // Bypass the encoder's check to test the decoder's.
            let mut raw = sample().encode().unwrap();
            let old = sample().layers[0].name.clone();
            let pos = raw
                .windows(old.len())
                .position(|w| w == old.as_bytes())
                .unwrap();
            raw[pos - 1] = name.len() as u8;
            raw.splice(pos..pos + old.len(), name.bytes());
            let err = Manifest::decode(Path::new("M"), &raw).unwrap_err();
            assert!(err.to_string().contains("file name"), "{name:?}: {err}");
        }
        let mut raw = sample().encode().unwrap();
        raw[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        let err = Manifest::decode(Path::new("M"), &raw).unwrap_err();
        assert!(err.to_string().contains("memory regions"), "{err}");
        let mut m = sample();
        m.layers = vec![entry("l", 1); MAX_CHAIN_LAYERS + 1];
        assert!(m.encode().is_err());
        m.layers.clear();
        let err = Manifest::decode(Path::new("M"), &m.encode().unwrap()).unwrap_err();
        assert!(err.to_string().contains("no memory layers"), "{err}");
    }
}
