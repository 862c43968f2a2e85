//! [`ChunkSetManifest`]: what a chunk set (a snapshot, an image) is made of, and its id.
//!
//! A manifest names the set (at most [`MAX_NAME_BYTES`] bytes of UTF-8), its total length,
//! its chunk size, and its non-zero chunks in order as `(index, ChunkId, raw length)`. All-zero
//! chunks are elided: an index missing from the list is a chunk of zeros, never stored or
//! sent. Each listed length must be the length the chunk has at its index (the chunk size,
//! or what is left for the last chunk), so a manifest cannot make a reader allocate or write
//! outside the set's total length.
//!
//! Wire form: one rkyv archive, at most [`MAX_MANIFEST_BYTES`] (4 MiB, which holds up to
//! [`MAX_MANIFEST_CHUNKS`] = 100,000 non-zero chunks: 1.5 GiB of data at 16 KiB chunks,
//! 6 GiB at 64 KiB). The set's id is blake3 of exactly those bytes, so a manifest received
//! from anybody is checked against the id before it is even decoded. Decoding validates the
//! archive (bytecheck) and then every limit above.
//!
//! What this cannot do: a set larger than the limits needs several manifests (nothing here
//! links them); [`ChunkSetManifest::reassemble`] holds the whole set in memory (use
//! [`ChunkSetManifest::reassemble_to`] for large ones).

use std::io::Write;

use rkyv::{Archive, Deserialize, Serialize};

use crate::chunks::{chunk_refs, ChunkId, ChunkSize, ChunkStore, StoreError};

/// Longest set name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most non-zero chunks one manifest lists.
pub const MAX_MANIFEST_CHUNKS: usize = 100_000;
/// Largest manifest archive accepted or produced.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest total length a manifest may claim (1 TiB; zero chunks cost nothing to list).
pub const MAX_TOTAL_LEN: u64 = 1 << 40;

/// Chunks put into the store per batch commit while a manifest is built.
const STORE_BATCH: usize = 256;

/// One non-zero chunk of a set.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ManifestChunk {
    /// Position in the set, in chunks.
    pub index: u32,
    /// blake3 of the chunk's raw bytes.
    pub id: [u8; 32],
    /// Raw length: the chunk size, or less for the last chunk.
    pub len: u32,
}

impl ManifestChunk {
    pub fn chunk_id(&self) -> ChunkId {
        ChunkId::from_bytes(self.id)
    }
}

/// What a chunk set is made of. Built with [`ChunkSetManifest::new`] or
/// [`ChunkSetManifest::from_store_data`], both of which check every limit.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkSetManifest {
    name: String,
    total_len: u64,
    chunk_size: u32,
    chunks: Vec<ManifestChunk>,
}

/// What is wrong with a manifest, or why one could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: name of {len} bytes is over the {MAX_NAME_BYTES}-byte limit")]
    NameTooLong { len: usize },
    #[error("manifest: chunk size {0} is not 4096, 16384 or 65536")]
    ChunkSize(u32),
    #[error("manifest: total length {len} is over the {MAX_TOTAL_LEN}-byte limit")]
    TooLong { len: u64 },
    #[error("manifest: {count} non-zero chunks, over the {MAX_MANIFEST_CHUNKS}-chunk limit")]
    TooManyChunks { count: usize },
    #[error("manifest: chunk index {index} is not after the previous one or past the end ({count} chunks)")]
    BadIndex { index: u32, count: u64 },
    #[error(
        "manifest: chunk {index} is listed as {got} bytes, its place in the set holds {expected}"
    )]
    BadLength { index: u32, got: u32, expected: u32 },
    #[error("manifest: archive of {len} bytes is over the {MAX_MANIFEST_BYTES}-byte limit")]
    ArchiveTooLarge { len: usize },
    #[error("manifest: malformed archive of {len} bytes: {reason}")]
    Malformed { len: usize, reason: String },
    #[error("manifest: cannot encode: {0}")]
    Encode(String),
    #[error("manifest: bytes hash to {got}, not to the chunk set id {expected}")]
    WrongId { expected: String, got: String },
    #[error("manifest {name:?}: {source}")]
    Store {
        name: String,
        source: Box<StoreError>,
    },
    #[error("manifest {name:?}: chunk {index} ({id}) decodes to {got} bytes, expected {expected}")]
    StoredLength {
        name: String,
        index: u32,
        id: ChunkId,
        got: usize,
        expected: u32,
    },
    #[error("manifest {name:?}: cannot write the reassembled set: {source}")]
    Write {
        name: String,
        source: std::io::Error,
    },
}

