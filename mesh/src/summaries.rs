//! Cell summaries as the mesh carries them: which node publishes one, how it is built, which
//! of several a reader keeps, and which one a DHT slot holds. Pure (no IO, no clock: callers
//! pass `now`, a `Duration` since the unix epoch), so the node and the simulator run the same code.
//!
//! - [`is_representative`], [`build_summary_record`]: each publication tick, a member of a
//!   cell that ranks among its first `k` rendezvous representatives folds the live members'
//!   capacities into a [`SummaryRecord`] naming those `k` as contacts, and signs it
//!   ([`crate::cells::sign_summary`]).
//! - [`SummaryBook`]: the verified summaries a node has heard (gossipsub, DHT): the newest per
//!   (cell, signer), at most [`MAX_CONTACTS`] signers per cell and a bounded number of cells.
//! - [`SummaryBook::consensus`]: the one summary of a cell to trust when its representatives
//!   disagree (the median member count).
//! - [`dht_prefers`]: the DHT keeps one value per key; which of two summaries of a cell wins.
//! - [`estimate_mesh_size_from_book`]: the mesh size from every cell the book knows.
//!
//! What this cannot do: a summary proves only that some member of the cell who lists itself
//! as a contact signed it. Nothing here knows the cell's real member list, so a node that
//! grinds a key into a cell and ranks itself well (about members × 2^bits key generations to
//! beat the best honest representative) can publish numbers of its choice; the median of
//! several signers limits what one liar moves, it does not remove it.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p_identity::PeerId;

use crate::cells::{
    estimate_from_cells, representatives, CellId, CellSummary, SummaryRecord, MAX_CONTACTS,
};
use crate::records::{Capacity, RecordError, MAX_RECORD_LIFETIME_S};

/// Representatives per cell that publish its summary (and that each summary names).
pub const DEFAULT_REPRESENTATIVES: usize = 3;

/// Lifetime of a published summary: several publication ticks, so one missed tick (or a
/// representative that just left) does not empty the DHT slot.
pub const DEFAULT_SUMMARY_TTL_S: u64 = 10 * 60;

/// Cells a [`SummaryBook`] tracks by default: 16 times the 256 cells of a 50,000-node mesh.
pub const DEFAULT_BOOK_CELLS: usize = 4096;

/// Why a summary was not built or not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    #[error("{peer} is not in cell {cell}")]
    NotInCell { peer: String, cell: CellId },
    #[error("{peer} is not among the {k} representatives of cell {cell}")]
    NotRepresentative {
        peer: String,
        cell: CellId,
        k: usize,
    },
    #[error("summary lifetime of {ttl} s is not within 1..={limit} s")]
    BadTtl { ttl: u64, limit: u64 },
    #[error("summary of cell {cell} by {signer} expired at {expires_at}, now is {now}")]
    Expired {
        cell: CellId,
        signer: String,
        expires_at: u64,
        now: u64,
    },
    #[error("summary of cell {cell} by {signer} issued at {got} is not newer than the one held (issued at {have})")]
    Stale {
        cell: CellId,
        signer: String,
        have: u64,
        got: u64,
    },
    #[error("cell {cell} already holds {limit} signers that rank before {signer}")]
    SignersFull {
        cell: CellId,
        signer: String,
        limit: usize,
    },
    #[error("summary book is full ({limit} cells); prune it first")]
    BookFull { limit: usize },
    #[error("summary: {0}")]
    Record(#[from] RecordError),
}

/// Whether `me` is one of the first `k` rendezvous representatives of `cell`, among the
/// `live` members inside the cell and `me` (who need not be listed). False when `me` is not in
/// the cell.
pub fn is_representative<'a>(
    me: &PeerId,
    cell: CellId,
    live: impl IntoIterator<Item = &'a PeerId>,
    k: usize,
) -> bool {
    if !cell.contains(me) {
        return false;
    }
    let inside = live
        .into_iter()
        .filter(|p| cell.contains(p))
        .copied()
        .chain(std::iter::once(*me))
        .collect::<Vec<PeerId>>();
    representatives(cell, &inside, k).contains(me)
}

