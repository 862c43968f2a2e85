//! Cells: the mesh is cut into groups of ~100–250 nodes by a prefix of blake3(PeerId), so
//! membership gossip (chitchat) stays small at 50,000 nodes. Everything here is a pure
//! function of its arguments (no IO, no clock, no randomness): the node and the simulator
//! call the same code and get the same cells, representatives and summaries.
//!
//! - [`cell_id`]: a peer's cell for a prefix length.
//! - [`prefix_bits_for`], [`next_prefix_bits`]: the prefix length for a mesh size, and its
//!   change with hysteresis (grow when the mean cell exceeds [`MAX_CELL_SIZE`], shrink when it
//!   falls under [`MIN_CELL_SIZE`], land where the mean is within a factor √2 of
//!   [`TARGET_CELL_SIZE`]).
//! - [`estimate_mesh_size`]: members of one's own cell × 2^bits; [`estimate_from_cells`]
//!   pools several cells' estimates.
//! - [`representatives`]: rendezvous hashing: the members whose blake3(peer id || cell id) is
//!   smallest, so the choice moves only when a representative itself leaves.
//! - [`CellSummary::fold`], [`sign_summary`], [`verify_summary`]: aggregate capacity and its
//!   signed form, in the envelope of [`crate::records`] under [`CELL_SUMMARY_DOMAIN`].
//!
//! What this cannot do: nodes of one cell may estimate different mesh sizes (their cell
//! counts differ, and so do their views); hysteresis keeps each node from flapping, but
//! agreeing on one prefix length per cell is for the gossip layer. A summary proves that a
//! contact of the cell signed it, not that the numbers are true, and [`verify_summary`] cannot
//! know whether its contacts really are the cell's representatives (that needs the member
//! list); readers should compare summaries from several representatives.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use libp2p_identity::PeerId;
use rkyv::{Archive, Deserialize, Serialize};

use crate::identity::NodeIdentity;
use crate::records::{
    archive, check_at_most, check_count, parse_peer_id, unarchive, Capacity, RecordError,
    SignedRecord, MAX_LOAD_PERMILLE,
};

/// Longest prefix: 2^32 cells, far beyond any mesh this is built for.
pub const MAX_PREFIX_BITS: u8 = 32;

/// The cell size the prefix length aims at.
pub const TARGET_CELL_SIZE: u64 = 160;

/// Below this mean cell size the prefix shrinks (when it can).
pub const MIN_CELL_SIZE: u64 = 100;

/// Above this mean cell size the prefix grows.
pub const MAX_CELL_SIZE: u64 = 250;

/// Domain string prepended to a cell summary before signing.
pub const CELL_SUMMARY_DOMAIN: &[u8] = b"novacron-cell-summary-v1";

/// Largest signed summary (envelope included) accepted; checked before anything else.
pub const MAX_SIGNED_SUMMARY_LEN: usize = 4096;

/// Most contact peers in one summary.
pub const MAX_CONTACTS: usize = 8;

/// A cell: the first `prefix_bits` bits of blake3(peer id bytes), as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellId {
    prefix_bits: u8,
    prefix: u32,
}

impl CellId {
    /// A cell from its parts; refuses more than [`MAX_PREFIX_BITS`] bits or a prefix that
    /// does not fit in them.
    pub fn new(prefix_bits: u8, prefix: u32) -> Result<CellId, RecordError> {
        check_at_most(
            "cell.prefix_bits",
            prefix_bits.into(),
            MAX_PREFIX_BITS.into(),
        )?;
        let largest = (1u64 << prefix_bits) - 1;
        check_at_most("cell.prefix", prefix.into(), largest)?;
        Ok(CellId {
            prefix_bits,
            prefix,
        })
    }

    pub fn prefix_bits(&self) -> u8 {
        self.prefix_bits
    }

    pub fn prefix(&self) -> u32 {
        self.prefix
    }

    /// Bytes that name the cell in hashes: the bit count, then the prefix (big-endian).
    pub fn to_bytes(&self) -> [u8; 5] {
        let mut out = [0u8; 5];
        out[0] = self.prefix_bits;
        out[1..].copy_from_slice(&self.prefix.to_be_bytes());
        out
    }

    /// Whether `peer` belongs to this cell.
    pub fn contains(&self, peer: &PeerId) -> bool {
        cell_id(peer, self.prefix_bits) == *self
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:x}", self.prefix_bits, self.prefix)
    }
}

