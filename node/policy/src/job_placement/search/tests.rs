use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

const S: Duration = Duration::from_secs(1);
const T0: Duration = Duration::from_secs(100);
const NEED: Need = Need {
    vcpus: 1,
    memory_mib: 256,
};

fn cell(prefix: u32) -> CellId {
    CellId::new(4, prefix).unwrap()
}

fn member(peer: &str, mem: u64) -> MemberStatus {
    MemberStatus {
        peer_id: peer.into(),
        live: true,
        signed: true,
        vcpus: 4,
        mem_mib: mem,
        free_slots: 2,
        load_permille: 100,
        version: "0".into(),
        addrs: vec![],
    }
}

fn offer(mem: u64) -> Offer {
    Offer {
        peer: String::new(),
        free_vcpus: 4,
        free_memory_mib: mem,
        free_slots: 1,
        load_permille: 0,
    }
}

fn plan(cells: &[u32], exclude: &[&str]) -> SearchPlan {
    SearchPlan {
        cells: cells.iter().map(|p| cell(*p)).collect(),
        own_cell: cell(0),
        need: NEED,
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        seed: 7,
    }
}

fn ask(peers: &[&str]) -> SearchAction {
    SearchAction::AskOffers {
        peers: peers.iter().map(|s| s.to_string()).collect(),
    }
}

fn confirm(peer: &str) -> SearchAction {
    SearchAction::Confirm { peer: peer.into() }
}

fn release(peer: &str) -> SearchAction {
    SearchAction::Release { peer: peer.into() }
}

fn look_up(prefix: u32) -> SearchAction {
    SearchAction::LookUpMembers { cell: cell(prefix) }
}

/// Own cell: five members, snuggest first a (300), b (400), c (500), d (600), e (700); f
/// too small; g dead.
fn own_members() -> Vec<MemberStatus> {
    let mut dead = member("g", 300);
    dead.live = false;
    vec![
        member("e", 700),
        member("c", 500),
        member("a", 300),
        member("f", 100),
        member("d", 600),
        member("b", 400),
        dead,
    ]
}

#[test]
fn the_own_cell_is_asked_first_best_fits_three_at_a_time_and_the_best_offer_confirmed() {
    let (mut s, out) =
        PlacementSearch::start(plan(&[1], &[]), &own_members(), SearchLimits::default(), T0);
    assert_eq!(out, [ask(&["a", "b", "c"])]);
    assert_eq!(s.next_deadline(), Some(T0 + 2 * S));
    assert!(s.offer_received("b", offer(400), T0).is_empty());
    // The offer's own peer field is not trusted: the answer is b's... and a's.
    let mut lying = offer(300);
    lying.peer = "z".into();
    assert!(s.offer_received("a", lying, T0).is_empty());
    // The round closes with the last answer; the snuggest offer (c's) is asked to confirm.
    assert_eq!(s.offer_received("c", offer(260), T0), [confirm("c")]);
    assert_eq!(s.confirming(), Some("c"));
    assert_eq!(s.next_deadline(), Some(T0 + 10 * S));
    assert_eq!(
        s.confirmed("c", T0 + S),
        [SearchAction::Placed { peer: "c".into() }]
    );
    assert!(s.is_finished());
    assert_eq!(s.next_deadline(), None);
    assert!(s.tick(T0 + 100 * S).is_empty());
}

#[test]
fn excluded_peers_are_never_asked_even_the_best() {
    let (_, out) = PlacementSearch::start(
        plan(&[], &["a", "c"]),
        &own_members(),
        SearchLimits::default(),
        T0,
    );
    assert_eq!(out, [ask(&["b", "d", "e"])]);
}

