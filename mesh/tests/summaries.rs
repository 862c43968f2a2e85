//! Signed cell summaries between in-process nodes on loopback TCP: published on gossipsub
//! into the others' books, stored in and read back from the DHT, and — from a hand-built
//! adversary swarm that speaks raw Kademlia and gossipsub — invalid ones refused by both.

#![cfg(feature = "swarm")]

mod common;

use common::{dial_addr, eventually, loopback_config, WAIT};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, kad, noise, tcp, yamux, Swarm};
use novacron_mesh::cells::{
    cell_id, representatives, sign_summary, CellId, SummaryRecord, CELL_SUMMARY_DOMAIN,
    MAX_SIGNED_SUMMARY_LEN,
};
use novacron_mesh::dht_keys::DhtKey;
use novacron_mesh::identity::NodeIdentity;
use novacron_mesh::records::{Capacity, SignedRecord};
use novacron_mesh::summaries::{build_summary_record, DEFAULT_REPRESENTATIVES};
use novacron_mesh::swarm::{
    MeshEvent, MeshNode, Multiaddr, PeerId, SwarmError, CELLS_TOPIC, KAD_PROTOCOL,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn start(bootstrap: Vec<Multiaddr>) -> (NodeIdentity, MeshNode) {
    let identity = NodeIdentity::generate().unwrap();
    let node = MeshNode::start(&identity, loopback_config(bootstrap)).unwrap();
    (identity, node)
}

async fn wait_table_holds(node: &MeshNode, want: &[PeerId]) {
    eventually("the routing table to hold the peers", || async {
        let table = node.routing_table_peers().await.unwrap();
        want.iter().all(|p| table.contains(p)).then_some(())
    })
    .await;
}

fn capacity() -> Capacity {
    Capacity {
        vcpus: 16,
        free_vcpus: 6,
        memory_bytes: 64 << 30,
        free_memory_bytes: 20 << 30,
        free_slots: 3,
        load_permille: 250,
    }
}

/// `id`'s summary of its own cell at `bits` (it is the only member, hence representative),
/// issued at `issued_at` for `ttl` seconds: the record and its signed bytes.
fn own_summary(
    id: &NodeIdentity,
    bits: u8,
    issued_at: u64,
    ttl: u64,
) -> (CellId, SummaryRecord, Vec<u8>) {
    let me = id.peer_id();
    let cell = cell_id(&me, bits);
    let cap = capacity();
    let record = build_summary_record(
        cell,
        [(&me, &cap)],
        &me,
        DEFAULT_REPRESENTATIVES,
        Duration::from_secs(issued_at),
        Duration::from_secs(ttl),
    )
    .unwrap();
    let bytes = sign_summary(id, &record).unwrap().encode().unwrap();
    (cell, record, bytes)
}

/// A summary of cell 0/0 whose only contact is `contact` but that `signer` signs as itself.
fn signed_by_a_non_contact(signer: &NodeIdentity, contact: &NodeIdentity) -> Vec<u8> {
    let (_, mut record, _) = own_summary(contact, 0, now(), 600);
    record.signer = signer.peer_id().to_bytes();
    let payload = record.to_bytes().unwrap();
    SignedRecord::seal(signer, CELL_SUMMARY_DOMAIN, payload)
        .encode()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_reaches_the_other_books_by_gossip_and_is_read_from_the_dht() {
    let (_, a) = start(vec![]);
    let boot = dial_addr(&a).await;
    let (b_id, b) = start(vec![boot.clone()]);
    let (_, c) = start(vec![boot.clone()]);
    let mut c_events = c.subscribe();
    wait_table_holds(&b, &[a.peer_id(), c.peer_id()]).await;

    let (cell, record, bytes) = own_summary(&b_id, 0, now(), 600);

    // The DHT: b stores it with the closest peers; d, joining afterwards with an empty
    // store, reads it back through a and c.
    assert_eq!(b.put_cell_summary(bytes.clone()).await.unwrap(), cell);
    let (_, d) = start(vec![boot]);
    wait_table_holds(&d, &[a.peer_id()]).await;
    let read = eventually("d reads b's summary from the DHT", || async {
        let found = d.get_cell_summaries(cell).await.ok()?;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(read, vec![record.clone()]);
    let elsewhere = CellId::new(3, 5).unwrap();
    assert_eq!(d.get_cell_summaries(elsewhere).await.unwrap(), vec![]);

    // Gossipsub: b publishes (repeating until the topic mesh has formed) and every other
    // node's book takes it; c says so with an event naming the cell and the signer.
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = b.publish_cell_summary(bytes.clone()).await;
        let mut all = true;
        for node in [&a, &c, &d] {
            all &= node.cell_summaries().await.unwrap() == vec![record.clone()];
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the summary did not reach every book"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let event = timeout(WAIT, async {
        loop {
            match c_events.recv().await {
                Ok(MeshEvent::CellSummary { cell, signer }) => return (cell, signer),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(event, (cell, b.peer_id()));
    assert_eq!(b.cell_summaries().await.unwrap(), vec![record]);

    // The publishing node refuses what does not verify before sending anything.
    for bad in [vec![0xA5; 200], own_summary(&b_id, 0, now() - 1000, 100).2] {
        assert!(matches!(
            b.publish_cell_summary(bad.clone()).await,
            Err(SwarmError::InvalidSummary(_))
        ));
        assert!(matches!(
            b.put_cell_summary(bad).await,
            Err(SwarmError::InvalidSummary(_))
        ));
    }

    for n in [a, b, c, d] {
        n.stop().await;
    }
}

/// A bare libp2p node that sends whatever it is told: raw Kademlia puts and gets, and
/// gossipsub publications on the cells topic.
#[derive(NetworkBehaviour)]
struct Adversary {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
}

/// Raw values found so far for a get, and who waits for them.
type PendingGet = (Vec<Vec<u8>>, oneshot::Sender<Vec<Vec<u8>>>);

enum Order {
    Put(Box<kad::Record>, PeerId, oneshot::Sender<()>),
    Get(kad::RecordKey, oneshot::Sender<Vec<Vec<u8>>>),
    Publish(Vec<u8>, oneshot::Sender<bool>),
}

struct AdversaryHandle {
    peer: PeerId,
    orders: mpsc::Sender<Order>,
}

impl AdversaryHandle {
    fn start(id: &NodeIdentity, target: PeerId, target_addr: Multiaddr) -> AdversaryHandle {
        let key = id.to_libp2p_keypair().unwrap();
        let mut swarm: Swarm<Adversary> = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::new(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let me = key.public().to_peer_id();
                let mut kc = kad::Config::new(KAD_PROTOCOL);
                kc.set_query_timeout(Duration::from_secs(5));
                let kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kc);
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_secs(1))
                    .build()
                    .unwrap();
                let mut gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_cfg,
                )
                .unwrap();
                gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(CELLS_TOPIC))
                    .unwrap();
                Adversary { kad, gossipsub }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.behaviour_mut().kad.add_address(&target, target_addr);
        swarm.dial(target).unwrap();
        let peer = *swarm.local_peer_id();
        let (orders, rx) = mpsc::channel(16);
        tokio::spawn(run_adversary(swarm, rx));
        AdversaryHandle { peer, orders }
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>, to: PeerId) {
        let mut record = kad::Record::new(key, value);
        record.expires = Some(std::time::Instant::now() + Duration::from_secs(600));
        let (tx, rx) = oneshot::channel();
        self.orders
            .send(Order::Put(Box::new(record), to, tx))
            .await
            .unwrap();
        rx.await.unwrap();
    }

    /// The raw values the network returns for `key`.
    async fn get(&self, key: Vec<u8>) -> Vec<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        let key = kad::RecordKey::new(&key);
        self.orders.send(Order::Get(key, tx)).await.unwrap();
        rx.await.unwrap()
    }

    async fn publish(&self, data: Vec<u8>) -> bool {
        let (tx, rx) = oneshot::channel();
        self.orders.send(Order::Publish(data, tx)).await.unwrap();
        rx.await.unwrap()
    }
}

async fn run_adversary(mut swarm: Swarm<Adversary>, mut orders: mpsc::Receiver<Order>) {
    let mut puts: HashMap<kad::QueryId, oneshot::Sender<()>> = HashMap::new();
    let mut gets: HashMap<kad::QueryId, PendingGet> = HashMap::new();
    loop {
        tokio::select! {
            event = swarm.select_next_some() => {
                let SwarmEvent::Behaviour(AdversaryEvent::Kad(
                    kad::Event::OutboundQueryProgressed { id, result, step, .. },
                )) = event
                else {
                    continue;
                };
                match result {
                    kad::QueryResult::PutRecord(_) => {
                        if let Some(tx) = puts.remove(&id) {
                            let _ = tx.send(());
                        }
                    }
                    kad::QueryResult::GetRecord(result) => {
                        if let (Some((found, _)), Ok(kad::GetRecordOk::FoundRecord(r))) =
                            (gets.get_mut(&id), result)
                        {
                            found.push(r.record.value);
                        }
                        if step.last {
                            if let Some((found, tx)) = gets.remove(&id) {
                                let _ = tx.send(found);
                            }
                        }
                    }
                    _ => {}
                }
            }
            order = orders.recv() => match order {
                None => break,
                Some(Order::Put(record, to, tx)) => {
                    let id = swarm.behaviour_mut().kad.put_record_to(
                        *record,
                        std::iter::once(to),
                        kad::Quorum::One,
                    );
                    puts.insert(id, tx);
                }
                Some(Order::Get(key, tx)) => {
                    let id = swarm.behaviour_mut().kad.get_record(key);
                    gets.insert(id, (Vec::new(), tx));
                }
                Some(Order::Publish(data, tx)) => {
                    let topic = gossipsub::IdentTopic::new(CELLS_TOPIC);
                    let _ = tx.send(swarm.behaviour_mut().gossipsub.publish(topic, data).is_ok());
                }
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dht_stores_only_valid_summaries_under_their_own_cell() {
    let (_, t) = start(vec![]);
    let target = t.peer_id();
    let addr = dial_addr(&t).await;
    let adv_id = NodeIdentity::generate().unwrap();
    let other_id = NodeIdentity::generate().unwrap();
    let adv = AdversaryHandle::start(&adv_id, target, addr);
    let cell_key = |cell: CellId| DhtKey::Cell(cell).to_bytes();

    let (_, _, expired) = own_summary(&adv_id, 2, now() - 1000, 100);
    let (mine_1bit, _, misfiled) = own_summary(&adv_id, 1, now(), 600);
    let sibling = CellId::new(1, mine_1bit.prefix() ^ 1).unwrap();
    let bad: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "garbage",
            cell_key(CellId::new(5, 3).unwrap()),
            vec![0xA5; 300],
        ),
        (
            "oversized",
            cell_key(CellId::new(6, 1).unwrap()),
            vec![0; MAX_SIGNED_SUMMARY_LEN + 1],
        ),
        (
            "signed by a non-contact",
            cell_key(CellId::new(0, 0).unwrap()),
            signed_by_a_non_contact(&adv_id, &other_id),
        ),
        ("expired", cell_key(cell_id(&adv_id.peer_id(), 2)), expired),
        (
            "under another cell's key",
            cell_key(sibling),
            misfiled.clone(),
        ),
        (
            "under a chunk-set key",
            DhtKey::ChunkSet([1; 32]).to_bytes(),
            misfiled.clone(),
        ),
        ("under a foreign key", b"/ipfs/x".to_vec(), misfiled),
    ];
    for (what, key, value) in &bad {
        adv.put(key.clone(), value.clone(), target).await;
        assert_eq!(adv.get(key.clone()).await, Vec::<Vec<u8>>::new(), "{what}");
    }

    // The same path stores a valid summary: the refusals above were the node's choice.
    let (cell, record, valid) = own_summary(&adv_id, 4, now(), 600);
    adv.put(cell_key(cell), valid.clone(), target).await;
    let got = eventually("the valid summary is stored", || async {
        let got = adv.get(cell_key(cell)).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got, vec![valid]);
    assert_eq!(t.get_cell_summaries(cell).await.unwrap(), vec![record]);

    // Two representatives of one cell (0/0) put different summaries under its key: the slot
    // keeps the better-ranked signer's (and its newer ones), not a worse-ranked signer's newer one.
    let whole = CellId::new(0, 0).unwrap();
    let (worse, better) = {
        let (a, b) = (&adv_id, &other_id);
        let best = representatives(whole, [a.peer_id(), b.peer_id()].iter(), 1)[0];
        if best == a.peer_id() {
            (b, a)
        } else {
            (a, b)
        }
    };
    let t0 = now();
    let (_, worse_rec, worse_old) = own_summary(worse, 0, t0, 600);
    let (_, better_rec, better_old) = own_summary(better, 0, t0, 600);
    let (_, _, worse_new) = own_summary(worse, 0, t0 + 5, 600);
    let (_, better_new_rec, better_new) = own_summary(better, 0, t0 + 5, 600);
    let held = || async { t.get_cell_summaries(whole).await.unwrap() };
    adv.put(cell_key(whole), worse_old, target).await;
    assert_eq!(
        held().await,
        vec![worse_rec],
        "an empty slot takes any valid one"
    );
    adv.put(cell_key(whole), better_old.clone(), target).await;
    assert_eq!(held().await, vec![better_rec], "the better-ranked replaces");
    adv.put(cell_key(whole), worse_new, target).await;
    assert_eq!(
        adv.get(cell_key(whole)).await,
        vec![better_old],
        "a newer worse-ranked does not"
    );
    adv.put(cell_key(whole), better_new, target).await;
    assert_eq!(
        held().await,
        vec![better_new_rec],
        "its own newer one replaces"
    );

    // Still answering, and nothing of the above reached its book.
    assert!(t.cell_summaries().await.unwrap().is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiped_invalid_summaries_are_rejected_and_cost_the_sender_score() {
    let (_, t) = start(vec![]);
    let addr = dial_addr(&t).await;
    let adv_id = NodeIdentity::generate().unwrap();
    let other_id = NodeIdentity::generate().unwrap();
    let adv = AdversaryHandle::start(&adv_id, t.peer_id(), addr);

    // A valid summary from the adversary gets through: the pipe works.
    let (_, record, valid) = own_summary(&adv_id, 0, now(), 600);
    eventually("the valid summary in t's book", || async {
        let _ = adv.publish(valid.clone()).await;
        sleep(Duration::from_millis(200)).await;
        (t.cell_summaries().await.unwrap() == vec![record.clone()]).then_some(())
    })
    .await;

    let score = || async { t.gossip_peer_score(adv.peer).await.unwrap().unwrap() };
    let (_, _, expired) = own_summary(&adv_id, 0, now() - 1000, 100);
    let bad = [
        ("garbage", vec![0xA5; 300]),
        ("oversized", vec![0; MAX_SIGNED_SUMMARY_LEN + 1]),
        (
            "signed by a non-contact",
            signed_by_a_non_contact(&adv_id, &other_id),
        ),
        ("expired", expired),
    ];
    for (what, data) in bad {
        // Each rejection costs 50 points, which decay within seconds: wait for the score to
        // recover, send one, see it fall.
        eventually("the score to recover", || async {
            (score().await > -5.0).then_some(())
        })
        .await;
        assert!(adv.publish(data).await, "{what} was not sent");
        let low = eventually(&format!("the score to fall after {what}"), || async {
            let s = score().await;
            (s < -20.0).then_some(s)
        })
        .await;
        assert!(low < -20.0, "{what}: {low}");
    }
    assert_eq!(t.cell_summaries().await.unwrap(), vec![record]);
    t.stop().await;
}