/// The first 32 bits of blake3(peer id bytes).
fn peer_hash_prefix(peer: &PeerId) -> u32 {
    let hash = blake3::hash(&peer.to_bytes());
    let mut first = [0u8; 4];
    first.copy_from_slice(&hash.as_bytes()[..4]);
    u32::from_be_bytes(first)
}

/// The cell of `peer` at `prefix_bits` (more than [`MAX_PREFIX_BITS`] counts as the maximum).
pub fn cell_id(peer: &PeerId, prefix_bits: u8) -> CellId {
    let prefix_bits = prefix_bits.min(MAX_PREFIX_BITS);
    let prefix = match prefix_bits {
        0 => 0,
        bits => peer_hash_prefix(peer) >> (32 - u32::from(bits)),
    };
    CellId {
        prefix_bits,
        prefix,
    }
}

/// The prefix length whose mean cell size is closest to [`TARGET_CELL_SIZE`] (within a
/// factor √2 of it, when the mesh is big enough): 50 nodes -> 0 bits (one cell),
/// 50,000 -> 8 bits (~195 per cell).
pub fn prefix_bits_for(estimated_mesh_size: u64) -> u8 {
    // The smallest b with n / 2^b < TARGET·√2, squared to stay in integers.
    let n = u128::from(estimated_mesh_size);
    let target = u128::from(TARGET_CELL_SIZE);
    (0..=MAX_PREFIX_BITS)
        .find(|&b| n * n < (2 * target * target) << (2 * u32::from(b)))
        .unwrap_or(MAX_PREFIX_BITS)
}

/// The prefix length after `current` given a new estimate: unchanged while the mean cell stays
/// within [`MIN_CELL_SIZE`]..=[`MAX_CELL_SIZE`], else [`prefix_bits_for`] the estimate, whose
/// mean (within √2 of the target, 113..226) is well inside that band, so an estimate that
/// hovers at a boundary does not flip the length back and forth.
pub fn next_prefix_bits(current: u8, estimated_mesh_size: u64) -> u8 {
    let current = current.min(MAX_PREFIX_BITS);
    let n = u128::from(estimated_mesh_size);
    let cells_shift = u32::from(current);
    let too_big = n > u128::from(MAX_CELL_SIZE) << cells_shift;
    let too_small = current > 0 && n < u128::from(MIN_CELL_SIZE) << cells_shift;
    if too_big || too_small {
        prefix_bits_for(estimated_mesh_size)
    } else {
        current
    }
}

/// The mesh size a node infers from its own cell: members × 2^bits (saturating).
pub fn estimate_mesh_size(cell_members: u64, prefix_bits: u8) -> u64 {
    let bits = prefix_bits.min(MAX_PREFIX_BITS);
    cell_members.saturating_mul(1u64 << bits)
}

/// The mean of [`estimate_mesh_size`] over several cells' `(members, prefix_bits)` (one's own
/// and those of summaries read from the DHT): less noisy than one cell's count. `None` for no
/// cells.
pub fn estimate_from_cells(cells: impl IntoIterator<Item = (u64, u8)>) -> Option<u64> {
    let (sum, count) = cells
        .into_iter()
        .fold((0u128, 0u128), |(sum, count), (members, bits)| {
            (
                sum + u128::from(estimate_mesh_size(members, bits)),
                count + 1,
            )
        });
    let mean = sum.checked_div(count)?;
    Some(u64::try_from(mean).unwrap_or(u64::MAX))
}

/// Rendezvous score of `peer` in `cell`: lower is chosen first.
fn rendezvous_score(peer: &PeerId, cell: CellId) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&peer.to_bytes());
    hasher.update(&cell.to_bytes());
    *hasher.finalize().as_bytes()
}

/// The `count` members of `cell` with the smallest rendezvous scores, best first (duplicates
/// count once). A member leaving changes the choice only if it was chosen.
pub fn representatives<'a>(
    cell: CellId,
    members: impl IntoIterator<Item = &'a PeerId>,
    count: usize,
) -> Vec<PeerId> {
    let scored: BTreeMap<[u8; 32], PeerId> = members
        .into_iter()
        .map(|peer| (rendezvous_score(peer, cell), *peer))
        .collect();
    scored.into_values().take(count).collect()
}

