//! Which of an origin's replicas search for a node first when nodes are scarce: a replica
//! waits (skips a search round) while a replica of a job of higher priority found no node
//! at its last search, so that when capacity frees the higher-priority job's next search
//! finds it with no lower-priority search competing. It waits at most
//! [`MAX_YIELDS_IN_A_ROW`] rounds in a row, then searches once: a high-priority job that
//! fits nowhere (too large for the mesh) never blocks the others for good. Pure: the origin
//! gives the priorities of its replicas still waiting after a failed search.

/// Rounds in a row a replica skips for higher-priority ones before it searches anyway.
pub const MAX_YIELDS_IN_A_ROW: u32 = 5;

/// Whether a replica of a job at `priority`, which skipped `yielded_in_a_row` rounds
/// already, waits this round, given the priorities of the origin's other replicas whose
/// last search found no node.
pub fn yields_to_higher(
    priority: u8,
    starved: impl IntoIterator<Item = u8>,
    yielded_in_a_row: u32,
) -> bool {
    yielded_in_a_row < MAX_YIELDS_IN_A_ROW && starved.into_iter().any(|p| p > priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_starved_higher_priority_makes_a_replica_wait_and_not_for_ever() {
        assert!(!yields_to_higher(5, [], 0));
        assert!(!yields_to_higher(5, [5, 3, 0], 0));
        assert!(yields_to_higher(5, [3, 6], 0));
        assert!(yields_to_higher(5, [6], MAX_YIELDS_IN_A_ROW - 1));
        assert!(!yields_to_higher(5, [6], MAX_YIELDS_IN_A_ROW));
        assert!(!yields_to_higher(9, [9, 9], 0));
    }
}
