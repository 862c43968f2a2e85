//! The result port: how a guest hands the host a result blob. The guest reports where the
//! blob lies in its memory on the paravirtual port — [`pv_event::RESULT_BLOB_ADDR`] (the
//! guest-physical address), then [`pv_event::RESULT_BLOB_LEN`] (its length, which hands it
//! over) — and the VMM copies that range out of guest memory into the file its launch
//! names (`Launch.result_blob`), through a temp file, fsync and rename, so the file is
//! always one whole blob. A later blob replaces it.
//!
//! Nothing the guest says is trusted: a length over [`MAX_RESULT_BLOB_BYTES`], a range
//! outside guest memory, a length with no address before it, or a blob from a VM launched
//! without a result file is refused with a [`ResultPortError`] naming it (the VMM logs it
//! and the guest runs on; its owner finds no blob).
//!
//! What this cannot do: the blob is written when the guest hands it over, not when a
//! checkpoint is taken, so a replica restored from a checkpoint taken after the hand-over
//! (and before the guest ended) has no blob on its new node.

use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress};

use crate::machine::layout::pv_event;
use crate::machine::memory::GuestMem;

/// Largest blob a guest may hand over.
pub const MAX_RESULT_BLOB_BYTES: u64 = 64 << 20;

/// Why a blob the guest handed over was not written.
#[derive(Debug, thiserror::Error)]
pub enum ResultPortError {
    #[error("the guest handed over a result blob, but this VM has no result file")]
    NoResultFile,
    #[error("the guest gave a result blob's length before its address")]
    NoAddress,
    #[error("a result blob of {len} bytes is over the {MAX_RESULT_BLOB_BYTES}-byte limit")]
    TooLarge { len: u64 },
    #[error("the result blob [{addr:#x}, +{len}) is not in guest memory")]
    OutsideMemory { addr: u64, len: u64 },
    #[error("cannot write the result blob to {path}: {source}")]
    Write {
        path: PathBuf,
        source: crate::storage::StorageError,
    },
}

/// The port's state in one VMM: where blobs go, and the address the guest gave last.
#[derive(Debug)]
pub struct ResultPort {
    out: Option<PathBuf>,
    addr: Option<u64>,
}

impl ResultPort {
    /// A port writing blobs to `out` (None: blobs are refused).
    pub fn new(out: Option<PathBuf>) -> ResultPort {
        ResultPort { out, addr: None }
    }

    /// Takes guest report `code`/`value`: `Ok(None)` when it is not the port's or only gives
    /// the address, `Ok(Some(len))` when a blob of `len` bytes was written.
    pub fn on_report(
        &mut self,
        mem: &GuestMem,
        code: u32,
        value: u64,
    ) -> Result<Option<u64>, ResultPortError> {
        match code {
            pv_event::RESULT_BLOB_ADDR => {
                self.addr = Some(value);
                Ok(None)
            }
            pv_event::RESULT_BLOB_LEN => {
                let addr = self.addr.take().ok_or(ResultPortError::NoAddress)?;
                let out = self.out.as_ref().ok_or(ResultPortError::NoResultFile)?;
                let len = value;
                if len > MAX_RESULT_BLOB_BYTES {
                    return Err(ResultPortError::TooLarge { len });
                }
                let outside = ResultPortError::OutsideMemory { addr, len };
                addr.checked_add(len).ok_or(outside)?;
                let mut blob = vec![0u8; len as usize];
                mem.read_slice(&mut blob, GuestAddress(addr))
                    .map_err(|_| ResultPortError::OutsideMemory { addr, len })?;
                crate::storage::write_atomically(out, |w| {
                    w.write_all(&blob)?;
                    w.flush()
                })
                .map_err(|source| ResultPortError::Write {
                    path: out.clone(),
                    source,
                })?;
                Ok(Some(len))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::memory::create_guest_memory;

    #[test]
    fn a_blob_in_guest_memory_is_written_whole_and_bad_ones_are_refused() {
        let Ok(mem) = create_guest_memory(&[(0, 1 << 20)]) else {
            return;
        };
        mem.write_slice(b"the answer", GuestAddress(0x1000))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("result.blob");
        let mut port = ResultPort::new(Some(out.clone()));
        // Not the port's reports.
        assert!(port
            .on_report(&mem, pv_event::PROGRESS, 3)
            .unwrap()
            .is_none());
        // A length before any address.
        assert!(matches!(
            port.on_report(&mem, pv_event::RESULT_BLOB_LEN, 4),
            Err(ResultPortError::NoAddress)
        ));
        port.on_report(&mem, pv_event::RESULT_BLOB_ADDR, 0x1000)
            .unwrap();
        assert_eq!(
            port.on_report(&mem, pv_event::RESULT_BLOB_LEN, 10).unwrap(),
            Some(10)
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"the answer");
        // Each length uses up its address.
        assert!(matches!(
            port.on_report(&mem, pv_event::RESULT_BLOB_LEN, 10),
            Err(ResultPortError::NoAddress)
        ));
        // Outside memory, wrapping around, too large: refused, the last blob kept.
        for (addr, len) in [
            ((1 << 20) - 4, 8),
            (u64::MAX - 2, 8),
            (0, MAX_RESULT_BLOB_BYTES + 1),
        ] {
            port.on_report(&mem, pv_event::RESULT_BLOB_ADDR, addr)
                .unwrap();
            assert!(
                port.on_report(&mem, pv_event::RESULT_BLOB_LEN, len)
                    .is_err(),
                "{addr:#x} {len}"
            );
        }
        assert_eq!(std::fs::read(&out).unwrap(), b"the answer");
        // A VM without a result file takes no blob.
        let mut none = ResultPort::new(None);
        none.on_report(&mem, pv_event::RESULT_BLOB_ADDR, 0x1000)
            .unwrap();
        assert!(matches!(
            none.on_report(&mem, pv_event::RESULT_BLOB_LEN, 4),
            Err(ResultPortError::NoResultFile)
        ));
    }
}