/// A cell's aggregate capacity and a few peers to contact.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CellSummary {
    pub prefix_bits: u8,
    pub prefix: u32,
    pub members: u32,
    pub total_vcpus: u64,
    pub free_vcpus: u64,
    pub total_memory_bytes: u64,
    pub free_memory_bytes: u64,
    pub free_slots: u64,
    /// Mean of the members' load, 0..=[`MAX_LOAD_PERMILLE`].
    pub mean_load_permille: u16,
    /// The cell's representatives (peer id bytes), best first.
    pub contacts: Vec<Vec<u8>>,
}

/// Running totals of [`CellSummary::fold`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    members: u64,
    vcpus: u64,
    free_vcpus: u64,
    memory: u64,
    free_memory: u64,
    free_slots: u64,
    load: u64,
}

impl Totals {
    fn add(self, c: &Capacity) -> Totals {
        Totals {
            members: self.members + 1,
            vcpus: self.vcpus.saturating_add(c.vcpus.into()),
            free_vcpus: self.free_vcpus.saturating_add(c.free_vcpus.into()),
            memory: self.memory.saturating_add(c.memory_bytes),
            free_memory: self.free_memory.saturating_add(c.free_memory_bytes),
            free_slots: self.free_slots.saturating_add(c.free_slots.into()),
            load: self
                .load
                .saturating_add(c.load_permille.min(MAX_LOAD_PERMILLE).into()),
        }
    }

    fn mean_load(&self) -> u16 {
        let mean = self.load.checked_div(self.members).unwrap_or(0);
        u16::try_from(mean).unwrap_or(MAX_LOAD_PERMILLE)
    }
}

impl CellSummary {
    /// Aggregates the members of `cell` (peers outside it are ignored; a peer listed twice
    /// counts once, with its last capacity) and names its first `contacts` representatives
    /// (at most [`MAX_CONTACTS`]).
    pub fn fold<'a>(
        cell: CellId,
        members: impl IntoIterator<Item = (&'a PeerId, &'a Capacity)>,
        contacts: usize,
    ) -> CellSummary {
        let inside: BTreeMap<PeerId, Capacity> = members
            .into_iter()
            .filter(|(peer, _)| cell.contains(peer))
            .map(|(peer, cap)| (*peer, *cap))
            .collect();
        let totals = inside.values().fold(Totals::default(), Totals::add);
        let reps = representatives(cell, inside.keys(), contacts.min(MAX_CONTACTS));
        CellSummary {
            prefix_bits: cell.prefix_bits,
            prefix: cell.prefix,
            members: u32::try_from(totals.members).unwrap_or(u32::MAX),
            total_vcpus: totals.vcpus,
            free_vcpus: totals.free_vcpus,
            total_memory_bytes: totals.memory,
            free_memory_bytes: totals.free_memory,
            free_slots: totals.free_slots,
            mean_load_permille: totals.mean_load(),
            contacts: reps.iter().map(|p| p.to_bytes()).collect(),
        }
    }

    /// The summarised cell.
    pub fn cell(&self) -> Result<CellId, RecordError> {
        CellId::new(self.prefix_bits, self.prefix)
    }

    /// The contacts as PeerIds.
    pub fn contact_peers(&self) -> Result<Vec<PeerId>, RecordError> {
        self.contacts
            .iter()
            .map(|bytes| parse_peer_id("summary.contacts[]", bytes))
            .collect()
    }

    /// Refuses fields over their limits and contacts outside the cell.
    pub fn check_limits(&self) -> Result<(), RecordError> {
        let cell = self.cell()?;
        check_count("summary.contacts", self.contacts.len(), MAX_CONTACTS)?;
        check_at_most(
            "summary.contacts",
            self.contacts.len() as u64,
            self.members.into(),
        )?;
        check_at_most("summary.free_vcpus", self.free_vcpus, self.total_vcpus)?;
        check_at_most(
            "summary.free_memory_bytes",
            self.free_memory_bytes,
            self.total_memory_bytes,
        )?;
        check_at_most(
            "summary.mean_load_permille",
            self.mean_load_permille.into(),
            MAX_LOAD_PERMILLE.into(),
        )?;
        for peer in self.contact_peers()? {
            check_in_cell("summary.contacts[]", &peer, cell)?;
        }
        Ok(())
    }
}