#[test]
fn refusals_lead_to_the_next_round_then_the_next_cell() {
    let (mut s, out) = PlacementSearch::start(
        plan(&[0, 2, 3], &[]),
        &own_members(),
        SearchLimits::default(),
        T0,
    );
    assert_eq!(out, [ask(&["a", "b", "c"])]);
    s.offer_refused("a", "full", T0);
    s.offer_refused("b", "draining", T0);
    // An offer that does not fit counts as a refusal.
    assert_eq!(s.offer_received("c", offer(10), T0), [ask(&["d", "e"])]);
    s.offer_refused("d", "full", T0);
    // The own cell is done; it is not looked up again although it is in the ranked list.
    assert_eq!(s.offer_refused("e", "full", T0), [look_up(2)]);
    // Members of another cell than the one looked up are not taken.
    assert!(s
        .members_of_cell(cell(3), &[member("x", 999)], T0)
        .is_empty());
    let members = [member("a", 999), member("h", 999)];
    // a was asked already in this search: never again.
    assert_eq!(s.members_of_cell(cell(2), &members, T0), [ask(&["h"])]);
    assert_eq!(s.offer_refused("h", "no", T0), [look_up(3)]);
    // A cell whose members cannot be found in time is skipped.
    assert_eq!(s.next_deadline(), Some(T0 + 5 * S));
    assert!(s.tick(T0 + 4 * S).is_empty());
    assert_eq!(
        s.tick(T0 + 5 * S),
        [SearchAction::GiveUp {
            reason: GiveUpReason::Exhausted {
                cells_tried: 3,
                peers_asked: 6,
                last_refusal: Some("h: no".into()),
            }
        }]
    );
    assert!(s.is_finished());
    // Late answers change nothing.
    assert!(s.members_of_cell(cell(3), &members, T0 + 6 * S).is_empty());
    assert!(s.offer_received("h", offer(999), T0 + 6 * S).is_empty());
}

#[test]
fn a_round_closes_at_its_timeout_with_the_offers_it_has() {
    let (mut s, _) =
        PlacementSearch::start(plan(&[], &[]), &own_members(), SearchLimits::default(), T0);
    s.offer_received("b", offer(900), T0);
    assert!(s.tick(T0 + S).is_empty());
    assert_eq!(s.tick(T0 + 2 * S), [confirm("b")]);
    // a answers after the round closed: too late.
    assert!(s.offer_received("a", offer(256), T0 + 3 * S).is_empty());
    assert_eq!(s.confirming(), Some("b"));
}

#[test]
fn a_refused_or_silent_confirmation_moves_to_the_rounds_next_offer_and_a_late_one_is_released() {
    let (mut s, _) =
        PlacementSearch::start(plan(&[], &[]), &own_members(), SearchLimits::default(), T0);
    s.offer_received("a", offer(300), T0);
    s.offer_received("b", offer(400), T0);
    assert_eq!(s.offer_received("c", offer(500), T0), [confirm("a")]);
    // Only the peer asked to confirm counts.
    assert!(s.confirmed("b", T0).is_empty());
    assert!(s.confirm_refused("b", "no", T0).is_empty());
    assert_eq!(
        s.confirm_refused("a", "taken meanwhile", T0 + S),
        [confirm("b")]
    );
    assert_eq!(s.next_deadline(), Some(T0 + 11 * S));
    assert_eq!(s.tick(T0 + 11 * S), [release("b"), confirm("c")]);
    // b's confirmation arrives late: it is told to drop the replica, c is still asked.
    assert_eq!(s.confirmed("b", T0 + 12 * S), [release("b")]);
    assert_eq!(s.confirming(), Some("c"));
    assert_eq!(
        s.confirmed("c", T0 + 13 * S),
        [SearchAction::Placed { peer: "c".into() }]
    );
    assert_eq!(s.confirmed("b", T0 + 14 * S), [release("b")]);
}

#[test]
fn nothing_to_try_gives_up_at_once_and_max_cells_bounds_the_search() {
    let (s, out) = PlacementSearch::start(plan(&[], &[]), &[], SearchLimits::default(), T0);
    assert_eq!(
        out,
        [SearchAction::GiveUp {
            reason: GiveUpReason::NoCellWithRoom
        }]
    );
    assert!(s.is_finished());
    let limits = SearchLimits {
        max_cells: 2,
        ..SearchLimits::default()
    };
    // The own cell had a candidate, so it counts: one more cell, then the end.
    let (mut s, _) = PlacementSearch::start(plan(&[1, 2, 3], &[]), &[member("a", 999)], limits, T0);
    assert_eq!(s.offer_refused("a", "full", T0), [look_up(1)]);
    let out = s.members_of_cell(cell(1), &[], T0);
    assert!(matches!(
        &out[..],
        [SearchAction::GiveUp {
            reason: GiveUpReason::Exhausted { cells_tried: 2, .. }
        }]
    ));
    let text = GiveUpReason::Exhausted {
        cells_tried: 2,
        peers_asked: 1,
        last_refusal: Some("a: full".into()),
    }
    .to_string();
    assert!(
        text.contains("2 cells tried") && text.contains("a: full"),
        "{text}"
    );
}

