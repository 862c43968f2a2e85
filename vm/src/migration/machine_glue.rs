//! What a migration driver asks of a [`Machine`]: the chunk refs of a round (all memory, or
//! only the chunks holding a dirty page), and reading or writing one chunk, all numbered by
//! [`Geometry`] so the indices are the ones the protocol core speaks.
//!
//! Guest memory is copied out with vm-memory's volatile reads before it is hashed, so a
//! round may be collected while the guest runs. The refs then name the bytes as they were
//! when read; a page the guest writes meanwhile is in the next dirty set, as long as the
//! driver took that set ([`Machine::take_dirty_pages`]) before collecting the round.

use novacron_mesh::chunks::{chunk_refs, ChunkRef, ChunkSize};
use vm_memory::{Bytes, GuestAddress};

use super::messages::MemRegion;
use super::{Geometry, ProtocolError};
use crate::machine::layout::{MAX_MEM_BYTES, PAGE_SIZE};
use crate::machine::memory::{GuestMem, PageBitmaps};
use crate::machine::{Machine, VmError};

/// Chunks are copied out of guest memory and hashed this many bytes at a time (rounded to
/// whole chunks), which bounds the buffer and lets large runs hash on several cores.
const READ_BATCH_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("the machine's memory layout does not make a migration geometry: {0}")]
    Geometry(ProtocolError),
    #[error("chunk index {index} is outside guest memory of {count} chunks of {size}")]
    Index {
        index: u64,
        count: u64,
        size: ChunkSize,
    },
    #[error("chunk {index} is {want} bytes long, {got} bytes were given")]
    Length { index: u64, got: usize, want: usize },
    #[error("dirty page set covers regions {got:x?}, the machine's memory starts at {want:x?}")]
    PagesLayout { got: Vec<u64>, want: Vec<u64> },
    #[error("cannot {what} chunk {index} ({len} bytes at guest address {gpa:#x}): {source}")]
    Access {
        what: &'static str,
        index: u64,
        gpa: u64,
        len: usize,
        source: vm_memory::GuestMemoryError,
    },
}

/// Where a chunk lives in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkPlace {
    gpa: u64,
    len: usize,
}

/// Reads chunks of a machine's guest memory from any thread: it holds its own reference to
/// the memory mapping, so migration sender threads read while the machine runs.
#[derive(Clone, Debug)]
pub struct ChunkReader {
    mem: GuestMem,
    geo: Geometry,
}

impl ChunkReader {
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Copies chunk `index` into `buf` (resized to the chunk's length).
    pub fn read_into(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), GlueError> {
        let place = place_of(&self.geo, index)?;
        buf.resize(place.len, 0);
        read_place(&self.mem, index, place, buf)
    }
}

impl Machine {
    /// A [`ChunkReader`] of this machine's memory cut into chunks of `size`.
    pub fn chunk_reader(&self, size: ChunkSize) -> Result<ChunkReader, GlueError> {
        Ok(ChunkReader {
            mem: self.memory().clone(),
            geo: self.geometry(size)?,
        })
    }

    /// The refs of a first (full) migration round without reading memory nobody wrote:
    /// chunks holding a page ever written (by the guest or the VMM, after a dirty-log sync)
    /// are read and hashed, every other chunk is a zero ref. A fresh destination's memory
    /// is zero, so this is what a full read would give, for the price of the touched bytes.
    pub fn touched_chunk_refs(&mut self, size: ChunkSize) -> Result<Vec<ChunkRef>, GlueError> {
        self.sync_dirty_log()?;
        let touched = self.dirty.touched().clone();
        let geo = self.geometry(size)?;
        let mut refs = self.chunk_refs(Some(&touched), size)?;
        let mut zeros = Vec::new();
        let mut next = 0u64;
        let push_zeros = |from: u64, to: u64, zeros: &mut Vec<ChunkRef>| {
            for index in from..to {
                if let Some(len) = geo.chunk_len(index) {
                    zeros.push(ChunkRef {
                        index,
                        id: None,
                        len: len as u32,
                    });
                }
            }
        };
        for r in &refs {
            push_zeros(next, r.index, &mut zeros);
            next = r.index + 1;
        }
        push_zeros(next, geo.chunk_count(), &mut zeros);
        refs.extend(zeros);
        refs.sort_unstable_by_key(|r| r.index);
        Ok(refs)
    }

    pub fn geometry(&self, size: ChunkSize) -> Result<Geometry, GlueError> {
        let regions: Vec<MemRegion> = self
            .layout()
            .iter()
            .map(|&(guest_addr, len)| MemRegion { guest_addr, len })
            .collect();
        Geometry::new(&regions, size, MAX_MEM_BYTES).map_err(GlueError::Geometry)
    }