fn check_in_cell(field: &'static str, peer: &PeerId, cell: CellId) -> Result<(), RecordError> {
    if !cell.contains(peer) {
        return Err(RecordError::NotInCell {
            field,
            peer: peer.to_string(),
            cell: cell.to_string(),
        });
    }
    Ok(())
}

/// A summary as one representative states it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SummaryRecord {
    /// The signing representative's peer id bytes.
    pub signer: Vec<u8>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    pub summary: CellSummary,
}

impl SummaryRecord {
    /// The summary's archive (what [`sign_summary`] signs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        archive("cell summary", self)
    }

    /// Validates (bytecheck) and reads a summary archive; checks no limit and no signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<SummaryRecord, RecordError> {
        unarchive("cell summary", bytes)
    }

    /// Refuses fields over their limits, and a signer that is not one of the contacts.
    pub fn check_limits(&self) -> Result<PeerId, RecordError> {
        self.summary.check_limits()?;
        let signer = parse_peer_id("summary.signer", &self.signer)?;
        if !self.summary.contacts.contains(&self.signer) {
            return Err(RecordError::SignerNotContact {
                signer: signer.to_string(),
            });
        }
        Ok(signer)
    }
}

/// Signs `record` as `identity`, refusing what [`verify_summary`] would refuse for its
/// content (the clock is not checked here).
pub fn sign_summary(
    identity: &NodeIdentity,
    record: &SummaryRecord,
) -> Result<SignedRecord, RecordError> {
    let claimed = record.check_limits()?;
    if claimed != identity.peer_id() {
        return Err(RecordError::NotOurs {
            signer: identity.peer_id().to_string(),
            claimed: claimed.to_string(),
        });
    }
    let signed = SignedRecord::seal(identity, CELL_SUMMARY_DOMAIN, record.to_bytes()?);
    let len = signed.encode()?.len();
    check_signed_len(len)?;
    Ok(signed)
}

fn check_signed_len(len: usize) -> Result<(), RecordError> {
    if len > MAX_SIGNED_SUMMARY_LEN {
        return Err(RecordError::TooLarge {
            what: "signed cell summary",
            len,
            limit: MAX_SIGNED_SUMMARY_LEN,
        });
    }
    Ok(())
}