/// How a peer behaves in the property test.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Fits,
    TooSmall,
    Refuses,
    Silent,
}

#[derive(Clone, Copy, Debug)]
enum Confirmation {
    Yes,
    No,
    Silent,
    Late,
}

#[derive(Clone, Debug)]
struct World {
    /// Members of cells 0 (own) ..: (peer index, live, hint memory).
    cells: Vec<Vec<(u8, bool, u64)>>,
    /// By peer index.
    behaviour: Vec<(Answer, Confirmation)>,
    exclude: BTreeSet<u8>,
    look_up_answers: Vec<bool>,
    limits: (usize, usize),
    seed: u64,
}

fn arb_world() -> impl Strategy<Value = World> {
    let answer = prop_oneof![
        Just(Answer::Fits),
        Just(Answer::TooSmall),
        Just(Answer::Refuses),
        Just(Answer::Silent)
    ];
    let confirmation = prop_oneof![
        Just(Confirmation::Yes),
        Just(Confirmation::No),
        Just(Confirmation::Silent),
        Just(Confirmation::Late)
    ];
    (
        prop::collection::vec(
            prop::collection::vec((0u8..24, any::<bool>(), 0u64..1024), 0..8),
            1..5,
        ),
        prop::collection::vec((answer, confirmation), 24),
        prop::collection::btree_set(0u8..24, 0..4),
        prop::collection::vec(any::<bool>(), 5),
        (1usize..5, 1usize..4),
        any::<u64>(),
    )
        .prop_map(
            |(cells, behaviour, exclude, look_up_answers, limits, seed)| World {
                cells,
                behaviour,
                exclude,
                look_up_answers,
                limits,
                seed,
            },
        )
}

fn peer(i: u8) -> String {
    format!("p{i}")
}

fn members(world: &World, c: usize) -> Vec<MemberStatus> {
    world.cells[c]
        .iter()
        .map(|&(p, live, mem)| MemberStatus {
            live,
            ..member(&peer(p), mem)
        })
        .collect()
}

