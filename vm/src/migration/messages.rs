//! The migration wire messages and their framing: a 4-byte little-endian length, then one
//! rkyv archive of [`Message`], validated (bytecheck) before anything reads it.
//!
//! Framing checks only shape and size. Whether a message makes sense (a round that exists, an
//! index inside guest memory, a bitmap as long as its offer) is for the state machines.

use rkyv::{Archive, Deserialize, Serialize};

/// Protocol version carried in [`Message::Hello`]; a peer with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes of the length prefix before each archive.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest archive a frame may carry. The largest messages are an offer of
/// [`MAX_OFFER_CHUNKS`] entries (~170 KiB) and the machine state (well under 1 MiB); 8 MiB
/// leaves room without letting a peer make us allocate much.
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Most chunk entries (non-zero plus zero) in one [`Message::Offer`]; a round is split into
/// several offers so that a want bitmap, an offer and its chunks stay small and pipelined.
pub const MAX_OFFER_CHUNKS: usize = 4096;

/// How the VM moves.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The VM is stopped before anything is sent; one round; started on the destination.
    Cold,
    /// The VM is paused after the handshake; one round plus state; resumed on the destination.
    Warm,
    /// Iterative pre-copy while the guest runs, then a short paused final round.
    Live,
}

/// One guest memory region. Chunk indices count chunks over the regions in order, each
/// region cut separately (its last chunk may be short).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    pub guest_addr: u64,
    pub len: u64,
}

/// A non-zero chunk offered in a round: where it goes and what it hashes to.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferEntry {
    pub index: u64,
    pub id: [u8; 32],
}

/// A run of consecutive all-zero chunks: `count` chunks from `start`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroRun {
    pub start: u64,
    pub count: u64,
}

/// Everything either side sends.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Source → destination, first message.
    Hello {
        version: u32,
        vm_id: [u8; 16],
        regions: Vec<MemRegion>,
        vcpus: u32,
        chunk_size: u32,
        mode: Mode,
    },
    /// Destination → source: the hello is accepted and memory is prepared.
    Ready,
    /// Source → destination: part `seq` of round `round`: its non-zero chunks and zero runs.
    Offer {
        round: u32,
        seq: u32,
        chunks: Vec<OfferEntry>,
        zeros: Vec<ZeroRun>,
    },
    /// Destination → source: bit `i` set = send `chunks[i]` of offer (`round`, `seq`).
    Want {
        round: u32,
        seq: u32,
        len: u32,
        words: Vec<u64>,
    },
    /// Source → destination: one chunk's bytes (zstd or raw), with the id they hash to.
    Chunk {
        index: u64,
        id: [u8; 32],
        raw: bool,
        bytes: Vec<u8>,
    },
    /// Source → destination: every offer of the round is out and every wanted chunk sent.
    RoundDone { round: u32, dirty_bytes: u64 },
    /// Destination → source: the round is in; `missing` lists indices it could not fill
    /// (a duplicate whose first copy changed before it was sent) for the next round.
    RoundAck { round: u32, missing: Vec<u64> },
    /// Source → destination: the vCPU/device state (a `MachineState` archive).
    Switchover { state: Vec<u8> },
    /// Destination → source: the VM runs on the destination.
    Confirm,
    /// Either side: give up; the source keeps the VM.
    Abort { reason: String },
    /// Source → destination on a new connection after the link failed during switchover:
    /// did the VM start there?
    Query { vm_id: [u8; 16] },
    /// Destination → source: answer to [`Message::Query`].
    Status { started: bool },
}

impl Message {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Ready => "Ready",
            Message::Offer { .. } => "Offer",
            Message::Want { .. } => "Want",
            Message::Chunk { .. } => "Chunk",
            Message::RoundDone { .. } => "RoundDone",
            Message::RoundAck { .. } => "RoundAck",
            Message::Switchover { .. } => "Switchover",
            Message::Confirm => "Confirm",
            Message::Abort { .. } => "Abort",
            Message::Query { .. } => "Query",
            Message::Status { .. } => "Status",
        }
    }
}

/// Why a frame cannot be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("frame length is 0: a frame carries one archived message")]
    Empty,
    #[error("cannot archive a {kind} message: {reason}")]
    Encode { kind: &'static str, reason: String },
    #[error("frame of {len} bytes is not a valid message archive: {reason}")]
    Invalid { len: usize, reason: String },
}

/// Archives `msg` behind its length prefix.
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>, FrameError> {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(msg).map_err(|e| FrameError::Encode {
        kind: msg.kind(),
        reason: e.to_string(),
    })?;
    let len = archive.len();
    let prefix = frame_len_prefix(len)?;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&archive);
    Ok(out)
}

fn frame_len_prefix(len: usize) -> Result<[u8; FRAME_HEADER_LEN], FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        limit: MAX_FRAME_LEN,
    })?;
    Ok(len32.to_le_bytes())
}