/// The summary `me` publishes for `cell`: the fold of `members` (which must list `me` with
/// its capacity; peers outside the cell are ignored) naming the first `k` representatives
/// (at most [`MAX_CONTACTS`]) as contacts, issued at `now` (since the unix epoch) and valid for `ttl` (both in whole seconds on the
/// wire).
/// Refuses when `me` is not among those contacts or the lifetime is out of range.
pub fn build_summary_record<'a>(
    cell: CellId,
    members: impl IntoIterator<Item = (&'a PeerId, &'a Capacity)>,
    me: &PeerId,
    k: usize,
    now: Duration,
    ttl: Duration,
) -> Result<SummaryRecord, SummaryError> {
    let (now, ttl_s) = (now.as_secs(), ttl.as_secs());
    if !cell.contains(me) {
        return Err(SummaryError::NotInCell {
            peer: me.to_string(),
            cell,
        });
    }
    if ttl_s == 0 || ttl_s > MAX_RECORD_LIFETIME_S {
        return Err(SummaryError::BadTtl {
            ttl: ttl_s,
            limit: MAX_RECORD_LIFETIME_S,
        });
    }
    let summary = CellSummary::fold(cell, members, k);
    let me_bytes = me.to_bytes();
    if !summary.contacts.contains(&me_bytes) {
        return Err(SummaryError::NotRepresentative {
            peer: me.to_string(),
            cell,
            k: k.min(MAX_CONTACTS),
        });
    }
    Ok(SummaryRecord {
        signer: me_bytes,
        issued_at: now,
        expires_at: now.saturating_add(ttl_s),
        summary,
    })
}

/// The cell and signer of a summary (its fields checked, not its signature).
fn cell_and_signer(record: &SummaryRecord) -> Result<(CellId, PeerId), RecordError> {
    let signer = record.check_limits()?;
    Ok((record.summary.cell()?, signer))
}

/// Whether `a` ranks before `b` as a representative of `cell` (rendezvous order).
fn ranks_before(cell: CellId, a: &PeerId, b: &PeerId) -> bool {
    a != b && representatives(cell, [a, b], 1).first() == Some(a)
}

/// Which of two summaries of one cell a DHT slot keeps (libp2p-kad holds one value per key):
/// `incoming` replaces `held` when its signer ranks before `held`'s in the cell's rendezvous
/// order, or when both come from the same signer and `incoming` was issued later. An
/// expired `held` is the caller's to drop first (it no longer verifies).
///
/// The rule is a total order on (signer rank, issue time), so every storing peer ends with the
/// same summary whatever order the puts arrive in, and it is the first representative's —
/// which its own ticks keep fresh. "Newest wins" would let anyone who issues a few minutes in
/// the future (the allowed clock skew) hold the slot with no work; "most members wins" would
/// let anyone inflate. Rank costs a would-be holder a ground key (see the module docs).
/// Summaries of different cells never compare: `false`.
pub fn dht_prefers(held: &SummaryRecord, incoming: &SummaryRecord) -> bool {
    let (Ok((cell, held_by)), Ok((incoming_cell, incoming_by))) =
        (cell_and_signer(held), cell_and_signer(incoming))
    else {
        return false;
    };
    if cell != incoming_cell {
        return false;
    }
    if held_by == incoming_by {
        return incoming.issued_at > held.issued_at;
    }
    ranks_before(cell, &incoming_by, &held_by)
}

/// The verified summaries a node holds: the newest per (cell, signer).
///
/// Feed it only what [`crate::cells::verify_summary`] returned: it checks issue times,
/// expiry and caps, not signatures. Caps: `max_cells` cells (a summary of a new cell is
/// refused while the book is full: prune first) and [`MAX_CONTACTS`] signers per cell — when a
/// cell is full, a new signer displaces the worst-ranked one only if it ranks before it, so
/// the cell's real representatives keep their places against a flood of fresh signers.
#[derive(Debug, Clone)]
pub struct SummaryBook {
    cells: BTreeMap<CellId, BTreeMap<PeerId, SummaryRecord>>,
    max_cells: usize,
}

