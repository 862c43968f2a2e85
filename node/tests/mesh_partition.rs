//! A partition with network namespaces: three `novacron node` processes in namespace A and
//! three in B, joined over one veth link (all through A's first node). The link is cut:
//! every node reports every node of the other side down. The link returns: every node sees
//! all six live again.
//!
//! Needs root and iproute2 (CI runs as root); skips with the reason otherwise.

#[allow(dead_code)]
#[path = "common/mesh.rs"]
mod mesh;
#[path = "common/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "common/proc.rs"]
mod proc;

use std::time::Duration;

use mesh::{live_count, member_lines, spawn_node, wait_listening, wait_until};
use proc::Proc;

const PER_SIDE: usize = 3;
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const DETECT_TIMEOUT: Duration = Duration::from_secs(60);
const HEAL_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn a_cut_link_is_detected_on_both_sides_and_membership_heals_when_it_returns() {
    let tag = format!("{}", std::process::id() % 100_000);
    let link = match netns::Link::create(&tag) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut procs: Vec<Proc> = Vec::new();
    let mut peers: Vec<String> = Vec::new();
    let mut bootstrap: Option<String> = None;
    for i in 0..2 * PER_SIDE {
        let side = if i < PER_SIDE { &link.a } else { &link.b };
        let name = format!("{}{}", if i < PER_SIDE { "a" } else { "b" }, i % PER_SIDE);
        let mut p = spawn_node(
            &name,
            &tmp.path().join(&name),
            &side.addr,
            bootstrap.as_deref(),
            &side.exec_prefix(),
        );
        let (peer, addr) = wait_listening(&mut p);
        bootstrap.get_or_insert(addr);
        peers.push(peer);
        procs.push(p);
    }
    let all: Vec<&Proc> = procs.iter().collect();
    let n = 2 * PER_SIDE;
    wait_until(
        "all six nodes to see six live members",
        JOIN_TIMEOUT,
        &all,
        || procs.iter().all(|p| live_count(p) == Some(n)),
    );

    link.cut();
    wait_until(
        "every node to report the other side down",
        DETECT_TIMEOUT,
        &all,
        || {
            procs.iter().enumerate().all(|(i, p)| {
                let other = if i < PER_SIDE {
                    PER_SIDE..n
                } else {
                    0..PER_SIDE
                };
                other
                    .into_iter()
                    .all(|j| member_lines(p, &peers[j], "down") >= 1)
            })
        },
    );
    for (i, p) in procs.iter().enumerate() {
        let same = if i < PER_SIDE {
            0..PER_SIDE
        } else {
            PER_SIDE..n
        };
        for j in same.filter(|&j| j != i) {
            assert_eq!(
                member_lines(p, &peers[j], "down"),
                0,
                "{} reported {} (same side) down\n{}",
                p.name,
                peers[j],
                p.dump()
            );
        }
    }

    link.restore();
    wait_until(
        "membership to heal on every node",
        HEAL_TIMEOUT,
        &all,
        || procs.iter().all(|p| live_count(p) == Some(n)),
    );
    drop(procs);
    drop(link);
}
