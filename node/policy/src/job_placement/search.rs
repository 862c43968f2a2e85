//! The search for a node to run one replica: cell by cell, ask a few members for offers,
//! confirm the best fit, move on when refused or when a peer stays silent.
//!
//! Pure: the daemon starts a [`PlacementSearch`] with the ranked cells
//! ([`super::rank_cells`]), its own cell's members and the replica's need, carries out the
//! [`SearchAction`]s each call returns (look a cell's members up, ask peers for offers, ask
//! one to confirm, release one, record the placement), reports what came back, and calls
//! [`PlacementSearch::tick`] at [`PlacementSearch::next_deadline`]. Time is a [`Duration`]
//! since the driver's fixed epoch.
//!
//! The order: the node's own cell first when one of its members fits by its gossip (its
//! members are known without a look-up, and gossip is fresher than any summary), then the
//! ranked cells, at most [`SearchLimits::max_cells`] in all. In a cell, the members that fit
//! by their gossip are asked [`SearchLimits::offers_per_round`] at a time, best fit first; a
//! round ends when each asked peer answered or at the offer timeout, and the best fitting
//! offer is asked to confirm. Refused, or silent past the confirm timeout: the round's next
//! offer, then the next round, then the next cell; none left: give up.
//!
//! What it guarantees: one confirmation in flight at a time; never an excluded peer (the
//! nodes holding another replica of the job) asked or confirmed; never a peer asked twice
//! in one search, so a replica is never confirmed on two peers by it. What it cannot: a
//! peer whose confirmation timed out may have taken the replica and its answer been lost.
//! The search then emits [`SearchAction::Release`] (and again if that peer's confirmation
//! arrives late), and the peer must drop a reservation the origin released; if the release
//! is lost too, the peer runs a replica the origin does not count (its result names a
//! replica that was never placed, and the quorum ignores it).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use super::offer::{by_fit, choose_offer, Offer, Room};
use super::Need;
use novacron_mesh::cells::CellId;
use novacron_model::MemberStatus;

