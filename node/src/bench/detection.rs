//! Scoring failure detection in `bench mesh` from the nodes' member lines: how long each
//! survivor took to report each killed node down, and every `down` that named a node that
//! was alive (a false alarm).
//!
//! Only a `down` at or after the kill counts as a detection; a `down` of a victim before its
//! kill, or of a node never killed, after the whole cell was seen live, is a false alarm. A
//! victim's own lines count until its kill (it was a live observer until then).

use std::time::Instant;

use crate::daemon::lines::{parse_member_line, MemberChange};

/// One node's member lines, as (when, change, peer).
pub type MemberLines = Vec<(Instant, MemberChange, String)>;

/// The member lines among `lines` (when each was read, the line).
pub fn member_lines<'a>(lines: impl IntoIterator<Item = (Instant, &'a str)>) -> MemberLines {
    lines
        .into_iter()
        .filter_map(|(at, line)| {
            let (change, peer, _) = parse_member_line(line)?;
            Some((at, change, peer.to_string()))
        })
        .collect()
}

/// What the lines say about a kill.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DetectionScore {
    /// Seconds from the kill to each survivor's `down` of each victim.
    pub samples: Vec<f64>,
    /// (observer index, victim) pairs with no `down` since the kill.
    pub missing: Vec<(usize, String)>,
    /// `down` lines about a node alive at the time, from `joined` on.
    pub false_alarms: usize,
}

/// Scores the nodes' lines (`observers[i]`: node i's peer id and lines) for `victims` (their
/// indexes) killed at `killed_at`, counting false alarms from `joined` (the whole cell live).
pub fn score(
    observers: &[(String, MemberLines)],
    victims: &[usize],
    joined: Instant,
    killed_at: Instant,
) -> DetectionScore {
    let victim_peers: Vec<&str> = victims
        .iter()
        .filter_map(|&v| observers.get(v).map(|(p, _)| p.as_str()))
        .collect();
    let mut out = DetectionScore::default();
    for (i, (_, lines)) in observers.iter().enumerate() {
        let is_victim = victims.contains(&i);
        for (at, change, peer) in lines {
            let alive_then = !victim_peers.contains(&peer.as_str()) || *at < killed_at;
            let observing = !is_victim || *at < killed_at;
            if *change == MemberChange::Down && *at >= joined && alive_then && observing {
                out.false_alarms += 1;
            }
        }
        if is_victim {
            continue;
        }
        for peer in &victim_peers {
            let seen = lines.iter().find(|(at, change, p)| {
                *change == MemberChange::Down && p == peer && *at >= killed_at
            });
            match seen {
                Some((at, _, _)) => out
                    .samples
                    .push(at.saturating_duration_since(killed_at).as_secs_f64()),
                None => out.missing.push((i, peer.to_string())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_detections_after_the_kill_and_false_alarms_apart() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (joined, killed) = (at(10), at(100));
        let down = |s, p: &str| (at(s), MemberChange::Down, p.to_string());
        let up = |s, p: &str| (at(s), MemberChange::Up, p.to_string());
        let observers = vec![
            // a: a flap of b before the kill (false alarm), then c down 7 s after it.
            (
                "a".to_string(),
                vec![up(1, "c"), down(50, "c"), up(52, "c"), down(107, "c")],
            ),
            // b: a down of a during the join does not count; a down of a later does.
            (
                "b".to_string(),
                vec![down(5, "a"), down(60, "a"), down(105, "c")],
            ),
            // c: the victim; its lines before the kill count, after it nothing does.
            ("c".to_string(), vec![down(90, "a"), down(200, "a")]),
            // d: never saw c go.
            ("d".to_string(), vec![]),
        ];
        let score = score(&observers, &[2], joined, killed);
        assert_eq!(score.samples, vec![7.0, 5.0]);
        assert_eq!(score.missing, vec![(3, "c".to_string())]);
        assert_eq!(score.false_alarms, 3);
    }

    #[test]
    fn parses_only_member_lines() {
        let t = Instant::now();
        let lines = member_lines([
            (t, "novacron: cell member p1 down (3 live)"),
            (t, "novacron: routing table has 3 peers"),
        ]);
        assert_eq!(lines, vec![(t, MemberChange::Down, "p1".to_string())]);
    }
}
