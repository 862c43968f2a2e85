//! The lines a node writes on stderr when its cell changes, and their parser (for scripts,
//! tests and `novacron bench mesh`, which time them):
//!
//! `novacron: cell member PEERID up (N live)` and `novacron: cell member PEERID down (N live)`,
//! where N counts the live members the node sees, itself included.

/// A member came up or went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Up,
    Down,
}

const PREFIX: &str = "novacron: cell member ";

pub fn member_line(change: MemberChange, peer: &str, live: usize) -> String {
    let word = match change {
        MemberChange::Up => "up",
        MemberChange::Down => "down",
    };
    format!("{PREFIX}{peer} {word} ({live} live)")
}

/// Parses a line written by [`member_line`].
pub fn parse_member_line(line: &str) -> Option<(MemberChange, &str, usize)> {
    let rest = line.strip_prefix(PREFIX)?;
    let (peer, rest) = rest.split_once(' ')?;
    let (word, rest) = rest.split_once(" (")?;
    let change = match word {
        "up" => MemberChange::Up,
        "down" => MemberChange::Down,
        _ => return None,
    };
    let live = rest.strip_suffix(" live)")?.parse().ok()?;
    Some((change, peer, live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_others_are_ignored() {
        let line = member_line(MemberChange::Down, "12D3KooWabc", 19);
        assert_eq!(line, "novacron: cell member 12D3KooWabc down (19 live)");
        assert_eq!(
            parse_member_line(&line),
            Some((MemberChange::Down, "12D3KooWabc", 19))
        );
        assert_eq!(
            parse_member_line(&member_line(MemberChange::Up, "p", 2)),
            Some((MemberChange::Up, "p", 2))
        );
        for other in [
            "novacron: routing table has 3 peers",
            "novacron: cell member p sideways (2 live)",
            "novacron: cell member p up (x live)",
        ] {
            assert_eq!(parse_member_line(other), None, "{other}");
        }
    }
}