/// How far and how long one replica's search goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchLimits {
    /// Most cells tried (the own cell counts when it had a candidate).
    pub max_cells: usize,
    /// Peers asked for an offer at once.
    pub offers_per_round: usize,
    /// How long a cell's member look-up may take before the cell is skipped.
    pub lookup_timeout: Duration,
    /// How long a round waits for offers.
    pub offer_timeout: Duration,
    /// How long a peer asked to confirm may take.
    pub confirm_timeout: Duration,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits {
            max_cells: 4,
            offers_per_round: 3,
            lookup_timeout: Duration::from_secs(5),
            offer_timeout: Duration::from_secs(2),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

/// What one replica's search starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPlan {
    /// The cells to try, best first ([`super::rank_cells`]); the own cell in it is skipped
    /// (its members are given to [`PlacementSearch::start`]).
    pub cells: Vec<CellId>,
    pub own_cell: CellId,
    pub need: Need,
    /// Peers never asked: the nodes holding another replica of the job.
    pub exclude: Vec<String>,
    /// Draws the order among equals (a fresh one per search).
    pub seed: u64,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchAction {
    /// Look `cell`'s members up (its summary's contacts, the DHT) and report
    /// [`PlacementSearch::members_of_cell`].
    LookUpMembers { cell: CellId },
    /// Ask each of `peers` for an offer; report [`PlacementSearch::offer_received`] or
    /// [`PlacementSearch::offer_refused`].
    AskOffers { peers: Vec<String> },
    /// Ask `peer` to take the replica; report [`PlacementSearch::confirmed`] or
    /// [`PlacementSearch::confirm_refused`].
    Confirm { peer: String },
    /// `peer` did not confirm in time, or confirmed too late: tell it to drop the replica.
    Release { peer: String },
    /// The replica is placed on `peer`. The search is over.
    Placed { peer: String },
    /// No peer took the replica. The search is over.
    GiveUp { reason: GiveUpReason },
}

/// Why a search gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// No summary held says a cell has room, and no member of the own cell fits.
    NoCellWithRoom,
    /// Cells were tried and no peer took the replica.
    Exhausted {
        cells_tried: usize,
        peers_asked: usize,
        /// The last reason a peer gave for refusing.
        last_refusal: Option<String>,
    },
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::NoCellWithRoom => {
                f.write_str("no cell has room for the replica (by the summaries held)")
            }
            GiveUpReason::Exhausted {
                cells_tried,
                peers_asked,
                last_refusal,
            } => {
                write!(
                    f,
                    "no peer took the replica ({cells_tried} cells tried, {peers_asked} peers asked)"
                )?;
                match last_refusal {
                    Some(r) => write!(f, "; last refusal: {r}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Phase {
    LookingUp {
        cell: CellId,
        until: Duration,
    },
    Asking {
        waiting: BTreeSet<String>,
        offers: Vec<Offer>,
        until: Duration,
    },
    Confirming {
        peer: String,
        /// The round's other fitting offers, tried next.
        spare: Vec<Offer>,
        until: Duration,
    },
    Placed,
    GaveUp,
}

/// One replica's search; see the module doc.
#[derive(Clone, Debug)]
pub struct PlacementSearch {
    need: Need,
    seed: u64,
    limits: SearchLimits,
    cells: VecDeque<CellId>,
    cells_tried: usize,
    exclude: BTreeSet<String>,
    /// Every peer asked for an offer so far: never asked again.
    asked: BTreeSet<String>,
    /// The current cell's peers not asked yet, best fit last.
    candidates: Vec<String>,
    /// Peers whose confirmation timed out (released).
    released: BTreeSet<String>,
    phase: Phase,
    last_refusal: Option<String>,
}

impl PlacementSearch {
    /// Starts the search at `now`; `own_members` are the members of the own cell as its
    /// gossip reports them. Returns the search and its first actions.
    pub fn start(
        plan: SearchPlan,
        own_members: &[MemberStatus],
        limits: SearchLimits,
        now: Duration,
    ) -> (PlacementSearch, Vec<SearchAction>) {
        let mut seen = BTreeSet::new();
        let cells = plan
            .cells
            .into_iter()
            .filter(|c| *c != plan.own_cell && seen.insert(*c))
            .collect();
        let mut search = PlacementSearch {
            need: plan.need,
            seed: plan.seed,
            limits,
            cells,
            cells_tried: 0,
            exclude: plan.exclude.into_iter().collect(),
            asked: BTreeSet::new(),
            candidates: Vec::new(),
            released: BTreeSet::new(),
            phase: Phase::GaveUp,
            last_refusal: None,
        };
        let mut out = Vec::new();
        search.candidates = search.candidates_from(own_members);
        if search.candidates.is_empty() {
            search.next_cell(now, &mut out);
        } else {
            search.cells_tried = 1;
            search.next_round(now, &mut out);
        }
        (search, out)
    }

    /// The members of `cell` the driver looked up (as their gossip reports them).
    pub fn members_of_cell(
        &mut self,
        cell: CellId,
        members: &[MemberStatus],
        now: Duration,
    ) -> Vec<SearchAction> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::LookingUp { cell: c, .. } if c == cell) {
            self.candidates = self.candidates_from(members);
            self.next_round(now, &mut out);
        }
        out
    }

    /// `peer` offers `offer` (its `peer` field is ignored: the answer is `peer`'s).
    pub fn offer_received(&mut self, peer: &str, offer: Offer, now: Duration) -> Vec<SearchAction> {
        let need = self.need;
        self.answered(peer, now, |offers| {
            let offer = Offer {
                peer: peer.to_string(),
                ..offer
            };
            if offer.fits(need) {
                offers.push(offer);
            }
        })
    }

    /// `peer` will not offer (full, draining, not taking jobs): `reason` in its words.
    pub fn offer_refused(&mut self, peer: &str, reason: &str, now: Duration) -> Vec<SearchAction> {
        let mut refused = false;
        let out = self.answered(peer, now, |_| refused = true);
        if refused {
            self.last_refusal = Some(format!("{peer}: {reason}"));
        }
        out
    }

    /// `peer` took the replica.
    pub fn confirmed(&mut self, peer: &str, _now: Duration) -> Vec<SearchAction> {
        if matches!(&self.phase, Phase::Confirming { peer: p, .. } if p == peer) {
            self.phase = Phase::Placed;
            return vec![SearchAction::Placed {
                peer: peer.to_string(),
            }];
        }
        if self.released.contains(peer) {
            return vec![SearchAction::Release {
                peer: peer.to_string(),
            }];
        }
        Vec::new()
    }

    /// `peer` would not take the replica after all.
    pub fn confirm_refused(
        &mut self,
        peer: &str,
        reason: &str,
        now: Duration,
    ) -> Vec<SearchAction> {
        let mut out = Vec::new();
        if let Phase::Confirming { peer: p, spare, .. } = &mut self.phase {
            if p == peer {
                let spare = std::mem::take(spare);
                self.last_refusal = Some(format!("{peer}: {reason}"));
                self.confirm_next(spare, now, &mut out);
            }
        }
        out
    }

    /// What the timeouts due at `now` call for.
    pub fn tick(&mut self, now: Duration) -> Vec<SearchAction> {
        let mut out = Vec::new();
        if self.next_deadline().is_none_or(|d| now < d) {
            return out;
        }
        match std::mem::replace(&mut self.phase, Phase::GaveUp) {
            Phase::LookingUp { .. } => self.next_cell(now, &mut out),
            Phase::Asking { offers, .. } => self.confirm_next(offers, now, &mut out),
            Phase::Confirming { peer, spare, .. } => {
                self.released.insert(peer.clone());
                out.push(SearchAction::Release { peer });
                self.confirm_next(spare, now, &mut out);
            }
            over @ (Phase::Placed | Phase::GaveUp) => self.phase = over,
        }
        out
    }

    /// When [`Self::tick`] must be called with no report in between; None once the search
    /// is over.
    pub fn next_deadline(&self) -> Option<Duration> {
        match &self.phase {
            Phase::LookingUp { until, .. }
            | Phase::Asking { until, .. }
            | Phase::Confirming { until, .. } => Some(*until),
            Phase::Placed | Phase::GaveUp => None,
        }
    }

    /// Whether the search placed the replica or gave up.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Placed | Phase::GaveUp)
    }

    /// The peer being asked to confirm, if one is.
    pub fn confirming(&self) -> Option<&str> {
        match &self.phase {
            Phase::Confirming { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// The live members that fit by their gossip and may be asked, best fit last.
    fn candidates_from(&self, members: &[MemberStatus]) -> Vec<String> {
        let rooms = members
            .iter()
            .filter(|m| m.live)
            .filter(|m| !self.exclude.contains(&m.peer_id) && !self.asked.contains(&m.peer_id))
            .map(Room::of_member);
        let mut ordered: Vec<String> = by_fit(rooms, self.need, &[], self.seed)
            .into_iter()
            .map(|r| r.peer.to_string())
            .collect();
        ordered.reverse();
        ordered
    }

    /// Records `peer`'s answer in the current round (`record` adds its offer, if any); the
    /// round closes when every peer asked has answered. Answers from peers not waited on
    /// (late, unasked) change nothing.
    fn answered(
        &mut self,
        peer: &str,
        now: Duration,
        record: impl FnOnce(&mut Vec<Offer>),
    ) -> Vec<SearchAction> {
        let mut out = Vec::new();
        if let Phase::Asking {
            waiting, offers, ..
        } = &mut self.phase
        {
            if waiting.remove(peer) {
                record(offers);
                if waiting.is_empty() {
                    let offers = std::mem::take(offers);
                    self.confirm_next(offers, now, &mut out);
                }
            }
        }
        out
    }

    /// Asks the best of `offers` to confirm, or starts the next round.
    fn confirm_next(&mut self, mut offers: Vec<Offer>, now: Duration, out: &mut Vec<SearchAction>) {
        offers.retain(|o| !self.exclude.contains(&o.peer) && !self.released.contains(&o.peer));
        match choose_offer(&offers, self.need, &[], self.seed) {
            Some(i) => {
                let peer = offers.swap_remove(i).peer;
                out.push(SearchAction::Confirm { peer: peer.clone() });
                self.phase = Phase::Confirming {
                    peer,
                    spare: offers,
                    until: now.saturating_add(self.limits.confirm_timeout),
                };
            }
            None => self.next_round(now, out),
        }
    }

    /// Asks the current cell's next candidates, or moves to the next cell.
    fn next_round(&mut self, now: Duration, out: &mut Vec<SearchAction>) {
        let mut peers = Vec::new();
        while peers.len() < self.limits.offers_per_round.max(1) {
            let Some(peer) = self.candidates.pop() else {
                break;
            };
            if !self.exclude.contains(&peer) && self.asked.insert(peer.clone()) {
                peers.push(peer);
            }
        }
        if peers.is_empty() {
            return self.next_cell(now, out);
        }
        self.phase = Phase::Asking {
            waiting: peers.iter().cloned().collect(),
            offers: Vec::new(),
            until: now.saturating_add(self.limits.offer_timeout),
        };
        out.push(SearchAction::AskOffers { peers });
    }

    /// Looks the next cell's members up, or gives up.
    fn next_cell(&mut self, now: Duration, out: &mut Vec<SearchAction>) {
        self.candidates.clear();
        let cell = (self.cells_tried < self.limits.max_cells.max(1))
            .then(|| self.cells.pop_front())
            .flatten();
        match cell {
            Some(cell) => {
                self.cells_tried += 1;
                self.phase = Phase::LookingUp {
                    cell,
                    until: now.saturating_add(self.limits.lookup_timeout),
                };
                out.push(SearchAction::LookUpMembers { cell });
            }
            None => {
                self.phase = Phase::GaveUp;
                let reason = if self.cells_tried == 0 {
                    GiveUpReason::NoCellWithRoom
                } else {
                    GiveUpReason::Exhausted {
                        cells_tried: self.cells_tried,
                        peers_asked: self.asked.len(),
                        last_refusal: self.last_refusal.clone(),
                    }
                };
                out.push(SearchAction::GiveUp { reason });
            }
        }
    }
}

#[cfg(test)]
mod tests;