    /// Chunk refs for a round, sorted by index: every chunk of guest memory for `None` (a
    /// full round), else only the chunks holding a page set in `pages`. Zero chunks have
    /// no id. The guest may run meanwhile (see the module documentation).
    pub fn chunk_refs(
        &self,
        pages: Option<&PageBitmaps>,
        size: ChunkSize,
    ) -> Result<Vec<ChunkRef>, GlueError> {
        let geo = self.geometry(size)?;
        let runs = match pages {
            None => full_runs(&geo),
            Some(pages) => {
                check_pages_layout(&geo, pages)?;
                index_runs(&geo, &dirty_chunk_indices(&geo, pages))
            }
        };
        let batch = (READ_BATCH_BYTES / size.bytes() as u64).max(1);
        let mut batches = Vec::new();
        for (first, count) in runs {
            let mut done = 0;
            while done < count {
                let n = batch.min(count - done);
                batches.push((first + done, n));
                done += n;
            }
        }
        refs_of_batches(self.memory(), &geo, &batches)
    }

    /// Copies chunk `index` out of guest memory.
    pub fn read_chunk(&self, index: u64, size: ChunkSize) -> Result<Vec<u8>, GlueError> {
        let geo = self.geometry(size)?;
        let place = place_of(&geo, index)?;
        let mut buf = vec![0u8; place.len];
        self.read_place(index, place, &mut buf)?;
        Ok(buf)
    }

    /// Writes `bytes` as chunk `index`; they must be exactly the chunk's length. The write
    /// goes through vm-memory, so the pages count as touched at the next dirty-log sync.
    pub fn write_chunk(&self, index: u64, size: ChunkSize, bytes: &[u8]) -> Result<(), GlueError> {
        let geo = self.geometry(size)?;
        let place = place_of(&geo, index)?;
        if bytes.len() != place.len {
            return Err(GlueError::Length {
                index,
                got: bytes.len(),
                want: place.len,
            });
        }
        self.memory()
            .write_slice(bytes, GuestAddress(place.gpa))
            .map_err(|source| GlueError::Access {
                what: "write",
                index,
                gpa: place.gpa,
                len: place.len,
                source,
            })
    }

    fn read_place(&self, index: u64, place: ChunkPlace, buf: &mut [u8]) -> Result<(), GlueError> {
        read_place(self.memory(), index, place, buf)
    }
}

/// Refs of every batch, in order, hashed on up to all cores: a batch is (first chunk,
/// count) of back-to-back chunks of one region.
fn refs_of_batches(
    mem: &GuestMem,
    geo: &Geometry,
    batches: &[(u64, u64)],
) -> Result<Vec<ChunkRef>, GlueError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(batches.len());
    if threads <= 1 {
        let mut refs = Vec::new();
        for &(first, count) in batches {
            refs.extend(refs_of_run(mem, geo, first, count)?);
        }
        return Ok(refs);
    }
    let per_thread = batches.len().div_ceil(threads);
    let parts: Vec<Result<Vec<ChunkRef>, GlueError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = batches
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    let mut refs = Vec::new();
                    for &(first, count) in part {
                        refs.extend(refs_of_run(mem, geo, first, count)?);
                    }
                    Ok(refs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                // Hashing never panics on guest data; if it did, that is a bug to surface.
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut refs = Vec::new();
    for part in parts {
        refs.extend(part?);
    }
    Ok(refs)
}

/// Refs of `count` chunks from `first`, which lie back to back in one region.
fn refs_of_run(
    mem: &GuestMem,
    geo: &Geometry,
    first: u64,
    count: u64,
) -> Result<Vec<ChunkRef>, GlueError> {
    let start = place_of(geo, first)?;
    let last = place_of(geo, first + count - 1)?;
    let len = (last.gpa - start.gpa) as usize + last.len;
    let mut buf = vec![0u8; len];
    read_place(
        mem,
        first,
        ChunkPlace {
            gpa: start.gpa,
            len,
        },
        &mut buf,
    )?;
    let mut refs = chunk_refs(&buf, geo.chunk_size());
    for r in &mut refs {
        r.index += first;
    }
    Ok(refs)
}

fn read_place(
    mem: &GuestMem,
    index: u64,
    place: ChunkPlace,
    buf: &mut [u8],
) -> Result<(), GlueError> {
    mem.read_slice(buf, GuestAddress(place.gpa))
        .map_err(|source| GlueError::Access {
            what: "read",
            index,
            gpa: place.gpa,
            len: place.len,
            source,
        })
}

fn place_of(geo: &Geometry, index: u64) -> Result<ChunkPlace, GlueError> {
    let bad = || GlueError::Index {
        index,
        count: geo.chunk_count(),
        size: geo.chunk_size(),
    };
    let (region, offset) = geo.locate(index).ok_or_else(bad)?;
    let len = geo.chunk_len(index).ok_or_else(bad)?;
    let start = geo.regions().get(region).ok_or_else(bad)?.guest_addr;
    Ok(ChunkPlace {
        gpa: start + offset,
        len,
    })
}

/// Index of the first chunk of `region`, found through [`Geometry::locate`] (a binary
/// search: chunk indices grow with region numbers).
fn first_chunk_of(geo: &Geometry, region: usize) -> u64 {
    let (mut lo, mut hi) = (0, geo.chunk_count());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match geo.locate(mid) {
            Some((r, _)) if r < region => lo = mid + 1,
            _ => hi = mid,
        }
    }
    lo
}