/// Drives a search through `world`, checking every action against the guarantees; returns
/// the peer it placed on.
fn drive(world: &World) -> Result<Option<String>, TestCaseError> {
    let limits = SearchLimits {
        max_cells: world.limits.0,
        offers_per_round: world.limits.1,
        ..SearchLimits::default()
    };
    let plan = SearchPlan {
        cells: (1..world.cells.len() as u32).map(cell).collect(),
        own_cell: cell(0),
        need: NEED,
        exclude: world.exclude.iter().map(|p| peer(*p)).collect(),
        seed: world.seed,
    };
    let excluded: BTreeSet<String> = plan.exclude.iter().cloned().collect();
    let behaviour = |p: &str| {
        let i: u8 = p[1..].parse().unwrap();
        world.behaviour[usize::from(i)]
    };
    let (mut s, first) = PlacementSearch::start(plan, &members(world, 0), limits, T0);
    let mut now = T0;
    let mut queue: std::collections::VecDeque<SearchAction> = first.into();
    let mut asked = BTreeSet::new();
    let mut fitting_offer = BTreeSet::new();
    let mut confirmed_ever = BTreeSet::new();
    let mut in_flight: Option<String> = None;
    let mut late: Vec<String> = Vec::new();
    let mut looked_up = BTreeSet::new();
    let mut placed: Option<String> = None;
    let mut over = false;
    for _ in 0..10_000 {
        while let Some(action) = queue.pop_front() {
            if over {
                prop_assert!(
                    matches!(action, SearchAction::Release { .. }),
                    "{action:?} after the search ended"
                );
            }
            match action {
                SearchAction::LookUpMembers { cell: c } => {
                    prop_assert!(c != cell(0) && looked_up.insert(c), "{c} looked up again");
                    prop_assert!(looked_up.len() <= limits.max_cells);
                    let i = c.prefix() as usize;
                    if world.look_up_answers[i] {
                        queue.extend(s.members_of_cell(c, &members(world, i), now));
                    }
                }
                SearchAction::AskOffers { peers } => {
                    prop_assert!(!peers.is_empty() && peers.len() <= limits.offers_per_round);
                    for p in &peers {
                        prop_assert!(!excluded.contains(p), "excluded {p} asked");
                        prop_assert!(asked.insert(p.clone()), "{p} asked twice");
                    }
                    for p in &peers {
                        match behaviour(p).0 {
                            Answer::Fits => {
                                fitting_offer.insert(p.clone());
                                queue.extend(s.offer_received(p, offer(512), now));
                            }
                            Answer::TooSmall => queue.extend(s.offer_received(p, offer(1), now)),
                            Answer::Refuses => queue.extend(s.offer_refused(p, "no", now)),
                            Answer::Silent => {}
                        }
                    }
                }
                SearchAction::Confirm { peer: p } => {
                    prop_assert!(in_flight.is_none(), "{p} confirmed while {in_flight:?} is");
                    prop_assert!(!excluded.contains(&p), "excluded {p} confirmed");
                    prop_assert!(
                        fitting_offer.contains(&p),
                        "{p} confirmed without a fitting offer"
                    );
                    prop_assert!(confirmed_ever.insert(p.clone()), "{p} confirmed twice");
                    in_flight = Some(p.clone());
                    match behaviour(&p).1 {
                        Confirmation::Yes => queue.extend(s.confirmed(&p, now)),
                        Confirmation::No => {
                            in_flight = None;
                            queue.extend(s.confirm_refused(&p, "no", now));
                        }
                        Confirmation::Silent => {}
                        Confirmation::Late => late.push(p),
                    }
                }
                SearchAction::Release { peer: p } => {
                    prop_assert!(confirmed_ever.contains(&p));
                    prop_assert!(placed.as_ref() != Some(&p), "the placed peer released");
                    if in_flight.as_ref() == Some(&p) {
                        in_flight = None;
                    }
                }
                SearchAction::Placed { peer: p } => {
                    prop_assert_eq!(in_flight.take(), Some(p.clone()));
                    prop_assert!(placed.is_none());
                    placed = Some(p);
                    over = true;
                }
                SearchAction::GiveUp { .. } => {
                    prop_assert!(in_flight.is_none() && placed.is_none());
                    over = true;
                }
            }
        }
        prop_assert_eq!(over, s.is_finished());
        match s.next_deadline() {
            Some(d) => {
                prop_assert!(d >= now, "a deadline in the past");
                now = d;
                queue.extend(s.tick(now));
                // Late confirmations arrive after the timeout that released them.
                for p in late.drain(..) {
                    queue.extend(s.confirmed(&p, now));
                }
            }
            None if queue.is_empty() => return Ok(placed),
            None => {}
        }
    }
    Err(TestCaseError::fail("the search did not end"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn the_search_keeps_its_guarantees_and_ends(world in arb_world()) {
        let placed = drive(&world)?;
        // A live own-cell member that fits by gossip and by offer and says yes is found.
        let own_taker = world.cells[0].iter().any(|&(p, live, mem)| {
            live && mem >= NEED.memory_mib
                && !world.exclude.contains(&p)
                && matches!(world.behaviour[usize::from(p)], (Answer::Fits, Confirmation::Yes))
        });
        if own_taker {
            prop_assert!(placed.is_some());
        }
        if let Some(p) = placed {
            let i: u8 = p[1..].parse().unwrap();
            prop_assert!(matches!(world.behaviour[usize::from(i)], (Answer::Fits, Confirmation::Yes)));
        }
    }
}