impl ChunkSetManifest {
    /// A manifest from its parts, checked against every limit.
    pub fn new(
        name: &str,
        total_len: u64,
        chunk_size: ChunkSize,
        chunks: Vec<ManifestChunk>,
    ) -> Result<Self, ManifestError> {
        let manifest = ChunkSetManifest {
            name: name.to_string(),
            total_len,
            chunk_size: chunk_size.bytes() as u32,
            chunks,
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Cuts `data` into chunks of the default size (16 KiB), stores the non-zero ones in
    /// `store` (durably) and returns the set's manifest.
    pub fn from_store_data(
        name: &str,
        data: &[u8],
        store: &ChunkStore,
    ) -> Result<Self, ManifestError> {
        Self::from_store_data_sized(name, data, ChunkSize::default(), store)
    }

    /// [`from_store_data`](Self::from_store_data) with a chosen chunk size.
    pub fn from_store_data_sized(
        name: &str,
        data: &[u8],
        size: ChunkSize,
        store: &ChunkStore,
    ) -> Result<Self, ManifestError> {
        if name.len() > MAX_NAME_BYTES {
            return Err(ManifestError::NameTooLong { len: name.len() });
        }
        let refs = chunk_refs(data, size);
        let mut chunks = Vec::new();
        let non_zero: Vec<_> = refs.iter().filter(|r| !r.is_zero()).collect();
        if non_zero.len() > MAX_MANIFEST_CHUNKS {
            return Err(ManifestError::TooManyChunks {
                count: non_zero.len(),
            });
        }
        let store_err = |source| ManifestError::Store {
            name: name.to_string(),
            source: Box::new(source),
        };
        for group in non_zero.chunks(STORE_BATCH) {
            let mut batch = store.batch();
            for r in group {
                let start = r.offset(size) as usize;
                let raw = &data[start..start + r.len as usize];
                let id = batch.put(raw).map_err(store_err)?;
                chunks.push(ManifestChunk {
                    index: u32::try_from(r.index).map_err(|_| ManifestError::TooLong {
                        len: data.len() as u64,
                    })?,
                    id: *id.as_bytes(),
                    len: r.len,
                });
            }
            batch.commit().map_err(store_err)?;
        }
        Self::new(name, data.len() as u64, size, chunks)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The non-zero chunks, in order.
    pub fn chunks(&self) -> &[ManifestChunk] {
        &self.chunks
    }

    /// Raw bytes of the non-zero chunks.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Number of chunks the set is cut into, zero chunks included.
    pub fn chunk_count(&self) -> u64 {
        self.total_len.div_ceil(u64::from(self.chunk_size.max(1)))
    }

    /// The raw length of the chunk at `index` (the last one may be short).
    fn len_at(&self, index: u32) -> u32 {
        let start = u64::from(index) * u64::from(self.chunk_size);
        // Callers check index < chunk_count, so start < total_len.
        (self.total_len - start).min(u64::from(self.chunk_size)) as u32
    }

    /// Checks every limit and that the chunk list fits the set.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.name.len() > MAX_NAME_BYTES {
            return Err(ManifestError::NameTooLong {
                len: self.name.len(),
            });
        }
        if ChunkSize::new(u64::from(self.chunk_size)).is_err() {
            return Err(ManifestError::ChunkSize(self.chunk_size));
        }
        if self.total_len > MAX_TOTAL_LEN {
            return Err(ManifestError::TooLong {
                len: self.total_len,
            });
        }
        if self.chunks.len() > MAX_MANIFEST_CHUNKS {
            return Err(ManifestError::TooManyChunks {
                count: self.chunks.len(),
            });
        }
        let count = self.chunk_count();
        let mut next = 0u64;
        for c in &self.chunks {
            if u64::from(c.index) < next || u64::from(c.index) >= count {
                return Err(ManifestError::BadIndex {
                    index: c.index,
                    count,
                });
            }
            next = u64::from(c.index) + 1;
            let expected = self.len_at(c.index);
            if c.len != expected {
                return Err(ManifestError::BadLength {
                    index: c.index,
                    got: c.len,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// The archive sent on the wire (its blake3 is the set's id).
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| ManifestError::Encode(e.to_string()))?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::ArchiveTooLarge { len: bytes.len() });
        }
        Ok(bytes.to_vec())
    }

    /// The set's id: blake3 of [`encode`](Self::encode)'s bytes.
    pub fn id(&self) -> Result<[u8; 32], ManifestError> {
        Ok(manifest_id(&self.encode()?))
    }

    /// Decodes an archive from outside: size limit, bytecheck, then [`check`](Self::check).
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::ArchiveTooLarge { len: bytes.len() });
        }
        // rkyv reads in place and needs alignment; bytes off a socket have none.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let manifest = rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned).map_err(|e| {
            ManifestError::Malformed {
                len: bytes.len(),
                reason: e.to_string(),
            }
        })?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Decodes bytes received for chunk set `id`: they must hash to it first.
    pub fn decode_for(id: &[u8; 32], bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::ArchiveTooLarge { len: bytes.len() });
        }
        let got = manifest_id(bytes);
        if got != *id {
            return Err(ManifestError::WrongId {
                expected: hex(id),
                got: hex(&got),
            });
        }
        Self::decode(bytes)
    }

    /// Rebuilds the set's bytes from `store` (every chunk verified as it is read). Holds
    /// the whole set in memory.
    pub fn reassemble(&self, store: &ChunkStore) -> Result<Vec<u8>, ManifestError> {
        let mut out = Vec::with_capacity(self.total_len as usize);
        self.reassemble_to(store, &mut out)?;
        Ok(out)
    }

    /// Writes the set's bytes to `out` in order, zero chunks as zeros.
    pub fn reassemble_to(
        &self,
        store: &ChunkStore,
        out: &mut impl Write,
    ) -> Result<(), ManifestError> {
        let write_err = |source| ManifestError::Write {
            name: self.name.clone(),
            source,
        };
        let zeros = vec![0u8; self.chunk_size as usize];
        let mut listed = self.chunks.iter().peekable();
        for index in 0..self.chunk_count() {
            let index = index as u32;
            let expected = self.len_at(index);
            match listed.next_if(|c| c.index == index) {
                Some(c) => {
                    let id = c.chunk_id();
                    let raw = store.get(&id).map_err(|source| ManifestError::Store {
                        name: self.name.clone(),
                        source: Box::new(source),
                    })?;
                    if raw.len() != expected as usize {
                        return Err(ManifestError::StoredLength {
                            name: self.name.clone(),
                            index,
                            id,
                            got: raw.len(),
                            expected,
                        });
                    }
                    out.write_all(&raw).map_err(write_err)?;
                }
                None => out
                    .write_all(&zeros[..expected as usize])
                    .map_err(write_err)?,
            }
        }
        Ok(())
    }
}