impl Default for SummaryBook {
    fn default() -> Self {
        SummaryBook::new(DEFAULT_BOOK_CELLS)
    }
}

impl SummaryBook {
    /// An empty book tracking at most `max_cells` cells.
    pub fn new(max_cells: usize) -> SummaryBook {
        SummaryBook {
            cells: BTreeMap::new(),
            max_cells,
        }
    }

    /// Keeps `record` if it is the newest of its (cell, signer) and fits the caps; returns the
    /// summary it replaced (the signer's older one, or a displaced worse-ranked signer's).
    pub fn insert(
        &mut self,
        record: SummaryRecord,
        now: Duration,
    ) -> Result<Option<SummaryRecord>, SummaryError> {
        let (cell, signer) = cell_and_signer(&record)?;
        let now = now.as_secs();
        if now >= record.expires_at {
            return Err(SummaryError::Expired {
                cell,
                signer: signer.to_string(),
                expires_at: record.expires_at,
                now,
            });
        }
        if !self.cells.contains_key(&cell) && self.cells.len() >= self.max_cells {
            return Err(SummaryError::BookFull {
                limit: self.max_cells,
            });
        }
        let signers = self.cells.entry(cell).or_default();
        if let Some(have) = signers.get(&signer) {
            if record.issued_at <= have.issued_at {
                return Err(SummaryError::Stale {
                    cell,
                    signer: signer.to_string(),
                    have: have.issued_at,
                    got: record.issued_at,
                });
            }
            return Ok(signers.insert(signer, record));
        }
        if signers.len() < MAX_CONTACTS {
            signers.insert(signer, record);
            return Ok(None);
        }
        let candidates = signers.keys().chain(std::iter::once(&signer));
        let kept = representatives(cell, candidates, MAX_CONTACTS);
        let Some(out) = signers.keys().find(|p| !kept.contains(p)).copied() else {
            return Err(SummaryError::SignersFull {
                cell,
                signer: signer.to_string(),
                limit: MAX_CONTACTS,
            });
        };
        let displaced = signers.remove(&out);
        signers.insert(signer, record);
        Ok(displaced)
    }

    /// Drops every summary expired at `now` (and cells left empty); returns how many went.
    pub fn prune(&mut self, now: Duration) -> usize {
        let now = now.as_secs();
        let mut gone = 0;
        self.cells.retain(|_, signers| {
            let before = signers.len();
            signers.retain(|_, r| now < r.expires_at);
            gone += before - signers.len();
            !signers.is_empty()
        });
        gone
    }

    /// The summaries of `cell`, one per signer, best-ranked signer first.
    pub fn for_cell(&self, cell: CellId) -> Vec<&SummaryRecord> {
        let Some(signers) = self.cells.get(&cell) else {
            return Vec::new();
        };
        representatives(cell, signers.keys(), signers.len())
            .iter()
            .filter_map(|p| signers.get(p))
            .collect()
    }

    /// Every summary held, by cell then signer.
    pub fn all(&self) -> impl Iterator<Item = &SummaryRecord> {
        self.cells.values().flat_map(|s| s.values())
    }

