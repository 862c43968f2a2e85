//! The migration protocol core: sans-IO state machines for the source ([`source::Source`])
//! and the destination ([`destination::Destination`]) of a cold, warm or live migration, and
//! the wire messages they exchange ([`messages`]).
//!
//! Nothing here opens a socket, spawns a thread, reads a clock or touches guest memory. A
//! driver (TCP here, libp2p streams or the simulator later) feeds each machine inputs
//! (received messages, answers to the machine's requests, measured rates, timer ticks with
//! the current time) and carries out the outputs in the order given (send a message, pause
//! the VM, read and send a chunk, write a chunk into memory, start the VM, ...).
//!
//! Failure semantics (see each machine for details): any failure before the destination
//! confirms leaves the VM on the source (resumed if it was paused) and makes the destination
//! discard what it got. Once the source has sent the switchover state, a lost link cannot tell
//! it whether the destination started; it then keeps the VM paused ("in doubt") until a new
//! connection asks the destination ([`messages::Message::Query`]) — it neither resumes nor
//! discards on a guess, so the VM never runs twice.

pub mod destination;
#[cfg(feature = "kvm")]
pub mod drive_destination;
#[cfg(feature = "kvm")]
pub mod drive_source;
#[cfg(feature = "kvm")]
pub mod keep_in_store;
pub mod level;
#[cfg(feature = "kvm")]
pub mod links;
#[cfg(feature = "kvm")]
pub mod machine_glue;
pub mod messages;
pub mod source;
pub mod wire;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

use messages::MemRegion;
use novacron_mesh::chunks::ChunkSize;

/// `d` in whole milliseconds (saturating), for figures and settings kept in milliseconds.
pub fn whole_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Most memory regions a VM may announce.
pub const MAX_REGIONS: usize = 64;

/// Which part of a migration a side is in, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Hello sent, waiting for the destination to accept.
    Handshake,
    /// Rounds while the guest runs (live mode only).
    Precopy,
    /// The VM is paused (or stopped): final round(s) and state capture.
    Stopped,
    /// State sent; waiting for the destination to confirm it runs.
    AwaitConfirm,
    /// The destination runs the VM and the source discarded it.
    Done,
    /// Rolled back: the VM stays on the source.
    Failed,
    /// The link failed after the state was sent: the VM stays paused until the destination is
    /// asked whether it started.
    InDoubt,
}

/// A progress report from the source. Byte counts are uncompressed chunk bytes; what went
/// on the wire after compression is only known to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub round: u32,
    /// Chunks the destination wanted, and that were therefore sent.
    pub bytes_sent: u64,
    /// All-zero chunks, which are never sent.
    pub bytes_skipped_zero: u64,
    /// Chunks the destination already held (in its store, or already in place).
    pub bytes_skipped_held: u64,
    /// Bytes of every round offered so far: all of memory in the first round, plus what
    /// each later round found dirty. Sent, zero and held bytes never exceed it, so it is
    /// the honest total of a progress bar: it grows as rounds are offered, never past what
    /// the migration deals with.
    pub bytes_total: u64,
    /// Last measured rate at which the guest dirties memory, bytes per second.
    pub dirty_rate_bps: u64,
    /// Last measured link bandwidth, bytes per second.
    pub bandwidth_bps: u64,
    /// Time to send what is left of the current round at the measured bandwidth.
    pub est_remaining_ms: Option<u64>,
    /// Downtime a switchover now would cost: estimated dirty bytes / bandwidth.
    pub est_downtime_ms: Option<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: Phase::Handshake,
            round: 0,
            bytes_sent: 0,
            bytes_skipped_zero: 0,
            bytes_skipped_held: 0,
            bytes_total: 0,
            dirty_rate_bps: 0,
            bandwidth_bps: 0,
            est_remaining_ms: None,
            est_downtime_ms: None,
        }
    }
}

