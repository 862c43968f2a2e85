//! Small framed files: a 48-byte header then the payload.
//!
//! Header (little endian): magic `b"NCVM"`, format version `u16`, kind `u16`, payload length
//! `u64`, blake3 of the payload `[u8; 32]`. The header is not itself hashed: each of its
//! fields is checked on its own (magic, version, kind, length against the file length and the
//! caller's limit), so any corrupted byte is still caught.
//!
//! What this cannot do: it reads the whole payload into memory; use it for small files
//! (state, manifest), not for guest memory (see [`super::memory_layer`]).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::atomic::{write_atomically_with, FaultHook, PendingFile, SyncTime};
use super::{Result, StorageError};

/// Magic at the start of every framed file.
pub const MAGIC: [u8; 4] = *b"NCVM";
/// Format version written and accepted.
pub const VERSION: u16 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 48;

/// File kinds (the `kind` field).
pub mod kind {
    /// The integrator's opaque VM state archive.
    pub const STATE: u16 = 1;
    /// The snapshot directory manifest.
    pub const MANIFEST: u16 = 2;
}

/// Atomically writes `payload` framed with a header of the given kind.
pub fn write_checksummed(path: &Path, kind: u16, payload: &[u8]) -> Result<()> {
    write_checksummed_with(path, kind, payload, None).map(|_| ())
}

/// [`write_checksummed`] with a fault hook; returns the blake3 of the payload and fsync time.
pub(crate) fn write_checksummed_with(
    path: &Path,
    kind: u16,
    payload: &[u8],
    hook: Option<FaultHook<'_>>,
) -> Result<(blake3::Hash, SyncTime)> {
    let hash = hash_payload(payload);
    let header = encode_header(kind, payload.len() as u64, &hash);
    let sync = write_atomically_with(path, hook, |w| {
        w.write_all(&header)?;
        w.write_all(payload)
    })?;
    Ok((hash, sync))
}

/// Writes `payload` framed with a header of the given kind into a pending (not yet synced
/// or renamed) file; returns the blake3 of the payload.
pub(crate) fn write_framed_into(
    pending: &mut PendingFile<'_>,
    kind: u16,
    payload: &[u8],
) -> Result<blake3::Hash> {
    let hash = hash_payload(payload);
    let header = encode_header(kind, payload.len() as u64, &hash);
    pending.write(|w| {
        w.write_all(&header)?;
        w.write_all(payload)
    })?;
    Ok(hash)
}

/// Reads and verifies a framed file of the given kind whose payload is at most `max_len`
/// bytes. Nothing is allocated before the length is checked against `max_len` and the file.
pub fn read_checksummed(path: &Path, kind: u16, max_len: u64) -> Result<Vec<u8>> {
    read_checksummed_hashed(path, kind, max_len).map(|(payload, _)| payload)
}

