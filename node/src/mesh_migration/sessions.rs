//! Grouping the streams of incoming migrations (pure): a session is opened by its accepted
//! control stream, which says how many streams the session has; data streams join it by
//! their preamble, only from the peer that made the offer, each place once; a session that
//! is not complete by its deadline is dropped with every stream it holds.
//!
//! What this cannot do: tell a slow source from a lost one (the deadline decides).

use std::collections::HashMap;
use std::time::Instant;

/// Why a stream does not join a session.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no migration session {0} is being assembled here")]
    Unknown(String),
    #[error("session {0} belongs to another peer")]
    Stranger(String),
    #[error("stream {index} of session {session} already arrived, or is not in it")]
    Duplicate { session: String, index: u8 },
    #[error("session {0} is already in progress")]
    InProgress(String),
    #[error("{0} incoming migrations are being assembled already; try again later")]
    Full(usize),
}

struct Pending<P, M, T> {
    peer: P,
    meta: M,
    slots: Vec<Option<T>>,
    deadline: Instant,
}

/// Sessions being assembled: `P` names peers, `M` is what the control stream brought (the
/// offer), `T` a stream.
pub struct Sessions<P, M, T> {
    pending: HashMap<[u8; 16], Pending<P, M, T>>,
    max: usize,
}

/// A complete session: what its control stream brought and every stream, control first.
pub struct Complete<P, M, T> {
    pub session: [u8; 16],
    pub peer: P,
    pub meta: M,
    pub streams: Vec<T>,
}

impl<P: PartialEq + Clone, M, T> Sessions<P, M, T> {
    /// At most `max` sessions assembled at once.
    pub fn new(max: usize) -> Self {
        Self {
            pending: HashMap::new(),
            max,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether a new session could open now.
    pub fn can_open(&self, session: &[u8; 16]) -> Result<(), Refusal> {
        if self.pending.contains_key(session) {
            return Err(Refusal::InProgress(novacron_mesh::util::hex::encode(
                session,
            )));
        }
        if self.pending.len() >= self.max {
            return Err(Refusal::Full(self.max));
        }
        Ok(())
    }

    /// Opens a session of `count` streams (control included, >= 2) with its control stream.
    pub fn open(
        &mut self,
        session: [u8; 16],
        peer: P,
        meta: M,
        count: u8,
        control: T,
        deadline: Instant,
    ) -> Result<(), Refusal> {
        self.can_open(&session)?;
        let mut slots: Vec<Option<T>> = (0..count.max(2)).map(|_| None).collect();
        slots[0] = Some(control);
        self.pending.insert(
            session,
            Pending {
                peer,
                meta,
                slots,
                deadline,
            },
        );
        Ok(())
    }

    /// Whether data stream `index` from `peer` would join `session`.
    pub fn check(&self, session: &[u8; 16], peer: &P, index: u8) -> Result<(), Refusal> {
        let p = self
            .pending
            .get(session)
            .ok_or_else(|| Refusal::Unknown(novacron_mesh::util::hex::encode(session)))?;
        if &p.peer != peer {
            return Err(Refusal::Stranger(novacron_mesh::util::hex::encode(session)));
        }
        match p.slots.get(usize::from(index)) {
            Some(None) if index > 0 => Ok(()),
            _ => Err(Refusal::Duplicate {
                session: novacron_mesh::util::hex::encode(session),
                index,
            }),
        }
    }

    /// Adds a data stream; the session when it is complete (it leaves the table). A refused
    /// stream comes back with the reason.
    #[allow(clippy::type_complexity)]
    pub fn add(
        &mut self,
        session: [u8; 16],
        peer: &P,
        index: u8,
        stream: T,
    ) -> Result<Option<Complete<P, M, T>>, (Refusal, T)> {
        if let Err(r) = self.check(&session, peer, index) {
            return Err((r, stream));
        }
        let Some(p) = self.pending.get_mut(&session) else {
            return Err((
                Refusal::Unknown(novacron_mesh::util::hex::encode(&session)),
                stream,
            ));
        };
        p.slots[usize::from(index)] = Some(stream);
        if p.slots.iter().any(Option::is_none) {
            return Ok(None);
        }
        let Some(p) = self.pending.remove(&session) else {
            return Ok(None);
        };
        Ok(Some(Complete {
            session,
            peer: p.peer,
            meta: p.meta,
            streams: p.slots.into_iter().flatten().collect(),
        }))
    }

    /// Drops sessions past their deadline; returns their ids and peers.
    pub fn expire(&mut self, now: Instant) -> Vec<([u8; 16], P)> {
        let late: Vec<[u8; 16]> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        late.into_iter()
            .filter_map(|s| self.pending.remove(&s).map(|p| (s, p.peer)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_session_completes_with_its_streams_in_order() {
        let now = Instant::now();
        let mut s: Sessions<u8, &str, &str> = Sessions::new(4);
        s.open([1; 16], 9, "offer", 3, "c", now + Duration::from_secs(5))
            .unwrap();
        assert!(s.add([1; 16], &9, 2, "d2").unwrap().is_none());
        let done = s.add([1; 16], &9, 1, "d1").ok().flatten().unwrap();
        assert_eq!(done.streams, vec!["c", "d1", "d2"]);
        assert_eq!((done.peer, done.meta), (9, "offer"));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn strangers_duplicates_and_unknown_sessions_are_refused() {
        let now = Instant::now();
        let mut s: Sessions<u8, (), u32> = Sessions::new(4);
        s.open([1; 16], 9, (), 3, 0, now + Duration::from_secs(5))
            .unwrap();
        assert!(matches!(
            s.add([1; 16], &8, 1, 1),
            Err((Refusal::Stranger(_), 1))
        ));
        assert!(matches!(
            s.add([2; 16], &9, 1, 1),
            Err((Refusal::Unknown(_), _))
        ));
        assert!(matches!(
            s.add([1; 16], &9, 0, 1),
            Err((Refusal::Duplicate { .. }, _))
        ));
        assert!(matches!(
            s.add([1; 16], &9, 3, 1),
            Err((Refusal::Duplicate { .. }, _))
        ));
        assert!(s.add([1; 16], &9, 1, 1).unwrap().is_none());
        assert!(matches!(
            s.add([1; 16], &9, 1, 1),
            Err((Refusal::Duplicate { .. }, _))
        ));
        assert!(matches!(
            s.open([1; 16], 9, (), 2, 0, now),
            Err(Refusal::InProgress(_))
        ));
    }

    #[test]
    fn late_sessions_expire_and_the_table_is_bounded() {
        let now = Instant::now();
        let mut s: Sessions<u8, (), u32> = Sessions::new(2);
        s.open([1; 16], 1, (), 2, 0, now + Duration::from_secs(1))
            .unwrap();
        s.open([2; 16], 2, (), 2, 0, now + Duration::from_secs(9))
            .unwrap();
        assert_eq!(s.open([3; 16], 3, (), 2, 0, now), Err(Refusal::Full(2)));
        assert!(s.expire(now).is_empty());
        assert_eq!(s.expire(now + Duration::from_secs(2)), vec![([1; 16], 1)]);
        assert!(s.can_open(&[3; 16]).is_ok());
        assert!(matches!(
            s.add([1; 16], &1, 1, 1),
            Err((Refusal::Unknown(_), _))
        ));
    }
}