impl Progress {
    /// Bytes of [`Progress::bytes_total`] dealt with: wanted (hence sent), all-zero, or held.
    pub fn bytes_done(&self) -> u64 {
        self.bytes_sent + self.bytes_skipped_zero + self.bytes_skipped_held
    }
}

/// A message or request that breaks the protocol; its text becomes the abort reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unexpected {kind} message in phase {phase}")]
    Unexpected {
        kind: &'static str,
        phase: &'static str,
    },
    #[error("peer speaks protocol version {got}, this side speaks {want}")]
    Version { got: u32, want: u32 },
    #[error("chunk size {got} is not one of 4, 16 or 64 KiB")]
    ChunkSize { got: u32 },
    #[error("memory layout has {got} regions, limit {limit}")]
    TooManyRegions { got: usize, limit: usize },
    #[error("{got} vCPUs is out of range: this side accepts 1 to {limit}")]
    Vcpus { got: u32, limit: u32 },
    #[error("memory layout has no regions")]
    NoRegions,
    #[error("memory region {region} at {guest_addr:#x} is empty")]
    EmptyRegion { region: usize, guest_addr: u64 },
    #[error("guest memory of {got} bytes exceeds the limit of {limit} bytes")]
    MemoryTooLarge { got: u64, limit: u64 },
    #[error("vm id {got:02x?} is not the expected {want:02x?}")]
    VmId { got: [u8; 16], want: [u8; 16] },
    #[error("{what} names round {got}, current round is {want}")]
    Round {
        what: &'static str,
        got: u32,
        want: u32,
    },
    #[error("{what} names chunk index {index}, guest memory has {count} chunks")]
    Index {
        what: &'static str,
        index: u64,
        count: u64,
    },
    #[error("offer {seq} of round {round} is unknown or already answered")]
    Seq { round: u32, seq: u32 },
    #[error("offer {seq} of round {round} covers {got} chunks, limit {limit}")]
    OfferTooLarge {
        round: u32,
        seq: u32,
        got: u64,
        limit: u64,
    },
    #[error("want for offer {seq} has {got} bits in {words} words, the offer has {want} chunks")]
    WantShape {
        seq: u32,
        got: u32,
        words: usize,
        want: usize,
    },
    #[error("chunk {index} was not wanted in round {round}")]
    Unwanted { index: u64, round: u32 },
    #[error("chunk {index} is corrupt: {reason}")]
    CorruptChunk { index: u64, reason: String },
    #[error("round {round} ended with {wanted} wanted chunks and {unchecked} unanswered offers")]
    RoundIncomplete {
        round: u32,
        wanted: usize,
        unchecked: usize,
    },
    #[error(
        "switchover while {count} chunks reported missing were never sent again (first: {first})"
    )]
    StillOwed { count: usize, first: u64 },
    #[error(
        "the destination reports {count} chunks missing after final round {round}, whose \
         memory could not change (first: {first})"
    )]
    FinalRoundMissing {
        round: u32,
        count: usize,
        first: u64,
    },
    #[error("have answer for offer {seq} of round {round} has {got} bits, expected {want}")]
    HaveShape {
        round: u32,
        seq: u32,
        got: usize,
        want: usize,
    },
    #[error("round data gives chunk {index} a length of {got}, the memory layout says {want}")]
    RefLength { index: u64, got: u32, want: usize },
}

/// Guest memory as the protocol sees it: regions cut into chunks, numbered across regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    regions: Vec<MemRegion>,
    chunk_size: ChunkSize,
    /// First chunk index of each region.
    starts: Vec<u64>,
    count: u64,
}