/// Checks wire bytes from anyone and returns the summary they carry: size, archives, limits,
/// contacts inside the cell, signer among the contacts and owning the key, signature, time.
pub fn verify_summary(bytes: &[u8], now: Duration) -> Result<SummaryRecord, RecordError> {
    check_signed_len(bytes.len())?;
    let signed = SignedRecord::decode(bytes, MAX_SIGNED_SUMMARY_LEN)?;
    let record = SummaryRecord::from_bytes(&signed.record_bytes)?;
    let claimed = record.check_limits()?;
    signed.check_signed_by(
        CELL_SUMMARY_DOMAIN,
        &claimed,
        (record.issued_at, record.expires_at),
        now,
    )?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::{identity, NOW};
    use crate::records::NODE_RECORD_DOMAIN;

    /// A valid PeerId (a sha2-256 multihash) that no key stands behind: cheap enough for
    /// 50,000 of them.
    fn synthetic_peer(n: u64) -> PeerId {
        let mut bytes = vec![0x12, 0x20];
        bytes.extend_from_slice(blake3::hash(&n.to_le_bytes()).as_bytes());
        PeerId::from_bytes(&bytes).unwrap()
    }

    fn peers(range: std::ops::Range<u64>) -> Vec<PeerId> {
        range.map(synthetic_peer).collect()
    }

    #[test]
    fn zero_bits_is_one_cell_for_everyone() {
        for peer in peers(0..100) {
            assert_eq!(cell_id(&peer, 0), CellId::new(0, 0).unwrap());
        }
    }

    #[test]
    fn a_longer_prefix_refines_the_shorter_one() {
        for peer in peers(0..500) {
            for bits in 1..=MAX_PREFIX_BITS {
                let long = cell_id(&peer, bits);
                let short = cell_id(&peer, bits - 1);
                assert_eq!(long.prefix() >> 1, short.prefix(), "{peer} at {bits} bits");
                assert!(long.contains(&peer));
            }
        }
        let p = synthetic_peer(1);
        assert_eq!(cell_id(&p, 40), cell_id(&p, MAX_PREFIX_BITS));
    }

    #[test]
    fn cell_ids_are_validated() {
        assert!(CellId::new(4, 15).is_ok());
        assert!(CellId::new(4, 16).is_err());
        assert!(CellId::new(0, 1).is_err());
        assert!(CellId::new(32, u32::MAX).is_ok());
        assert!(CellId::new(33, 0).is_err());
        assert_eq!(CellId::new(8, 0xa3).unwrap().to_string(), "8/a3");
    }

    #[test]
    fn cells_split_evenly() {
        // 20,000 peers over 64 cells: chi-square with 63 degrees of freedom; 103.4 is
        // its 99.9th percentile.
        let bits = 6;
        let n = 20_000u64;
        let mut counts = vec![0u64; 1 << bits];
        for peer in peers(0..n) {
            counts[cell_id(&peer, bits).prefix() as usize] += 1;
        }
        let expected = n as f64 / counts.len() as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 103.4, "chi-square {chi2:.1} for {counts:?}");
    }

    #[test]
    fn prefix_bits_follow_the_mesh_size() {
        assert_eq!(prefix_bits_for(0), 0);
        assert_eq!(prefix_bits_for(1), 0);
        assert_eq!(prefix_bits_for(50), 0);
        assert_eq!(prefix_bits_for(226), 0);
        assert_eq!(prefix_bits_for(227), 1);
        assert_eq!(prefix_bits_for(50_000), 8);
        assert_eq!(prefix_bits_for(50_000), next_prefix_bits(0, 50_000));
        assert_eq!(prefix_bits_for(u64::MAX), MAX_PREFIX_BITS);
        for n in (1..40)
            .map(|k| 1u64 << k)
            .chain([300, 1000, 12_345, 77_777, 1_000_000])
        {
            let bits = prefix_bits_for(n);
            let mean = n as f64 / 2f64.powi(bits.into());
            let target = TARGET_CELL_SIZE as f64;
            if n as f64 >= target * 2f64.sqrt() && bits < MAX_PREFIX_BITS {
                assert!(
                    mean >= target / 2f64.sqrt() && mean < target * 2f64.sqrt(),
                    "{n} nodes at {bits} bits: mean {mean}"
                );
            }
        }
    }

    #[test]
    fn next_prefix_bits_moves_only_outside_the_band() {
        // 8 bits: the mean stays within 100..=250 from 25,600 to 64,000 nodes.
        assert_eq!(next_prefix_bits(8, 25_600), 8);
        assert_eq!(next_prefix_bits(8, 64_000), 8);
        assert_eq!(next_prefix_bits(8, 64_001), 9);
        assert_eq!(next_prefix_bits(8, 25_599), 7);
        assert_eq!(next_prefix_bits(0, 250), 0);
        assert_eq!(next_prefix_bits(0, 251), 1);
        assert_eq!(next_prefix_bits(0, 3), 0, "one small cell stays one cell");
        assert_eq!(
            next_prefix_bits(12, 50),
            0,
            "a collapsed mesh goes back to one cell"
        );
    }

    #[test]
    fn hysteresis_a_move_is_never_undone_by_the_same_estimate() {
        for current in 0..=20u8 {
            for n in (0..200_000_000u64).step_by(9_973).chain(0..5_000) {
                let next = next_prefix_bits(current, n);
                assert_eq!(
                    next_prefix_bits(next, n),
                    next,
                    "{current} -> {next} at {n}"
                );
            }
        }
    }

    #[test]
    fn hysteresis_an_estimate_hovering_at_a_boundary_moves_once() {
        // Around the grow boundary of 8 bits (64,000): ±10% noise.
        let mut bits = 8;
        let mut changes = 0;
        for i in 0..1000u64 {
            let noise = (blake3::hash(&i.to_le_bytes()).as_bytes()[0] as u64) * 12_800 / 255;
            let estimate = 64_000 - 6_400 + noise;
            let next = next_prefix_bits(bits, estimate);
            changes += u32::from(next != bits);
            bits = next;
        }
        assert_eq!(bits, 9);
        assert_eq!(changes, 1);
        // Around the shrink boundary of 9 bits (51,200): ±10% noise; 8 bits holds up to 64,000.
        let mut changes = 0;
        for i in 0..1000u64 {
            let noise = (blake3::hash(&i.to_be_bytes()).as_bytes()[0] as u64) * 10_240 / 255;
            let estimate = 51_200 - 5_120 + noise;
            let next = next_prefix_bits(bits, estimate);
            changes += u32::from(next != bits);
            bits = next;
        }
        assert_eq!((bits, changes), (8, 1), "shrinks once, into 8 bits' band");
    }

    #[test]
    fn fifty_thousand_nodes_make_cells_of_100_to_250() {
        let n = 50_000u64;
        let bits = prefix_bits_for(n);
        assert_eq!(bits, 8);
        let mut cells: BTreeMap<CellId, u64> = BTreeMap::new();
        for peer in peers(0..n) {
            *cells.entry(cell_id(&peer, bits)).or_default() += 1;
        }
        assert_eq!(cells.len(), 256);
        let mean = n / cells.len() as u64;
        assert!((100..=250).contains(&mean), "mean {mean}");
        let sizes: Vec<u64> = cells.values().copied().collect();
        let within = sizes.iter().filter(|m| (100..=250).contains(*m)).count();
        assert!(
            within * 100 >= sizes.len() * 99,
            "{within} of 256 cells in 100..=250"
        );
        assert!(sizes.iter().all(|m| (100..=300).contains(m)), "{sizes:?}");
        // One cell's own estimate keeps it at 8 bits nearly always (binomial spread: a cell
        // of 251 would want 9); pooling the estimates of 8 cells keeps every one there.
        let agree = sizes
            .iter()
            .filter(|&&m| next_prefix_bits(bits, estimate_mesh_size(m, bits)) == bits)
            .count();
        assert!(
            agree * 100 >= sizes.len() * 99,
            "{agree} of 256 cells keep 8 bits"
        );
        for window in sizes.windows(8) {
            let pooled = estimate_from_cells(window.iter().map(|&m| (m, bits))).unwrap();
            assert_eq!(next_prefix_bits(bits, pooled), bits, "{window:?}: {pooled}");
        }
    }

    #[test]
    fn pooled_estimate_is_the_mean_of_the_cells_estimates() {
        assert_eq!(estimate_from_cells(std::iter::empty()), None);
        assert_eq!(estimate_from_cells([(190, 8), (200, 8)]), Some(49_920));
        assert_eq!(estimate_from_cells([(100, 1), (50, 2)]), Some(200));
    }

    #[test]
    fn estimate_is_members_times_cell_count() {
        assert_eq!(estimate_mesh_size(195, 8), 49_920);
        assert_eq!(estimate_mesh_size(50, 0), 50);
        assert_eq!(estimate_mesh_size(u64::MAX, 8), u64::MAX);
    }

    #[test]
    fn representatives_are_deterministic_and_order_free() {
        let cell = CellId::new(0, 0).unwrap();
        let members = peers(0..200);
        let reps = representatives(cell, &members, 3);
        assert_eq!(reps.len(), 3);
        let mut reversed = members.clone();
        reversed.reverse();
        reversed.extend_from_slice(&members[..10]);
        assert_eq!(representatives(cell, &reversed, 3), reps);
        assert_eq!(representatives(cell, &members[..2], 3).len(), 2);
        let other = CellId::new(1, 0).unwrap();
        assert_ne!(
            representatives(other, &members, 3),
            reps,
            "cells rank differently"
        );
    }

    #[test]
    fn representatives_are_stable_when_others_come_and_go() {
        let cell = CellId::new(0, 0).unwrap();
        let members = peers(0..200);
        let reps = representatives(cell, &members, 3);
        for leaving in members.iter().filter(|p| !reps.contains(p)).take(50) {
            let rest: Vec<_> = members.iter().filter(|p| *p != leaving).collect();
            assert_eq!(representatives(cell, rest, 3), reps);
        }
        // A representative leaving: the others stay, and the next-ranked one joins.
        let next = representatives(cell, &members, 4)[3];
        let rest: Vec<_> = members.iter().filter(|p| **p != reps[1]).collect();
        assert_eq!(representatives(cell, rest, 3), vec![reps[0], reps[2], next]);
        // Newcomers displace a representative only if they rank before it: the new choice
        // is the best of the old representatives and the newcomers' best.
        let newcomers = peers(200..400);
        let joined = peers(0..400);
        let mut candidates = reps.clone();
        candidates.extend(representatives(cell, &newcomers, 3));
        assert_eq!(
            representatives(cell, &joined, 3),
            representatives(cell, &candidates, 3)
        );
    }

    fn capacity(n: u64) -> Capacity {
        Capacity {
            vcpus: 4 + (n % 5) as u32,
            free_vcpus: (n % 4) as u32,
            memory_bytes: (8 + n % 3) << 30,
            free_memory_bytes: (n % 7) << 28,
            free_slots: (n % 3) as u32,
            load_permille: (n * 37 % 1001) as u16,
        }
    }

    fn members_of(cell: CellId, range: std::ops::Range<u64>) -> Vec<(PeerId, Capacity)> {
        range
            .map(|n| (synthetic_peer(n), capacity(n)))
            .filter(|(p, _)| cell.contains(p))
            .collect()
    }

    #[test]
    fn summary_is_a_fold_of_member_capacities() {
        let cell = CellId::new(2, 1).unwrap();
        let members = members_of(cell, 0..800);
        let s = CellSummary::fold(cell, members.iter().map(|(p, c)| (p, c)), 3);
        assert_eq!(s.members as usize, members.len());
        let sum = |f: fn(&Capacity) -> u64| members.iter().map(|(_, c)| f(c)).sum::<u64>();
        assert_eq!(s.total_vcpus, sum(|c| c.vcpus.into()));
        assert_eq!(s.free_vcpus, sum(|c| c.free_vcpus.into()));
        assert_eq!(s.total_memory_bytes, sum(|c| c.memory_bytes));
        assert_eq!(s.free_memory_bytes, sum(|c| c.free_memory_bytes));
        assert_eq!(s.free_slots, sum(|c| c.free_slots.into()));
        let mean = sum(|c| c.load_permille.into()) / members.len() as u64;
        assert_eq!(u64::from(s.mean_load_permille), mean);
        let reps = representatives(cell, members.iter().map(|(p, _)| p), 3);
        assert_eq!(s.contact_peers().unwrap(), reps);
        assert_eq!(s.cell().unwrap(), cell);
        s.check_limits().unwrap();
    }

    #[test]
    fn summary_ignores_outsiders_and_duplicates() {
        let cell = CellId::new(1, 0).unwrap();
        let all: Vec<_> = (0..300).map(|n| (synthetic_peer(n), capacity(n))).collect();
        let inside = members_of(cell, 0..300);
        let mut doubled = all.clone();
        doubled.extend(inside.iter().copied());
        let a = CellSummary::fold(cell, all.iter().map(|(p, c)| (p, c)), 3);
        let b = CellSummary::fold(cell, inside.iter().map(|(p, c)| (p, c)), 3);
        let c = CellSummary::fold(cell, doubled.iter().map(|(p, c)| (p, c)), 3);
        assert_eq!(a, b);
        assert_eq!(a, c);
        let empty = CellSummary::fold(cell, std::iter::empty(), 3);
        assert_eq!((empty.members, empty.mean_load_permille), (0, 0));
    }

    /// A one-cell summary signed by its best representative among real identities.
    fn signed_setup() -> (NodeIdentity, SummaryRecord) {
        let ids: Vec<NodeIdentity> = (1..=20).map(identity).collect();
        let cell = CellId::new(0, 0).unwrap();
        let members: Vec<(PeerId, Capacity)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.peer_id(), capacity(i as u64)))
            .collect();
        let summary = CellSummary::fold(cell, members.iter().map(|(p, c)| (p, c)), 3);
        let first = summary.contact_peers().unwrap()[0];
        let signer = ids.into_iter().find(|id| id.peer_id() == first).unwrap();
        let record = SummaryRecord {
            signer: first.to_bytes(),
            issued_at: NOW,
            expires_at: NOW + 600,
            summary,
        };
        (signer, record)
    }

    fn forge(id: &NodeIdentity, domain: &[u8], record: &SummaryRecord) -> Vec<u8> {
        let payload = archive("cell summary", record).unwrap();
        SignedRecord::seal(id, domain, payload).encode().unwrap()
    }

    #[test]
    fn a_signed_summary_verifies_to_the_same_summary() {
        let (signer, record) = signed_setup();
        let bytes = sign_summary(&signer, &record).unwrap().encode().unwrap();
        assert_eq!(
            verify_summary(&bytes, Duration::from_secs(NOW)).unwrap(),
            record
        );
        let err = verify_summary(&bytes, Duration::from_secs(record.expires_at)).unwrap_err();
        assert!(matches!(err, RecordError::Expired { .. }), "{err}");
        let err =
            verify_summary(&bytes, Duration::from_secs(NOW - MAX_CLOCK_SKEW - 1)).unwrap_err();
        assert!(matches!(err, RecordError::FromTheFuture { .. }), "{err}");
    }

    const MAX_CLOCK_SKEW: u64 = crate::records::MAX_CLOCK_SKEW_S;

    #[test]
    fn a_node_record_signature_does_not_verify_as_a_summary() {
        let (signer, record) = signed_setup();
        let bytes = forge(&signer, NODE_RECORD_DOMAIN, &record);
        let err = verify_summary(&bytes, Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn refuses_a_summary_signed_by_a_non_contact() {
        let (_, mut record) = signed_setup();
        let outsider = identity(99);
        record.signer = outsider.peer_id().to_bytes();
        let err = sign_summary(&outsider, &record).unwrap_err();
        assert!(matches!(err, RecordError::SignerNotContact { .. }), "{err}");
        let err = verify_summary(
            &forge(&outsider, CELL_SUMMARY_DOMAIN, &record),
            Duration::from_secs(NOW),
        );
        assert!(
            matches!(err, Err(RecordError::SignerNotContact { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_a_summary_signed_with_another_contacts_name() {
        let (_, record) = signed_setup();
        let impostor = identity(98);
        let err = verify_summary(
            &forge(&impostor, CELL_SUMMARY_DOMAIN, &record),
            Duration::from_secs(NOW),
        );
        assert!(
            matches!(err, Err(RecordError::KeyMismatch { .. })),
            "{err:?}"
        );
        assert!(matches!(
            sign_summary(&impostor, &record),
            Err(RecordError::NotOurs { .. })
        ));
    }

    #[test]
    fn refuses_contacts_outside_the_cell() {
        let (signer, mut record) = signed_setup();
        // At 1 bit, about half of the contacts fall outside cell 1/x; pick the cell the
        // signer is not in.
        let theirs = cell_id(&signer.peer_id(), 1);
        let other = CellId::new(1, theirs.prefix() ^ 1).unwrap();
        record.summary.prefix_bits = 1;
        record.summary.prefix = other.prefix();
        let err = verify_summary(
            &forge(&signer, CELL_SUMMARY_DOMAIN, &record),
            Duration::from_secs(NOW),
        );
        assert!(matches!(err, Err(RecordError::NotInCell { .. })), "{err:?}");
    }

    type Edit = fn(&mut SummaryRecord);

    #[test]
    fn refuses_summary_fields_over_their_limits() {
        let (signer, record) = signed_setup();
        let edits: Vec<(&str, Edit)> = vec![
            ("bits", |r| r.summary.prefix_bits = MAX_PREFIX_BITS + 1),
            ("prefix", |r| r.summary.prefix = 1),
            ("vcpus", |r| {
                r.summary.free_vcpus = r.summary.total_vcpus + 1
            }),
            ("memory", |r| {
                r.summary.free_memory_bytes = r.summary.total_memory_bytes + 1
            }),
            ("load", |r| {
                r.summary.mean_load_permille = MAX_LOAD_PERMILLE + 1
            }),
            ("members", |r| r.summary.members = 2),
            ("contacts", |r| {
                let c = r.summary.contacts[0].clone();
                r.summary.contacts = vec![c; MAX_CONTACTS + 1];
                r.summary.members = 100;
            }),
            ("contact bytes", |r| r.summary.contacts.push(vec![0xFF; 5])),
        ];
        for (name, edit) in edits {
            let mut bad = record.clone();
            edit(&mut bad);
            assert!(sign_summary(&signer, &bad).is_err(), "{name} was signed");
            let err = verify_summary(
                &forge(&signer, CELL_SUMMARY_DOMAIN, &bad),
                Duration::from_secs(NOW),
            );
            assert!(
                matches!(
                    err,
                    Err(RecordError::OutOfRange { .. }
                        | RecordError::TooMany { .. }
                        | RecordError::BadPeerId { .. })
                ),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn refuses_oversized_and_malformed_summaries() {
        let err = verify_summary(
            &vec![0; MAX_SIGNED_SUMMARY_LEN + 1],
            Duration::from_secs(NOW),
        )
        .unwrap_err();
        assert!(matches!(err, RecordError::TooLarge { .. }), "{err}");
        let err = verify_summary(&[0xA5; 200], Duration::from_secs(NOW)).unwrap_err();
        assert!(matches!(err, RecordError::Malformed { .. }), "{err}");
    }
}