/// (first index, count) of every region's chunks.
fn full_runs(geo: &Geometry) -> Vec<(u64, u64)> {
    let firsts: Vec<u64> = (0..geo.regions().len())
        .map(|r| first_chunk_of(geo, r))
        .collect();
    firsts
        .iter()
        .zip(firsts.iter().skip(1).chain([&geo.chunk_count()]))
        .map(|(&first, &next)| (first, next - first))
        .collect()
}

fn check_pages_layout(geo: &Geometry, pages: &PageBitmaps) -> Result<(), GlueError> {
    let got: Vec<u64> = pages.regions.iter().map(|(start, _)| *start).collect();
    let want: Vec<u64> = geo.regions().iter().map(|r| r.guest_addr).collect();
    if got == want {
        Ok(())
    } else {
        Err(GlueError::PagesLayout { got, want })
    }
}

/// Sorted, distinct indices of the chunks holding a page set in `pages` (whose regions are
/// the geometry's, in order). Bits past a region's end are ignored.
fn dirty_chunk_indices(geo: &Geometry, pages: &PageBitmaps) -> Vec<u64> {
    let size = geo.chunk_size().bytes() as u64;
    let mut out: Vec<u64> = Vec::new();
    for (region, ((_, words), r)) in pages.regions.iter().zip(geo.regions()).enumerate() {
        let first = first_chunk_of(geo, region);
        for (w, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let offset = page * PAGE_SIZE;
                if offset >= r.len {
                    break;
                }
                let index = first + offset / size;
                if out.last() != Some(&index) {
                    out.push(index);
                }
            }
        }
    }
    out
}

/// Groups sorted indices into (first, count) runs of back-to-back chunks of one region.
fn index_runs(geo: &Geometry, indices: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut last_region = None;
    for &index in indices {
        let region = geo.locate(index).map(|(r, _)| r);
        match runs.last_mut() {
            Some((first, count)) if *first + *count == index && region == last_region => {
                *count += 1
            }
            _ => runs.push((index, 1)),
        }
        last_region = region;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two regions: 5 chunks of 16 KiB (the last one short), then 2.
    fn geo() -> Geometry {
        let regions = [
            MemRegion {
                guest_addr: 0,
                len: 4 * 16384 + 4096,
            },
            MemRegion {
                guest_addr: 1 << 32,
                len: 2 * 16384,
            },
        ];
        Geometry::new(&regions, ChunkSize::K16, 1 << 40).unwrap()
    }

    fn pages(g: &Geometry) -> PageBitmaps {
        let layout: Vec<(u64, u64)> = g.regions().iter().map(|r| (r.guest_addr, r.len)).collect();
        PageBitmaps::empty_for(&layout)
    }

    #[test]
    fn region_starts_and_full_runs_follow_geometry() {
        let g = geo();
        assert_eq!(first_chunk_of(&g, 0), 0);
        assert_eq!(first_chunk_of(&g, 1), 5);
        assert_eq!(full_runs(&g), vec![(0, 5), (5, 2)]);
    }

    #[test]
    fn dirty_pages_map_to_their_chunks_across_regions() {
        let g = geo();
        let mut p = pages(&g);
        p.mark_range(0, 1); // page 0 -> chunk 0
        p.mark_range(3 * 4096, 2 * 4096); // pages 3, 4 -> chunks 0, 1
        p.mark_range(16 * 4096, 1); // page 16, the short tail -> chunk 4
        p.mark_range((1 << 32) + 16384, 1); // region 1, chunk 1 -> index 6
        assert_eq!(dirty_chunk_indices(&g, &p), vec![0, 1, 4, 6]);
        // Chunks 4 and 5 are adjacent indices but in different regions: two runs.
        assert_eq!(
            index_runs(&g, &[0, 1, 4, 5, 6]),
            vec![(0, 2), (4, 1), (5, 2)]
        );
    }

    #[test]
    fn bits_past_a_region_end_are_ignored() {
        let g = geo();
        let mut p = pages(&g);
        // Region 0 has 17 pages; its bitmap word has room for 64.
        p.regions[0].1[0] = 1 << 40;
        assert!(dirty_chunk_indices(&g, &p).is_empty());
    }

    #[test]
    fn a_foreign_page_set_is_refused() {
        let g = geo();
        let other = PageBitmaps::empty_for(&[(0, 1 << 20)]);
        let err = check_pages_layout(&g, &other).unwrap_err();
        assert!(err.to_string().contains("regions"), "{err}");
        assert!(check_pages_layout(&g, &pages(&g)).is_ok());
    }

    #[test]
    fn bad_indices_are_errors() {
        let g = geo();
        assert_eq!(
            place_of(&g, 4).unwrap(),
            ChunkPlace {
                gpa: 4 * 16384,
                len: 4096
            }
        );
        let err = place_of(&g, 7).unwrap_err();
        assert!(err.to_string().contains("index 7"), "{err}");
    }
}