/// The id of a chunk set whose manifest archive is `bytes`.
pub fn manifest_id(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Lower-case hex of a 32-byte id.
pub fn hex(id: &[u8; 32]) -> String {
    crate::util::hex::encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::Level;
    use crate::workload;

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), Level::default()).unwrap();
        (dir, store)
    }

    /// Pattern with a run of zero chunks and a short last chunk.
    fn data() -> Vec<u8> {
        let mut d = workload::pattern(10 * 16384 + 1000);
        d[2 * 16384..5 * 16384].fill(0);
        d
    }

    #[test]
    fn build_encode_decode_reassemble() {
        let (_dir, store) = store();
        let d = data();
        let m = ChunkSetManifest::from_store_data("disk.img", &d, &store).unwrap();
        assert_eq!(m.chunk_count(), 11);
        assert_eq!(m.chunks().len(), 8, "3 zero chunks elided");
        assert_eq!(m.chunks().last().unwrap().len, 1000);
        assert_eq!(store.stats().chunks, 8);
        let bytes = m.encode().unwrap();
        let id = m.id().unwrap();
        assert_eq!(id, *blake3::hash(&bytes).as_bytes());
        let back = ChunkSetManifest::decode_for(&id, &bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.reassemble(&store).unwrap(), d);
        assert_eq!(m.stored_bytes(), 7 * 16384 + 1000);
    }

    #[test]
    fn wrong_id_and_garbage_are_refused() {
        let (_dir, store) = store();
        let m = ChunkSetManifest::from_store_data("x", &data(), &store).unwrap();
        let bytes = m.encode().unwrap();
        let err = ChunkSetManifest::decode_for(&[7; 32], &bytes).unwrap_err();
        assert!(matches!(err, ManifestError::WrongId { .. }), "{err}");
        for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                ChunkSetManifest::decode(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let noise = workload::random(4096, 5);
        assert!(ChunkSetManifest::decode(&noise).is_err());
        let huge = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            ChunkSetManifest::decode(&huge),
            Err(ManifestError::ArchiveTooLarge { .. })
        ));
    }

    /// Archives a manifest built without checks, as a hostile peer would.
    fn raw_archive(m: &ChunkSetManifest) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(m).unwrap().to_vec()
    }

    #[test]
    fn limits_are_checked_on_decode() {
        let entry = |index, len| ManifestChunk {
            index,
            id: [1; 32],
            len,
        };
        let base = ChunkSetManifest {
            name: "ok".into(),
            total_len: 3 * 4096 + 10,
            chunk_size: 4096,
            chunks: vec![entry(0, 4096), entry(3, 10)],
        };
        assert!(ChunkSetManifest::decode(&raw_archive(&base)).is_ok());
        let bad = [
            ChunkSetManifest {
                name: "n".repeat(MAX_NAME_BYTES + 1),
                ..base.clone()
            },
            ChunkSetManifest {
                chunk_size: 8192,
                ..base.clone()
            },
            ChunkSetManifest {
                total_len: MAX_TOTAL_LEN + 1,
                ..base.clone()
            },
            ChunkSetManifest {
                chunks: vec![entry(1, 4096), entry(0, 4096)],
                ..base.clone()
            },
            ChunkSetManifest {
                chunks: vec![entry(1, 4096), entry(1, 4096)],
                ..base.clone()
            },
            ChunkSetManifest {
                chunks: vec![entry(4, 4096)],
                ..base.clone()
            },
            ChunkSetManifest {
                chunks: vec![entry(3, 4096)],
                ..base.clone()
            },
            ChunkSetManifest {
                chunks: vec![entry(0, 65536)],
                ..base.clone()
            },
        ];
        for m in bad {
            let err = ChunkSetManifest::decode(&raw_archive(&m)).unwrap_err();
            assert!(!err.to_string().is_empty());
            assert!(m.check().is_err());
        }
        let many = ChunkSetManifest {
            name: String::new(),
            total_len: (MAX_MANIFEST_CHUNKS as u64 + 1) * 4096,
            chunk_size: 4096,
            chunks: (0..=MAX_MANIFEST_CHUNKS as u32)
                .map(|i| entry(i, 4096))
                .collect(),
        };
        assert!(matches!(
            many.check(),
            Err(ManifestError::TooManyChunks { .. })
        ));
    }

    #[test]
    fn the_largest_manifest_fits_the_archive_limit() {
        let n = MAX_MANIFEST_CHUNKS as u32;
        let m = ChunkSetManifest::new(
            &"n".repeat(MAX_NAME_BYTES),
            u64::from(n) * 65536,
            ChunkSize::K64,
            (0..n)
                .map(|index| ManifestChunk {
                    index,
                    id: [9; 32],
                    len: 65536,
                })
                .collect(),
        )
        .unwrap();
        let bytes = m.encode().unwrap();
        assert!(bytes.len() <= MAX_MANIFEST_BYTES, "{}", bytes.len());
        assert_eq!(ChunkSetManifest::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn a_missing_or_tampered_chunk_fails_reassembly() {
        let (_dir, store) = store();
        let m = ChunkSetManifest::from_store_data("x", &data(), &store).unwrap();
        let victim = m.chunks()[1].chunk_id();
        store.remove(&victim).unwrap();
        let err = m.reassemble(&store).unwrap_err();
        assert!(err.to_string().contains(&victim.to_string()), "{err}");
    }

    #[test]
    fn empty_set() {
        let (_dir, store) = store();
        let m = ChunkSetManifest::from_store_data("empty", &[], &store).unwrap();
        assert_eq!(m.chunk_count(), 0);
        assert!(m.reassemble(&store).unwrap().is_empty());
        let bytes = m.encode().unwrap();
        assert_eq!(ChunkSetManifest::decode(&bytes).unwrap(), m);
    }
}