/// [`read_checksummed`] also returning the payload's blake3 hash.
pub(crate) fn read_checksummed_hashed(
    path: &Path,
    kind: u16,
    max_len: u64,
) -> Result<(Vec<u8>, blake3::Hash)> {
    let mut file = File::open(path).map_err(|e| StorageError::io(path, "open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::io(path, "stat", e))?
        .len();
    let header = read_header(&mut file, path, file_len)?;
    let (payload_len, stored) = check_header(&header, path, kind, max_len, file_len)?;
    let payload = read_payload(&mut file, path, payload_len)?;
    let hash = hash_payload(&payload);
    if hash != stored {
        return Err(StorageError::ChecksumMismatch {
            path: path.to_path_buf(),
            detail: "payload does not match the blake3 in the header",
        });
    }
    Ok((payload, hash))
}

fn hash_payload(payload: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    if payload.len() >= 1 << 20 {
        hasher.update_rayon(payload);
    } else {
        hasher.update(payload);
    }
    hasher.finalize()
}

fn encode_header(kind: u16, len: u64, hash: &blake3::Hash) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h[16..48].copy_from_slice(hash.as_bytes());
    h
}

fn read_header(file: &mut File, path: &Path, file_len: u64) -> Result<[u8; HEADER_LEN]> {
    if file_len < HEADER_LEN as u64 {
        return Err(StorageError::Truncated {
            path: path.to_path_buf(),
            expected: HEADER_LEN as u64,
            found: file_len,
        });
    }
    let mut h = [0u8; HEADER_LEN];
    file.read_exact(&mut h)
        .map_err(|e| StorageError::io(path, "read header", e))?;
    Ok(h)
}

/// Validates the header fields; returns the payload length and the stored hash.
fn check_header(
    h: &[u8; HEADER_LEN],
    path: &Path,
    kind: u16,
    max_len: u64,
    file_len: u64,
) -> Result<(u64, blake3::Hash)> {
    let p = || path.to_path_buf();
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(StorageError::BadMagic {
            path: p(),
            expected: MAGIC,
            found: magic,
        });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(StorageError::UnsupportedVersion {
            path: p(),
            found: version,
            supported: VERSION,
        });
    }
    let found_kind = u16::from_le_bytes([h[6], h[7]]);
    if found_kind != kind {
        return Err(StorageError::WrongKind {
            path: p(),
            expected: kind,
            found: found_kind,
        });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&h[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len > max_len {
        return Err(StorageError::TooLarge {
            path: p(),
            what: "payload length",
            value: len,
            limit: max_len,
        });
    }
    let expected_len = (HEADER_LEN as u64).saturating_add(len);
    check_file_len(path, expected_len, file_len)?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[16..48]);
    Ok((len, blake3::Hash::from_bytes(hash)))
}

/// Checks a file's actual length against the length its header implies.
pub(crate) fn check_file_len(path: &Path, expected: u64, found: u64) -> Result<()> {
    if found < expected {
        return Err(StorageError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(StorageError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(())
}

fn read_payload(file: &mut File, path: &Path, len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| StorageError::TooLarge {
        path: path.to_path_buf(),
        what: "payload length",
        value: len,
        limit: usize::MAX as u64,
    })?;
    let mut payload = vec![0u8; len];
    file.read_exact(&mut payload)
        .map_err(|e| StorageError::io(path, "read payload", e))?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(payload: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_checksummed(&path, kind::STATE, payload).unwrap();
        (dir, path)
    }

    #[test]
    fn round_trip() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let (_d, path) = setup(&payload);
        assert_eq!(
            read_checksummed(&path, kind::STATE, 1 << 20).unwrap(),
            payload
        );
        let (_d, path) = setup(b"");
        assert!(read_checksummed(&path, kind::STATE, 0).unwrap().is_empty());
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let payload = b"the quick brown fox".to_vec();
        let (_d, path) = setup(&payload);
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let err = read_checksummed(&path, kind::STATE, 1 << 20).unwrap_err();
            let expected = match i {
                0..=3 => matches!(err, StorageError::BadMagic { .. }),
                4..=5 => matches!(err, StorageError::UnsupportedVersion { .. }),
                6..=7 => matches!(err, StorageError::WrongKind { .. }),
                8 => matches!(err, StorageError::TrailingBytes { .. }),
                9..=10 => matches!(err, StorageError::Truncated { .. }),
                11..=15 => matches!(err, StorageError::TooLarge { .. }),
                _ => matches!(err, StorageError::ChecksumMismatch { .. }),
            };
            assert!(expected, "byte {i}: {err}");
            assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        }
    }

    #[test]
    fn truncation_and_extension_are_errors() {
        let (_d, path) = setup(b"0123456789");
        let good = std::fs::read(&path).unwrap();
        for cut in 0..good.len() {
            std::fs::write(&path, &good[..cut]).unwrap();
            let err = read_checksummed(&path, kind::STATE, 1 << 20).unwrap_err();
            assert!(
                matches!(err, StorageError::Truncated { found, .. } if found == cut as u64),
                "cut {cut}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let err = read_checksummed(&path, kind::STATE, 1 << 20).unwrap_err();
        assert!(matches!(err, StorageError::TrailingBytes { .. }), "{err}");
    }

    #[test]
    fn limits_kind_and_missing_file() {
        let (d, path) = setup(&[7u8; 100]);
        let err = read_checksummed(&path, kind::STATE, 99).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::TooLarge {
                    value: 100,
                    limit: 99,
                    ..
                }
            ),
            "{err}"
        );
        let err = read_checksummed(&path, kind::MANIFEST, 1000).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::WrongKind {
                    expected: 2,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );
        let err = read_checksummed(&d.path().join("nope"), kind::STATE, 10).unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        let (_d, path) = setup(b"abc");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = read_checksummed(&path, kind::STATE, u64::MAX).unwrap_err();
        assert!(matches!(err, StorageError::Truncated { .. }), "{err}");
    }
}