/// Reads one frame from the front of `buf`. `Ok(None)` when `buf` does not yet hold a whole
/// frame (read more and call again); `Ok(Some((msg, used)))` with the bytes it consumed.
/// A length over [`MAX_FRAME_LEN`] is an error as soon as the prefix is in, before any body.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(prefix) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; FRAME_HEADER_LEN];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    let Some(body) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let msg = decode_archive(body)?;
    Ok(Some((msg, FRAME_HEADER_LEN + len)))
}

/// Validates and deserialises one archive (no length prefix).
fn decode_archive(body: &[u8]) -> Result<Message, FrameError> {
    // rkyv reads in place and needs alignment; a frame read off a socket has none.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<Message, rkyv::rancor::Error>(&aligned).map_err(|e| FrameError::Invalid {
        len: body.len(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                vm_id: [7; 16],
                regions: vec![MemRegion {
                    guest_addr: 0,
                    len: 1 << 20,
                }],
                vcpus: 2,
                chunk_size: 16384,
                mode: Mode::Live,
            },
            Message::Ready,
            Message::Offer {
                round: 3,
                seq: 1,
                chunks: vec![OfferEntry {
                    index: 9,
                    id: [0xab; 32],
                }],
                zeros: vec![ZeroRun { start: 0, count: 9 }],
            },
            Message::Want {
                round: 3,
                seq: 1,
                len: 1,
                words: vec![1],
            },
            Message::Chunk {
                index: 9,
                id: [1; 32],
                raw: true,
                bytes: vec![5; 100],
            },
            Message::RoundDone {
                round: 3,
                dirty_bytes: 1 << 30,
            },
            Message::RoundAck {
                round: 3,
                missing: vec![4, 5],
            },
            Message::Switchover {
                state: vec![1, 2, 3],
            },
            Message::Confirm,
            Message::Abort {
                reason: "chunk 4 hash mismatch".into(),
            },
            Message::Query { vm_id: [3; 16] },
            Message::Status { started: true },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in samples() {
            let frame = encode_frame(&msg).unwrap();
            let (back, used) = decode_frame(&frame).unwrap().unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let frame = encode_frame(&Message::Confirm).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode_frame(&frame[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn two_frames_back_to_back_decode_in_order() {
        let mut buf = encode_frame(&Message::Ready).unwrap();
        buf.extend(encode_frame(&Message::Confirm).unwrap());
        let (a, used) = decode_frame(&buf).unwrap().unwrap();
        let (b, _) = decode_frame(&buf[used..]).unwrap().unwrap();
        assert_eq!((a, b), (Message::Ready, Message::Confirm));
    }

    #[test]
    fn oversized_length_is_refused_from_the_prefix_alone() {
        let len = (MAX_FRAME_LEN as u32 + 1).to_le_bytes();
        let err = decode_frame(&len).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                limit: MAX_FRAME_LEN
            }
        );
        assert!(err.to_string().contains("exceeds the limit"));
    }

    #[test]
    fn oversized_message_is_refused_on_encode() {
        let msg = Message::Switchover {
            state: vec![0; MAX_FRAME_LEN + 1],
        };
        assert!(matches!(
            encode_frame(&msg),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn empty_frame_is_an_error() {
        assert_eq!(decode_frame(&[0, 0, 0, 0]), Err(FrameError::Empty));
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Hostile input: random bytes and mutated valid frames decode to a message or an error,
    /// never a panic; a mutated frame that still decodes re-encodes to a valid frame.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut rng = XorShift(0x2545_F491_9E37_79B9);
        let valid: Vec<Vec<u8>> = samples().iter().map(|m| encode_frame(m).unwrap()).collect();
        let mut decoded = 0usize;
        for i in 0..20_000 {
            let mut frame = if i % 4 == 0 {
                let len = (rng.next() % 256) as usize;
                let mut f = (len as u32).to_le_bytes().to_vec();
                f.extend((0..len).map(|_| rng.next() as u8));
                f
            } else {
                valid[(rng.next() as usize) % valid.len()].clone()
            };
            let flips = 1 + rng.next() % 4;
            for _ in 0..flips {
                let at = FRAME_HEADER_LEN
                    + (rng.next() as usize) % (frame.len() - FRAME_HEADER_LEN).max(1);
                if let Some(b) = frame.get_mut(at) {
                    *b ^= 1 << (rng.next() % 8);
                }
            }
            if rng.next() % 8 == 0 {
                let keep = (rng.next() as usize) % (frame.len() + 1);
                frame.truncate(keep);
            }
            if let Ok(Some((msg, _))) = decode_frame(&frame) {
                decoded += 1;
                assert!(encode_frame(&msg).is_ok());
            }
        }
        // Some mutations (a flipped byte inside a payload) must still decode, or the test is
        // not exercising the validator on near-valid input.
        assert!(decoded > 0);
    }
}
