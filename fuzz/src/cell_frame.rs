//! `cell_wire::decode_frame`: chitchat frames read from `/novacron/cell/1` streams.
//!
//! Invariants when bytes decode: the frame was within the size limit; every node id is a
//! short id whose text reads back to itself; every `peer` key-value is a set of a PeerId
//! with its node's short id; no digest or delta is over the member cap and no node carries
//! more operations than allowed; re-encoding the envelope decodes to the same envelope;
//! admission into a one-cell mesh never panics, and a refused frame leaves it unchanged.

use std::time::Duration;

use novacron_mesh::cell_wire::{
    check_peer_key, decode_body, decode_frame, encode_body, encode_frame, Admission,
    DigestEncoding, DigestEntry, Envelope, KvStatus, NodeDelta, NodeOp, ShortId, WireMessage,
    WireNodeId, FRAME_HEADER_BYTES, MAX_BODY_BYTES, MAX_MEMBERS, MAX_OPS_PER_NODE, PEER_KEY,
};
use novacron_mesh::cells::CellId;
use novacron_mesh::identity::NodeIdentity;

use crate::Seed;

pub fn check(data: &[u8]) -> bool {
    let Ok(env) = decode_frame(data) else {
        return false;
    };
    assert!(
        data.len() <= FRAME_HEADER_BYTES + MAX_BODY_BYTES,
        "over the size limit"
    );
    let deltas: &[NodeDelta] = match &env.message {
        WireMessage::SynAck { delta, .. } | WireMessage::Ack { delta } => delta,
        _ => &[],
    };
    assert!(deltas.len() <= MAX_MEMBERS, "too many node deltas");
    assert!(
        deltas.iter().all(|d| d.ops.len() <= MAX_OPS_PER_NODE),
        "too many operations"
    );
    assert!(
        env.nodes().count() <= 2 * MAX_MEMBERS,
        "too many nodes mentioned"
    );
    for node in env.nodes() {
        assert_eq!(
            ShortId::parse(node.id.as_str()).as_ref(),
            Ok(&node.id),
            "a node id does not read back"
        );
    }
    for d in deltas {
        for op in &d.ops {
            if let NodeOp::KeyValue {
                key, value, status, ..
            } = op
            {
                if key == PEER_KEY {
                    assert_eq!(*status, KvStatus::Set, "a peer key is deleted");
                    let peer = check_peer_key(&d.node.id, value)
                        .expect("a peer key that is no PeerId of its short id");
                    assert!(d.node.id.is_of(&peer), "a peer key of another short id");
                }
            }
        }
    }
    assert_eq!(
        decode_body(&encode_body(&env)).as_ref(),
        Ok(&env),
        "decode(encode(envelope)) differs"
    );
    let mut admission = Admission::new(CellId::new(0, 0).expect("cell 0/0"), 4);
    if admission.admit(&env, Duration::ZERO).is_err() {
        assert!(admission.is_empty(), "a refused frame was partly admitted");
    }
    true
}

fn identity(i: u8) -> NodeIdentity {
    NodeIdentity::from_seed(&[i; 32]).expect("seed identity")
}

fn node(i: u8) -> WireNodeId {
    WireNodeId {
        id: ShortId::of(&identity(i).peer_id()),
        generation: 1_780_000_000_000 + u64::from(i),
    }
}

fn frame(encoding: DigestEncoding, message: WireMessage) -> Vec<u8> {
    encode_frame(&encode_body(&Envelope { encoding, message })).expect("seed frame fits")
}

pub fn seeds() -> Vec<Seed> {
    let digest: Vec<DigestEntry> = (1..=4)
        .map(|i| DigestEntry {
            node: node(i),
            heartbeat: 10 * u64::from(i),
            last_gc_version: 0,
            max_version: 3,
        })
        .collect();
    let delta = vec![NodeDelta {
        node: node(2),
        last_gc_version: 0,
        from_version_excluded: 0,
        ops: vec![
            NodeOp::KeyValue {
                key: "vcpus".into(),
                value: "8".into(),
                version: 1,
                status: KvStatus::Set,
            },
            NodeOp::KeyValue {
                key: "addrs".into(),
                value: "/ip4/127.0.0.1/tcp/4001".into(),
                version: 2,
                status: KvStatus::Set,
            },
            NodeOp::KeyValue {
                key: PEER_KEY.into(),
                value: identity(2).peer_id().to_base58(),
                version: 3,
                status: KvStatus::Set,
            },
            NodeOp::SetMaxVersion(4),
        ],
    }];
    vec![
        (
            "syn_plain",
            frame(
                DigestEncoding::Plain,
                WireMessage::Syn {
                    digest: digest.clone(),
                    cluster_id: "novacron-cell/0/0".into(),
                },
            ),
        ),
        (
            "syn_ack_blocks",
            frame(
                DigestEncoding::Blocks,
                WireMessage::SynAck {
                    digest,
                    delta: delta.clone(),
                },
            ),
        ),
        (
            "ack",
            frame(DigestEncoding::Blocks, WireMessage::Ack { delta }),
        ),
        (
            "bad_cluster",
            frame(DigestEncoding::Plain, WireMessage::BadCluster),
        ),
    ]
}
