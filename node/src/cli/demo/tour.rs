//! Where the demo's VM goes next: it tours the mesh. Among the live nodes other than the
//! one it is on, it goes to the one it left longest ago (one it never visited first), so
//! with N live nodes it visits every one of them in N moves instead of shuttling between
//! the two that a fixed tie-break would always pick. Pure: the caller keeps the history.

/// When the VM arrived at each node (a move number), by node index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visits {
    arrived: Vec<Option<u64>>,
    moves: u64,
}

impl Visits {
    /// A VM that starts on `node` of `nodes`.
    pub fn starting_at(nodes: usize, node: usize) -> Visits {
        let mut v = Visits {
            arrived: vec![None; nodes],
            moves: 0,
        };
        v.arrive(node);
        v
    }

    /// The VM moved to `node`.
    pub fn arrive(&mut self, node: usize) {
        self.moves += 1;
        if let Some(slot) = self.arrived.get_mut(node) {
            *slot = Some(self.moves);
        }
    }

    /// The node to go to from `here`, among `live` (node indices): the least recently
    /// visited, never-visited ones first, ties to the lowest index. None if no other node
    /// is live.
    pub fn next(&self, here: usize, live: &[usize]) -> Option<usize> {
        live.iter()
            .copied()
            .filter(|&n| n != here)
            .min_by_key(|&n| (self.arrived.get(n).copied().flatten(), n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows `moves` moves from node 0 with `live` nodes; the nodes visited.
    fn tour(nodes: usize, live: &[usize], moves: usize) -> Vec<usize> {
        let mut visits = Visits::starting_at(nodes, 0);
        let mut here = 0;
        let mut path = Vec::new();
        for _ in 0..moves {
            let Some(next) = visits.next(here, live) else {
                break;
            };
            visits.arrive(next);
            here = next;
            path.push(next);
        }
        path
    }

    #[test]
    fn the_vm_visits_every_live_node_before_it_comes_back() {
        assert_eq!(tour(5, &[0, 1, 2, 3, 4], 9), [1, 2, 3, 4, 0, 1, 2, 3, 4]);
        // A node that is down is skipped; it is visited first once it is back.
        assert_eq!(tour(5, &[0, 1, 3, 4], 4), [1, 3, 4, 0]);
        let mut visits = Visits::starting_at(5, 0);
        for n in [1, 3, 4, 0] {
            visits.arrive(n);
        }
        assert_eq!(visits.next(0, &[0, 1, 2, 3, 4]), Some(2));
    }

    #[test]
    fn two_nodes_alternate_and_one_node_goes_nowhere() {
        assert_eq!(tour(2, &[0, 1], 3), [1, 0, 1]);
        assert_eq!(tour(3, &[0], 3), Vec::<usize>::new());
        assert_eq!(Visits::starting_at(3, 0).next(0, &[]), None);
    }
}
