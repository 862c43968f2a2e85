//! `migration::messages::decode_frame`: the length-prefixed, bytecheck-validated rkyv frames
//! migration peers exchange.
//!
//! Invariants when a frame decodes: it consumed no more than it was given, at least its
//! 4-byte prefix, never more than the frame limit; re-encoding the message and decoding it
//! again gives the same message; a truncated copy of an accepted frame asks for more bytes
//! instead of decoding something else.

use novacron_vm::migration::messages::{
    decode_frame, encode_frame, MemRegion, Message, Mode, OfferEntry, ZeroRun, MAX_FRAME_LEN,
};

use crate::Seed;

pub fn check(data: &[u8]) -> bool {
    let Ok(Some((message, used))) = decode_frame(data) else {
        return false;
    };
    assert!(
        used <= data.len() && used >= 4,
        "consumed {used} of {}",
        data.len()
    );
    assert!(
        used <= MAX_FRAME_LEN + 4,
        "a frame over the limit was accepted"
    );
    let again = encode_frame(&message)
        .ok()
        .and_then(|bytes| decode_frame(&bytes).ok().flatten())
        .map(|(m, _)| m);
    assert_eq!(again.as_ref(), Some(&message), "decode(encode(m)) differs");
    assert!(
        matches!(decode_frame(&data[..used - 1]), Ok(None)),
        "a truncated frame did not ask for more bytes"
    );
    true
}

pub fn seeds() -> Vec<Seed> {
    let messages = [
        (
            "hello",
            Message::Hello {
                version: 1,
                vm_id: [7; 16],
                regions: vec![MemRegion {
                    guest_addr: 0,
                    len: 64 << 20,
                }],
                vcpus: 1,
                chunk_size: 16 << 10,
                mode: Mode::Live,
            },
        ),
        (
            "offer",
            Message::Offer {
                round: 1,
                seq: 0,
                chunks: vec![OfferEntry {
                    index: 3,
                    id: [9; 32],
                }],
                zeros: vec![ZeroRun {
                    start: 4,
                    count: 12,
                }],
            },
        ),
        (
            "chunk",
            Message::Chunk {
                index: 3,
                id: [9; 32],
                raw: true,
                bytes: vec![1, 2, 3, 4],
            },
        ),
        (
            "abort",
            Message::Abort {
                reason: "stop".into(),
            },
        ),
    ];
    messages
        .into_iter()
        .map(|(name, m)| (name, encode_frame(&m).expect("seed frame encodes")))
        .collect()
}
