//! `cell_wire::decode_frame`: chitchat frames read from `/novacron/cell/1` streams.
//!
//! Invariants when bytes decode: the frame was within the size limit; every node id is a
//! peer id; no digest or delta is over the member cap and no node carries more operations
//! than allowed; re-encoding the envelope decodes to the same envelope; admission into a
//! one-cell mesh never panics, and a refused frame leaves it unchanged.

use novacron_mesh::cell_wire::{
    decode_body, decode_frame, encode_body, encode_frame, Admission, DigestEncoding, DigestEntry,
    Envelope, KvStatus, NodeDelta, NodeOp, WireMessage, WireNodeId, FRAME_HEADER_BYTES,
    MAX_BODY_BYTES, MAX_MEMBERS, MAX_OPS_PER_NODE,
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
    assert_eq!(
        decode_body(&encode_body(&env)).as_ref(),
        Ok(&env),
        "decode(encode(envelope)) differs"
    );
    let mut admission = Admission::new(CellId::new(0, 0).expect("cell 0/0"), 4);
    if admission.admit(&env, 0).is_err() {
        assert!(admission.is_empty(), "a refused frame was partly admitted");
    }
    true
}

fn node(i: u8) -> WireNodeId {
    WireNodeId {
        peer: NodeIdentity::from_seed(&[i; 32])
            .expect("seed identity")
            .peer_id(),
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
            NodeOp::SetMaxVersion(3),
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
        ("ack", frame(DigestEncoding::Blocks, WireMessage::Ack { delta })),
        (
            "bad_cluster",
            frame(DigestEncoding::Plain, WireMessage::BadCluster),
        ),
    ]
}