    /// The cells with at least one summary.
    pub fn cells(&self) -> impl Iterator<Item = CellId> + '_ {
        self.cells.keys().copied()
    }

    /// The summary of `cell` to trust when its signers disagree: order them by member count
    /// and take the median — with an even number, the lower of the two middle ones, so a
    /// liar facing one honest signer can shrink the cell but not inflate it (shrinking only
    /// leaves capacity unused). Equal member counts go to the newest, then the best-ranked
    /// signer. The other fields come from the chosen summary as a whole (they are one
    /// signer's consistent view, not a per-field median). With three signers one liar cannot
    /// move the count outside the honest two's range; with one signer this is that one.
    pub fn consensus(&self, cell: CellId) -> Option<&SummaryRecord> {
        let signers = self.cells.get(&cell)?;
        let rank: Vec<PeerId> = representatives(cell, signers.keys(), MAX_CONTACTS);
        let position = |p: &PeerId| rank.iter().position(|r| r == p).unwrap_or(usize::MAX);
        let mut ordered: Vec<(&PeerId, &SummaryRecord)> = signers.iter().collect();
        ordered.sort_by(|(pa, a), (pb, b)| {
            a.summary
                .members
                .cmp(&b.summary.members)
                .then(b.issued_at.cmp(&a.issued_at))
                .then(position(pa).cmp(&position(pb)))
        });
        let middle = ordered.len().checked_sub(1)? / 2;
        ordered.get(middle).map(|(_, r)| *r)
    }

    /// Summaries held, all cells together.
    pub fn len(&self) -> usize {
        self.cells.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// The mesh size from the [`SummaryBook::consensus`] of every cell in the book, pooled with
/// `own` (one's own cell's `(members, prefix_bits)`, when known) by
/// [`estimate_from_cells`]. `None` when there is nothing to pool. Cells of different prefix
/// lengths mix fine: each estimates the whole mesh.
pub fn estimate_mesh_size_from_book(book: &SummaryBook, own: Option<(u64, u8)>) -> Option<u64> {
    let heard = book
        .cells()
        .filter_map(|cell| book.consensus(cell))
        .map(|r| (u64::from(r.summary.members), r.summary.prefix_bits));
    estimate_from_cells(heard.chain(own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cells::{cell_id, sign_summary, verify_summary};
    use crate::identity::NodeIdentity;
    use crate::records::tests::{identity, NOW};

    fn capacity(n: u64) -> Capacity {
        Capacity {
            vcpus: 8,
            free_vcpus: (n % 8) as u32,
            memory_bytes: 16 << 30,
            free_memory_bytes: (n % 16) << 30,
            free_slots: 2,
            load_permille: (n * 97 % 1001) as u16,
        }
    }

    fn whole() -> CellId {
        CellId::new(0, 0).unwrap()
    }

    /// Identities 1..=n, all in the one cell of 0 bits.
    fn ids(n: u8) -> Vec<NodeIdentity> {
        (1..=n).map(identity).collect()
    }

    fn members(ids: &[NodeIdentity]) -> Vec<(PeerId, Capacity)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (id.peer_id(), capacity(i as u64)))
            .collect()
    }

    /// A summary of `cell` signed by `signer`'s peer id (contacts: the signer and the
    /// cell's best-ranked members), with `members` as its count.
    fn summary_by(signer: &PeerId, cell: CellId, members: u32, issued_at: u64) -> SummaryRecord {
        SummaryRecord {
            signer: signer.to_bytes(),
            issued_at,
            expires_at: issued_at + 600,
            summary: CellSummary {
                prefix_bits: cell.prefix_bits(),
                prefix: cell.prefix(),
                members,
                total_vcpus: 8 * u64::from(members),
                free_vcpus: 0,
                total_memory_bytes: 0,
                free_memory_bytes: 0,
                free_slots: 0,
                mean_load_permille: 0,
                contacts: vec![signer.to_bytes()],
            },
        }
    }

    #[test]
    fn only_the_first_k_members_are_representatives() {
        let ids = ids(12);
        let peers: Vec<PeerId> = ids.iter().map(NodeIdentity::peer_id).collect();
        let reps = representatives(whole(), &peers, 3);
        for p in &peers {
            assert_eq!(
                is_representative(p, whole(), &peers, 3),
                reps.contains(p),
                "{p}"
            );
        }
        assert_eq!(
            peers
                .iter()
                .filter(|p| is_representative(p, whole(), &peers, 3))
                .count(),
            3
        );
        // `me` counts whether it is listed or not; alone, it is its cell's representative.
        let others: Vec<PeerId> = peers.iter().copied().filter(|p| *p != reps[0]).collect();
        assert!(is_representative(&reps[0], whole(), &others, 3));
        assert!(is_representative(&peers[5], whole(), [], 1));
        // Outside its cell, never; members outside the cell do not count.
        let cell = cell_id(&peers[0], 1);
        let sibling = CellId::new(1, cell.prefix() ^ 1).unwrap();
        assert!(!is_representative(&peers[0], sibling, &peers, 3));
        let inside: Vec<PeerId> = peers.iter().copied().filter(|p| cell.contains(p)).collect();
        for p in &inside {
            assert_eq!(
                is_representative(p, cell, &peers, 2),
                is_representative(p, cell, &inside, 2)
            );
        }
    }

    #[test]
    fn a_representative_builds_a_summary_that_signs_and_verifies() {
        let ids = ids(10);
        let members = members(&ids);
        let peers: Vec<PeerId> = ids.iter().map(NodeIdentity::peer_id).collect();
        let reps = representatives(whole(), &peers, DEFAULT_REPRESENTATIVES);
        let me = ids.iter().find(|i| i.peer_id() == reps[1]).unwrap();
        let record = build_summary_record(
            whole(),
            members.iter().map(|(p, c)| (p, c)),
            &me.peer_id(),
            DEFAULT_REPRESENTATIVES,
            Duration::from_secs(NOW),
            Duration::from_secs(DEFAULT_SUMMARY_TTL_S),
        )
        .unwrap();
        assert_eq!(record.summary.members, 10);
        assert_eq!(record.summary.contact_peers().unwrap(), reps);
        assert_eq!(record.expires_at, NOW + DEFAULT_SUMMARY_TTL_S);
        let bytes = sign_summary(me, &record).unwrap().encode().unwrap();
        assert_eq!(
            verify_summary(&bytes, Duration::from_secs(NOW)).unwrap(),
            record
        );

        // A member outside the first k, a peer of another cell and bad lifetimes are refused.
        let not_rep = ids.iter().find(|i| !reps.contains(&i.peer_id())).unwrap();
        let build = |me: &PeerId, ttl| {
            build_summary_record(
                whole(),
                members.iter().map(|(p, c)| (p, c)),
                me,
                DEFAULT_REPRESENTATIVES,
                Duration::from_secs(NOW),
                ttl,
            )
        };
        assert!(matches!(
            build(&not_rep.peer_id(), Duration::from_secs(600)),
            Err(SummaryError::NotRepresentative { k: 3, .. })
        ));
        assert!(matches!(
            build(&me.peer_id(), Duration::from_secs(0)),
            Err(SummaryError::BadTtl { .. })
        ));
        assert!(matches!(
            build(
                &me.peer_id(),
                Duration::from_secs(MAX_RECORD_LIFETIME_S + 1)
            ),
            Err(SummaryError::BadTtl { .. })
        ));
        let cell = cell_id(&peers[0], 1);
        let sibling = CellId::new(1, cell.prefix() ^ 1).unwrap();
        let err = build_summary_record(
            sibling,
            [],
            &peers[0],
            3,
            Duration::from_secs(NOW),
            Duration::from_secs(600),
        )
        .unwrap_err();
        assert!(matches!(err, SummaryError::NotInCell { .. }), "{err}");
    }

    #[test]
    fn the_book_keeps_the_newest_per_signer_and_prunes_expired() {
        let peers: Vec<PeerId> = ids(3).iter().map(NodeIdentity::peer_id).collect();
        let mut book = SummaryBook::default();
        assert!(book.is_empty());
        assert_eq!(
            book.insert(
                summary_by(&peers[0], whole(), 10, NOW),
                Duration::from_secs(NOW)
            ),
            Ok(None)
        );
        let err = book
            .insert(
                summary_by(&peers[0], whole(), 11, NOW),
                Duration::from_secs(NOW),
            )
            .unwrap_err();
        assert!(matches!(err, SummaryError::Stale { .. }), "{err}");
        let replaced = book
            .insert(
                summary_by(&peers[0], whole(), 12, NOW + 5),
                Duration::from_secs(NOW),
            )
            .unwrap();
        assert_eq!(replaced.map(|r| r.summary.members), Some(10));
        book.insert(
            summary_by(&peers[1], whole(), 13, NOW + 100),
            Duration::from_secs(NOW),
        )
        .unwrap();
        assert_eq!(book.len(), 2);
        assert_eq!(book.for_cell(whole()).len(), 2);
        assert_eq!(book.all().count(), 2);
        assert!(book.for_cell(CellId::new(1, 0).unwrap()).is_empty());

        let err = book
            .insert(
                summary_by(&peers[2], whole(), 1, NOW - 600),
                Duration::from_secs(NOW),
            )
            .unwrap_err();
        assert!(matches!(err, SummaryError::Expired { .. }), "{err}");
        // The first expires at NOW + 605, the second at NOW + 700.
        assert_eq!(book.prune(Duration::from_secs(NOW + 604)), 0);
        assert_eq!(book.prune(Duration::from_secs(NOW + 605)), 1);
        assert_eq!(book.for_cell(whole())[0].summary.members, 13);
        assert_eq!(book.prune(Duration::from_secs(NOW + 700)), 1);
        assert!(book.is_empty());
        assert_eq!(book.cells().count(), 0);
    }

    #[test]
    fn the_book_refuses_unchecked_fields() {
        let peer = identity(1).peer_id();
        let mut bad = summary_by(&peer, whole(), 10, NOW);
        bad.summary.contacts = vec![identity(2).peer_id().to_bytes()];
        let err = SummaryBook::default()
            .insert(bad, Duration::from_secs(NOW))
            .unwrap_err();
        assert!(
            matches!(
                err,
                SummaryError::Record(RecordError::SignerNotContact { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_full_cell_keeps_its_best_ranked_signers() {
        let peers: Vec<PeerId> = ids(MAX_CONTACTS as u8 + 4)
            .iter()
            .map(NodeIdentity::peer_id)
            .collect();
        let best = representatives(whole(), &peers, MAX_CONTACTS);
        let worst: Vec<PeerId> = peers
            .iter()
            .copied()
            .filter(|p| !best.contains(p))
            .collect();
        // The worst-ranked arrive first and fill the cell...
        let mut book = SummaryBook::default();
        let mut order = worst.clone();
        order.extend(best.iter().copied());
        let mut displaced = 0;
        for p in &order {
            if let Some(old) = book
                .insert(summary_by(p, whole(), 10, NOW), Duration::from_secs(NOW))
                .unwrap()
            {
                assert!(worst.iter().any(|w| w.to_bytes() == old.signer));
                displaced += 1;
            }
        }
        assert_eq!(displaced, worst.len());
        // ...and end up displaced by the best-ranked, who keep their places.
        let held: Vec<Vec<u8>> = book
            .for_cell(whole())
            .iter()
            .map(|r| r.signer.clone())
            .collect();
        assert_eq!(held.len(), MAX_CONTACTS);
        assert!(best.iter().all(|b| held.contains(&b.to_bytes())));
        for w in &worst {
            let err = book
                .insert(
                    summary_by(w, whole(), 10, NOW + 1),
                    Duration::from_secs(NOW),
                )
                .unwrap_err();
            assert!(matches!(err, SummaryError::SignersFull { .. }), "{err}");
        }
    }

    #[test]
    fn the_book_tracks_a_bounded_number_of_cells() {
        let peers: Vec<PeerId> = ids(40).iter().map(NodeIdentity::peer_id).collect();
        let mut book = SummaryBook::new(2);
        let mut cells = Vec::new();
        for p in &peers {
            let cell = cell_id(p, 3);
            if cells.contains(&cell) {
                continue;
            }
            let result = book.insert(summary_by(p, cell, 5, NOW), Duration::from_secs(NOW));
            if cells.len() < 2 {
                assert_eq!(result, Ok(None));
                cells.push(cell);
            } else {
                assert_eq!(result, Err(SummaryError::BookFull { limit: 2 }));
            }
        }
        assert_eq!(book.cells().collect::<Vec<_>>().len(), 2);
    }

    #[test]
    fn consensus_is_the_median_member_count() {
        let peers: Vec<PeerId> = ids(4).iter().map(NodeIdentity::peer_id).collect();
        let mut book = SummaryBook::default();
        assert!(book.consensus(whole()).is_none());
        book.insert(
            summary_by(&peers[0], whole(), 150, NOW),
            Duration::from_secs(NOW),
        )
        .unwrap();
        assert_eq!(book.consensus(whole()).unwrap().summary.members, 150);
        // One liar inflating against one honest signer: the lower one.
        book.insert(
            summary_by(&peers[1], whole(), 5000, NOW),
            Duration::from_secs(NOW),
        )
        .unwrap();
        assert_eq!(book.consensus(whole()).unwrap().summary.members, 150);
        // Three: the median, whichever way the liar lies.
        book.insert(
            summary_by(&peers[2], whole(), 160, NOW),
            Duration::from_secs(NOW),
        )
        .unwrap();
        assert_eq!(book.consensus(whole()).unwrap().summary.members, 160);
        book.insert(
            summary_by(&peers[1], whole(), 1, NOW + 1),
            Duration::from_secs(NOW),
        )
        .unwrap();
        assert_eq!(book.consensus(whole()).unwrap().summary.members, 150);
        // Equal counts: the newest.
        book.insert(
            summary_by(&peers[3], whole(), 150, NOW + 9),
            Duration::from_secs(NOW),
        )
        .unwrap();
        let chosen = book.consensus(whole()).unwrap();
        assert_eq!(
            (chosen.summary.members, chosen.issued_at),
            (150, NOW + 9),
            "four signers: 1, 150, 150 (newer), 160 -> the lower middle, the newer of equals"
        );
    }

    #[test]
    fn the_dht_slot_ends_with_the_same_summary_whatever_the_order() {
        let peers: Vec<PeerId> = ids(5).iter().map(NodeIdentity::peer_id).collect();
        let records: Vec<SummaryRecord> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                [0u64, 30].map(|dt| summary_by(p, whole(), 100 + i as u32, NOW + dt))
            })
            .collect();
        let settle = |order: &[usize]| {
            let mut held: Option<&SummaryRecord> = None;
            for &i in order {
                let incoming = &records[i];
                if held.is_none_or(|h| dht_prefers(h, incoming)) {
                    held = Some(incoming);
                }
            }
            held.cloned()
        };
        let forward: Vec<usize> = (0..records.len()).collect();
        let winner = settle(&forward).unwrap();
        let best = representatives(whole(), &peers, 1)[0];
        assert_eq!(winner.signer, best.to_bytes());
        assert_eq!(winner.issued_at, NOW + 30, "the best signer's newest");
        for seed in 0..20u64 {
            let mut order = forward.clone();
            order.sort_by_key(|i| blake3::hash(&[seed as u8, *i as u8]).as_bytes()[0]);
            assert_eq!(settle(&order).as_ref(), Some(&winner), "order {order:?}");
        }
        // Another cell never replaces.
        let other = summary_by(&best, cell_id(&best, 2), 5, NOW + 60);
        assert!(!dht_prefers(&winner, &other));
    }

    #[test]
    fn mesh_size_pools_every_cells_consensus() {
        let peers: Vec<PeerId> = ids(30).iter().map(NodeIdentity::peer_id).collect();
        let mut book = SummaryBook::default();
        assert_eq!(estimate_mesh_size_from_book(&book, None), None);
        assert_eq!(estimate_mesh_size_from_book(&book, Some((7, 0))), Some(7));
        // Two cells at 1 bit: 100 and 120 members -> 200 and 240 -> 220.
        let c0 = peers.iter().find(|p| cell_id(p, 1).prefix() == 0).unwrap();
        let c1 = peers.iter().find(|p| cell_id(p, 1).prefix() == 1).unwrap();
        book.insert(
            summary_by(c0, cell_id(c0, 1), 100, NOW),
            Duration::from_secs(NOW),
        )
        .unwrap();
        book.insert(
            summary_by(c1, cell_id(c1, 1), 120, NOW),
            Duration::from_secs(NOW),
        )
        .unwrap();
        assert_eq!(estimate_mesh_size_from_book(&book, None), Some(220));
        assert_eq!(
            estimate_mesh_size_from_book(&book, Some((110, 1))),
            Some(220)
        );
    }
}
