//! Admission: what the frames of one cell may make chitchat hold (see the module doc of
//! [`super`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::{
    CellWireError, Envelope, ShortId, WireNodeId, MAX_GENERATIONS_PER_MEMBER, MAX_KEYS_PER_MEMBER,
};
use crate::cells::CellId;

#[derive(Debug, Default)]
struct Admitted {
    generations: BTreeSet<u64>,
    keys: BTreeSet<String>,
    /// When it was admitted (since the driver's epoch).
    since: Duration,
}

/// What the frames of one cell may make chitchat hold (see the module doc). Sans-IO: the
/// caller passes `now`, the time since its epoch.
#[derive(Debug)]
pub struct Admission {
    cell: CellId,
    max_members: usize,
    members: HashMap<ShortId, Admitted>,
}

impl Admission {
    pub fn new(cell: CellId, max_members: usize) -> Admission {
        Admission {
            cell,
            max_members,
            members: HashMap::new(),
        }
    }

    /// Admits everything `env` mentions or refuses the whole frame (nothing is recorded then).
    pub fn admit(&mut self, env: &Envelope, now: Duration) -> Result<(), CellWireError> {
        let mut new_members: BTreeSet<ShortId> = BTreeSet::new();
        let mut new_gens: HashMap<ShortId, BTreeSet<u64>> = HashMap::new();
        let mut new_keys: HashMap<ShortId, BTreeSet<&str>> = HashMap::new();
        for node in env.nodes() {
            if !node.id.in_cell(self.cell) {
                return Err(CellWireError::OutsideCell(node.id));
            }
            let known = self.members.get(&node.id);
            if known.is_none() && new_members.insert(node.id) {
                let total = self.members.len() + new_members.len();
                if total > self.max_members {
                    return Err(CellWireError::MemberCap(node.id, self.max_members));
                }
            }
            let have = known.map_or(0, |a| a.generations.len());
            let known_gen = known.is_some_and(|a| a.generations.contains(&node.generation));
            if !known_gen {
                let gens = new_gens.entry(node.id).or_default();
                gens.insert(node.generation);
                if have + gens.len() > MAX_GENERATIONS_PER_MEMBER {
                    return Err(CellWireError::GenerationCap(
                        node.id,
                        MAX_GENERATIONS_PER_MEMBER,
                    ));
                }
            }
        }
        for (id, key) in env.keys() {
            let known = self.members.get(id);
            if known.is_some_and(|a| a.keys.contains(key)) {
                continue;
            }
            let have = known.map_or(0, |a| a.keys.len());
            let keys = new_keys.entry(*id).or_default();
            keys.insert(key);
            if have + keys.len() > MAX_KEYS_PER_MEMBER {
                return Err(CellWireError::KeyCap(*id, MAX_KEYS_PER_MEMBER));
            }
        }
        for id in new_members {
            self.members.insert(
                id,
                Admitted {
                    since: now,
                    ..Admitted::default()
                },
            );
        }
        for (id, gens) in new_gens {
            if let Some(a) = self.members.get_mut(&id) {
                a.generations.extend(gens);
            }
        }
        for (id, keys) in new_keys {
            if let Some(a) = self.members.get_mut(&id) {
                a.keys.extend(keys.into_iter().map(str::to_owned));
            }
        }
        Ok(())
    }

    /// Forgets what chitchat no longer holds: generations not in `held`, and members with
    /// none left that were admitted more than `min_age` ago (younger ones may still be on
    /// their way to chitchat).
    pub fn retain(&mut self, held: &BTreeSet<WireNodeId>, now: Duration, min_age: Duration) {
        self.members.retain(|id, a| {
            a.generations.retain(|g| {
                held.contains(&WireNodeId {
                    id: *id,
                    generation: *g,
                })
            });
            !a.generations.is_empty() || now.saturating_sub(a.since) < min_age
        });
    }

    /// Members admitted now.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell_wire::fixtures::*;
    use crate::cells::cell_id;

    #[test]
    fn admission_caps_members_generations_keys_and_the_cell() {
        let everyone = CellId::new(0, 0).unwrap();
        let mut adm = Admission::new(everyone, 3);
        let three = ack_of(vec![delta(1, &["a"]), delta(2, &[]), delta(3, &[])]);
        adm.admit(&three, Duration::ZERO).unwrap();
        assert_eq!(adm.len(), 3);
        assert_eq!(
            adm.admit(&ack_of(vec![delta(4, &[])]), Duration::ZERO),
            Err(CellWireError::MemberCap(sid(4), 3))
        );
        // A refused frame records nothing.
        assert_eq!(adm.len(), 3);

        // Generations of one member.
        for g in 0..(MAX_GENERATIONS_PER_MEMBER as u64 - 1) {
            let mut d = delta(1, &[]);
            d.node.generation = g;
            adm.admit(&ack_of(vec![d]), Duration::ZERO).unwrap();
        }
        let mut d = delta(1, &[]);
        d.node.generation = 99;
        assert_eq!(
            adm.admit(&ack_of(vec![d]), Duration::ZERO),
            Err(CellWireError::GenerationCap(
                sid(1),
                MAX_GENERATIONS_PER_MEMBER
            ))
        );

        // Keys of one member: 31 fit, two more distinct ones would make 33.
        let keys: Vec<String> = (0..31).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        adm.admit(&ack_of(vec![delta(2, &refs[..16])]), Duration::ZERO)
            .unwrap();
        adm.admit(&ack_of(vec![delta(2, &refs[16..])]), Duration::ZERO)
            .unwrap();
        adm.admit(&ack_of(vec![delta(2, &["k0", "k1"])]), Duration::ZERO)
            .unwrap();
        assert_eq!(
            adm.admit(
                &ack_of(vec![delta(2, &["one-more", "and-another"])]),
                Duration::ZERO
            ),
            Err(CellWireError::KeyCap(sid(2), MAX_KEYS_PER_MEMBER))
        );

        // Retain: members chitchat no longer holds go once old enough.
        let held: BTreeSet<WireNodeId> = [node(2, 1002), node(3, 1003)].into();
        adm.retain(
            &held,
            Duration::from_millis(1_000),
            Duration::from_millis(5_000),
        );
        assert_eq!(adm.len(), 3, "too young to forget");
        adm.retain(
            &held,
            Duration::from_millis(10_000),
            Duration::from_millis(5_000),
        );
        assert_eq!(adm.len(), 2);
        adm.admit(&ack_of(vec![delta(4, &[])]), Duration::from_millis(10_000))
            .unwrap();

        // A one-bit cell refuses members of the other half.
        let mine = cell_id(&peer(1), 1);
        let mut half = Admission::new(mine, 100);
        let other = (2..=40u8)
            .find(|i| !mine.contains(&peer(*i)))
            .expect("some peer in the other half");
        assert_eq!(
            half.admit(&ack_of(vec![delta(other, &[])]), Duration::ZERO),
            Err(CellWireError::OutsideCell(sid(other)))
        );
        assert!(half
            .admit(&ack_of(vec![delta(1, &[])]), Duration::ZERO)
            .is_ok());
    }
}
