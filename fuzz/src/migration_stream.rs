//! A migration control stream from a hostile source: a 24-byte preamble
//! (`links::Preamble::decode`), then frames read with `wire::FrameReader` in pieces whose
//! sizes come from the input, each message fed to a `destination::Destination` state machine
//! as the TCP driver would (chunks through `verify_chunk`, every `CheckHave` answered "not
//! held", every `StartVm` answered "started").
//!
//! Invariants: nothing panics; the reader never reports more bytes than it was given; the
//! state machine asks to start the VM at most once, never after it failed, and only once
//! every wanted chunk arrived; after `Fail` it asks for nothing but sends.

use std::io::Read;

use novacron_mesh::chunks::{Bitmap, ChunkDecoder, ChunkId};
use novacron_vm::migration::destination::{
    verify_chunk_message, Destination, DestinationConfig, Input, Output,
};
use novacron_vm::migration::links::{Preamble, PREAMBLE_LEN};
use novacron_vm::migration::messages::{
    encode_frame, MemRegion, Message, Mode, OfferEntry, PROTOCOL_VERSION,
};
use novacron_vm::migration::wire::FrameReader;

use crate::Seed;

/// Hands out the input in pieces of 1..=64 bytes, the sizes taken from the input itself.
struct Pieces<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let left = self.data.len() - self.pos;
        let step = usize::from(self.data.get(self.pos).copied().unwrap_or(1) % 64) + 1;
        let n = step.min(left).min(out.len());
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub fn check(data: &[u8]) -> bool {
    let Some(pre) = data.get(..PREAMBLE_LEN) else {
        return false;
    };
    let mut raw = [0u8; PREAMBLE_LEN];
    raw.copy_from_slice(pre);
    let preamble_ok = Preamble::decode(&raw).is_ok();
    let body = &data[PREAMBLE_LEN..];
    let mut reader = FrameReader::new(Pieces { data: body, pos: 0 });
    let cfg = DestinationConfig {
        max_mem_bytes: 64 << 20,
        ..DestinationConfig::default()
    };
    let mut dest = Destination::new(cfg, std::time::Duration::ZERO);
    let mut decoder = ChunkDecoder::new();
    let mut started = 0;
    let mut failed = false;
    let mut accepted = 0;
    while let Ok(msg) = reader.read_message() {
        assert!(
            reader.bytes_read() <= body.len() as u64,
            "read past the input"
        );
        accepted += 1;
        let input = match dest.geometry().cloned() {
            Some(geo) => match verify_chunk_message(&mut decoder, &geo, msg) {
                Ok(chunk) => Input::Chunk(chunk),
                Err(other) => Input::Received(other),
            },
            None => Input::Received(msg),
        };
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            for out in dest.handle(input) {
                match out {
                    Output::CheckHave { round, seq, ids } => pending.push(Input::Have {
                        round,
                        seq,
                        held: Bitmap::new(ids.len()),
                    }),
                    Output::StartVm { .. } => {
                        assert!(!failed, "StartVm after Fail");
                        assert_eq!(dest.awaiting_chunks(), 0, "StartVm with chunks missing");
                        started += 1;
                        assert_eq!(started, 1, "StartVm twice");
                        pending.push(Input::VmStarted);
                    }
                    Output::Fail { .. } => failed = true,
                    Output::Send(_) | Output::Done | Output::DiscardVm => {}
                    other => assert!(!failed, "{other:?} after Fail"),
                }
            }
        }
    }
    preamble_ok && accepted > 0
}

pub fn seeds() -> Vec<Seed> {
    let preamble = Preamble {
        session: [7; 16],
        index: 0,
        count: 3,
    }
    .encode();
    let chunk = vec![5u8; 4096];
    let id = *ChunkId::of(&chunk).as_bytes();
    let script = [
        Message::Hello {
            version: PROTOCOL_VERSION,
            vm_id: [7; 16],
            regions: vec![MemRegion {
                guest_addr: 0,
                len: 8 * 4096,
            }],
            vcpus: 1,
            chunk_size: 4096,
            mode: Mode::Warm,
        },
        Message::Offer {
            round: 0,
            seq: 0,
            chunks: vec![OfferEntry { index: 2, id }],
            zeros: vec![],
        },
        Message::Chunk {
            index: 2,
            id,
            raw: true,
            bytes: chunk,
        },
        Message::RoundDone {
            round: 0,
            dirty_bytes: 4096,
        },
        Message::Switchover { state: vec![1, 2] },
    ];
    let mut stream = preamble.to_vec();
    for m in &script {
        stream.extend(encode_frame(m).expect("seed frame encodes"));
    }
    vec![("warm_session", stream)]
}