impl Geometry {
    /// Checks a layout (from the peer or the driver) against `max_mem_bytes`.
    pub fn new(
        regions: &[MemRegion],
        chunk_size: ChunkSize,
        max_mem_bytes: u64,
    ) -> Result<Self, ProtocolError> {
        if regions.is_empty() {
            return Err(ProtocolError::NoRegions);
        }
        if regions.len() > MAX_REGIONS {
            return Err(ProtocolError::TooManyRegions {
                got: regions.len(),
                limit: MAX_REGIONS,
            });
        }
        let size = chunk_size.bytes() as u64;
        let (mut total, mut count) = (0u64, 0u64);
        let mut starts = Vec::with_capacity(regions.len());
        for (i, r) in regions.iter().enumerate() {
            if r.len == 0 {
                return Err(ProtocolError::EmptyRegion {
                    region: i,
                    guest_addr: r.guest_addr,
                });
            }
            total = total.saturating_add(r.len);
            if total > max_mem_bytes {
                return Err(ProtocolError::MemoryTooLarge {
                    got: total,
                    limit: max_mem_bytes,
                });
            }
            starts.push(count);
            count += r.len.div_ceil(size);
        }
        Ok(Self {
            regions: regions.to_vec(),
            chunk_size,
            starts,
            count,
        })
    }

    pub fn regions(&self) -> &[MemRegion] {
        &self.regions
    }

    pub fn chunk_size(&self) -> ChunkSize {
        self.chunk_size
    }

    /// Number of chunks over all regions.
    pub fn chunk_count(&self) -> u64 {
        self.count
    }

    /// Region number and byte offset inside it of chunk `index`.
    pub fn locate(&self, index: u64) -> Option<(usize, u64)> {
        if index >= self.count {
            return None;
        }
        let region = self
            .starts
            .partition_point(|&s| s <= index)
            .checked_sub(1)?;
        let first = *self.starts.get(region)?;
        Some((region, (index - first) * self.chunk_size.bytes() as u64))
    }

    /// Length of chunk `index`: the chunk size, or less for a region's last chunk.
    pub fn chunk_len(&self, index: u64) -> Option<usize> {
        let (region, offset) = self.locate(index)?;
        let len = self.regions.get(region)?.len - offset;
        Some(len.min(self.chunk_size.bytes() as u64) as usize)
    }

    /// Fails with an error naming `what` when `index` is outside guest memory.
    pub fn check_index(&self, what: &'static str, index: u64) -> Result<(), ProtocolError> {
        if index < self.count {
            Ok(())
        } else {
            Err(ProtocolError::Index {
                what,
                index,
                count: self.count,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        let regions = [
            MemRegion {
                guest_addr: 0,
                len: 3 * 4096 + 100,
            },
            MemRegion {
                guest_addr: 1 << 32,
                len: 4096,
            },
        ];
        Geometry::new(&regions, ChunkSize::K4, 1 << 40).unwrap()
    }

    #[test]
    fn chunks_are_numbered_across_regions_with_short_tails() {
        let g = geo();
        assert_eq!(g.chunk_count(), 5);
        assert_eq!(g.locate(3), Some((0, 3 * 4096)));
        assert_eq!(g.chunk_len(3), Some(100));
        assert_eq!(g.locate(4), Some((1, 0)));
        assert_eq!(g.chunk_len(4), Some(4096));
        assert_eq!(g.locate(5), None);
    }

    #[test]
    fn hostile_layouts_are_refused_with_reasons() {
        let r = |len| MemRegion { guest_addr: 0, len };
        assert_eq!(
            Geometry::new(&[], ChunkSize::K4, 1 << 30),
            Err(ProtocolError::NoRegions)
        );
        let err = Geometry::new(&[r(1 << 31)], ChunkSize::K4, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        let many = vec![r(4096); MAX_REGIONS + 1];
        assert!(matches!(
            Geometry::new(&many, ChunkSize::K4, u64::MAX),
            Err(ProtocolError::TooManyRegions { .. })
        ));
        assert!(matches!(
            Geometry::new(&[r(0)], ChunkSize::K4, 1 << 30),
            Err(ProtocolError::EmptyRegion { .. })
        ));
        // Lengths that would overflow a sum stop at the limit instead of wrapping.
        let huge = [r(u64::MAX), r(u64::MAX)];
        assert!(matches!(
            Geometry::new(&huge, ChunkSize::K4, u64::MAX - 1),
            Err(ProtocolError::MemoryTooLarge { .. })
        ));
    }
}
