//! The messages of `/novacron/chunks/1`, the chunk exchange protocol, and their framing.
//!
//! A stream carries requests from the opener and responses from the acceptor, one after the
//! other: `Manifest(id)` is answered by one `Manifest(bytes)` or `NotFound(id)`;
//! `Chunks(ids)` (1 to [`MAX_IDS_PER_REQUEST`] distinct ids) by one `Chunk` or `NotFound`
//! per id, in the order asked, then `End`; or by a single `Busy` when the server's rate limit
//! says wait. The opener may send the next request on the same stream after the answer.
//!
//! Framing: a 4-byte big-endian body length, then the body: a tag byte and its fields
//! (integers big-endian). The reader checks the length against the direction's limit
//! ([`MAX_REQUEST_BODY`], [`MAX_RESPONSE_BODY`]) before it allocates, and the decoders check
//! every field: exact lengths, counts, flags, chunk sizes, frame sizes. A chunk's bytes are
//! NOT verified here (the receiver decodes them against the id it asked for).
//!
//! Pure: no IO; [`FrameSplitter`] cuts frames out of bytes as they arrive.

use crate::chunks::codec::FRAME_MARGIN;
use crate::chunks::{ChunkId, EncodedChunk, MAX_CHUNK_SIZE};

use super::manifest::MAX_MANIFEST_BYTES;

/// The protocol name.
pub const PROTOCOL_NAME: &str = "/novacron/chunks/1";
/// Most chunk ids in one request.
pub const MAX_IDS_PER_REQUEST: usize = 64;
/// Longest `retry_after` a server may ask for (a minute); longer values are refused.
pub const MAX_RETRY_AFTER_MS: u32 = 60_000;
/// Length of the frame header (the body length).
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest request body: a full chunk list.
pub const MAX_REQUEST_BODY: usize = 2 + MAX_IDS_PER_REQUEST * 32;
/// Largest response body: a full-size manifest.
pub const MAX_RESPONSE_BODY: usize = 1 + MAX_MANIFEST_BYTES;
/// Largest `Chunk` response body.
pub const MAX_CHUNK_BODY: usize = CHUNK_HEADER + MAX_CHUNK_SIZE + FRAME_MARGIN;

const TAG_GET_MANIFEST: u8 = 0x01;
const TAG_GET_CHUNKS: u8 = 0x02;
const TAG_MANIFEST: u8 = 0x81;
const TAG_NOT_FOUND: u8 = 0x82;
const TAG_CHUNK: u8 = 0x83;
const TAG_END: u8 = 0x84;
const TAG_BUSY: u8 = 0x85;
const FLAG_RAW: u8 = 1;
/// Tag, id, flags, raw length.
const CHUNK_HEADER: usize = 1 + 32 + 1 + 4;

/// What an opener asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The manifest of the chunk set with this id.
    Manifest([u8; 32]),
    /// These chunks (1 to 64, distinct).
    Chunks(Vec<ChunkId>),
}

/// What a server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The manifest archive asked for (the receiver checks it hashes to the id).
    Manifest(Vec<u8>),
    /// The server does not serve this manifest or chunk.
    NotFound([u8; 32]),
    /// One chunk as stored: a zstd frame or raw bytes, and its raw length.
    Chunk {
        id: ChunkId,
        encoded: EncodedChunk,
        raw_len: u32,
    },
    /// Every id of a `Chunks` request was answered.
    End,
    /// Rate limited: ask again after this long; nothing of the request was served.
    Busy { retry_after_ms: u32 },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("chunk exchange: frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("chunk exchange: empty frame")]
    Empty,
    #[error("chunk exchange: unknown message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("chunk exchange: {what} of {len} bytes, expected {expected}")]
    Length {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("chunk exchange: a chunk request lists {0} ids (1 to 64 allowed)")]
    IdCount(usize),
    #[error("chunk exchange: a chunk request lists {0} twice")]
    DuplicateId(ChunkId),
    #[error("chunk exchange: unknown chunk flags {0:#04x}")]
    Flags(u8),
    #[error("chunk exchange: chunk raw length {0} is out of range 1..=65536")]
    RawLength(u32),
    #[error("chunk exchange: chunk frame of {len} bytes does not fit a {raw_len}-byte chunk")]
    ChunkFrame { len: usize, raw_len: u32 },
    #[error("chunk exchange: retry_after of {0} ms is over the {MAX_RETRY_AFTER_MS} ms limit")]
    RetryAfter(u32),
    #[error("chunk exchange: empty manifest")]
    EmptyManifest,
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    // Bodies we build are bounded by MAX_RESPONSE_BODY (< 4 GiB).
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

impl Request {
    /// The request's frame (header and body). Callers keep to the limits: a chunk request
    /// with 0 or more than 64 ids is encoded but every server refuses it.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Request::Manifest(id) => {
                body.push(TAG_GET_MANIFEST);
                body.extend_from_slice(id);
            }
            Request::Chunks(ids) => {
                body.push(TAG_GET_CHUNKS);
                body.push(ids.len().min(255) as u8);
                for id in ids {
                    body.extend_from_slice(id.as_bytes());
                }
            }
        }
        frame(body)
    }

    /// Decodes a request body (without its header).
    pub fn decode(body: &[u8]) -> Result<Request, WireError> {
        if body.len() > MAX_REQUEST_BODY {
            return Err(WireError::FrameTooLarge {
                len: body.len(),
                max: MAX_REQUEST_BODY,
            });
        }
        let (&tag, rest) = body.split_first().ok_or(WireError::Empty)?;
        match tag {
            TAG_GET_MANIFEST => Ok(Request::Manifest(id32("manifest request", rest)?)),
            TAG_GET_CHUNKS => {
                let (&count, ids) = rest.split_first().ok_or(WireError::Length {
                    what: "chunk request",
                    len: 0,
                    expected: 1,
                })?;
                let count = usize::from(count);
                if count == 0 || count > MAX_IDS_PER_REQUEST {
                    return Err(WireError::IdCount(count));
                }
                if ids.len() != count * 32 {
                    return Err(WireError::Length {
                        what: "chunk id list",
                        len: ids.len(),
                        expected: count * 32,
                    });
                }
                let mut out: Vec<ChunkId> = Vec::with_capacity(count);
                for raw in ids.chunks_exact(32) {
                    let id = ChunkId::from_bytes(id32("chunk id", raw)?);
                    if out.contains(&id) {
                        return Err(WireError::DuplicateId(id));
                    }
                    out.push(id);
                }
                Ok(Request::Chunks(out))
            }
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

impl Response {
    /// The response's frame (header and body).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Response::Manifest(bytes) => {
                body.reserve(1 + bytes.len());
                body.push(TAG_MANIFEST);
                body.extend_from_slice(bytes);
            }
            Response::NotFound(id) => {
                body.push(TAG_NOT_FOUND);
                body.extend_from_slice(id);
            }
            Response::Chunk {
                id,
                encoded,
                raw_len,
            } => {
                body.reserve(CHUNK_HEADER + encoded.bytes.len());
                body.push(TAG_CHUNK);
                body.extend_from_slice(id.as_bytes());
                body.push(if encoded.raw { FLAG_RAW } else { 0 });
                body.extend_from_slice(&raw_len.to_be_bytes());
                body.extend_from_slice(&encoded.bytes);
            }
            Response::End => body.push(TAG_END),
            Response::Busy { retry_after_ms } => {
                body.push(TAG_BUSY);
                body.extend_from_slice(&retry_after_ms.to_be_bytes());
            }
        }
        frame(body)
    }

    /// Decodes a response body (without its header).
    pub fn decode(body: &[u8]) -> Result<Response, WireError> {
        if body.len() > MAX_RESPONSE_BODY {
            return Err(WireError::FrameTooLarge {
                len: body.len(),
                max: MAX_RESPONSE_BODY,
            });
        }
        let (&tag, rest) = body.split_first().ok_or(WireError::Empty)?;
        match tag {
            TAG_MANIFEST => {
                if rest.is_empty() {
                    return Err(WireError::EmptyManifest);
                }
                Ok(Response::Manifest(rest.to_vec()))
            }
            TAG_NOT_FOUND => Ok(Response::NotFound(id32("not-found answer", rest)?)),
            TAG_CHUNK => decode_chunk_body(rest),
            TAG_END => {
                exact("end marker", rest, 0)?;
                Ok(Response::End)
            }
            TAG_BUSY => {
                exact("busy answer", rest, 4)?;
                let ms = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                if ms > MAX_RETRY_AFTER_MS {
                    return Err(WireError::RetryAfter(ms));
                }
                Ok(Response::Busy { retry_after_ms: ms })
            }
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

/// `id, flags, raw_len, frame…` of a `Chunk` response.
fn decode_chunk_body(rest: &[u8]) -> Result<Response, WireError> {
    if rest.len() > MAX_CHUNK_BODY - 1 {
        return Err(WireError::FrameTooLarge {
            len: rest.len() + 1,
            max: MAX_CHUNK_BODY,
        });
    }
    if rest.len() < CHUNK_HEADER - 1 {
        return Err(WireError::Length {
            what: "chunk answer",
            len: rest.len(),
            expected: CHUNK_HEADER - 1,
        });
    }
    let (id, rest) = rest.split_at(32);
    let id = ChunkId::from_bytes(id32("chunk id", id)?);
    let flags = rest[0];
    if flags & !FLAG_RAW != 0 {
        return Err(WireError::Flags(flags));
    }
    let raw_len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
    if raw_len == 0 || raw_len as usize > MAX_CHUNK_SIZE {
        return Err(WireError::RawLength(raw_len));
    }
    let bytes = &rest[5..];
    let raw = flags & FLAG_RAW != 0;
    let fits = if raw {
        bytes.len() == raw_len as usize
    } else {
        !bytes.is_empty() && bytes.len() <= raw_len as usize + FRAME_MARGIN
    };
    if !fits {
        return Err(WireError::ChunkFrame {
            len: bytes.len(),
            raw_len,
        });
    }
    Ok(Response::Chunk {
        id,
        encoded: EncodedChunk {
            raw,
            bytes: bytes.to_vec(),
        },
        raw_len,
    })
}

fn exact(what: &'static str, bytes: &[u8], expected: usize) -> Result<(), WireError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(WireError::Length {
            what,
            len: bytes.len(),
            expected,
        })
    }
}

fn id32(what: &'static str, bytes: &[u8]) -> Result<[u8; 32], WireError> {
    bytes.try_into().map_err(|_| WireError::Length {
        what,
        len: bytes.len(),
        expected: 32,
    })
}

/// The body length a frame header announces, refused over `max` (before anything is
/// allocated for it) or when zero.
pub fn body_len(header: [u8; FRAME_HEADER_LEN], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    if len == 0 {
        return Err(WireError::Empty);
    }
    Ok(len)
}

/// Cuts frames out of a byte stream as it arrives (for callers that do not read frame by
/// frame). Holds at most one frame's worth of bytes beyond what was pushed.
#[derive(Debug)]
pub struct FrameSplitter {
    max_body: usize,
    buf: Vec<u8>,
}

impl FrameSplitter {
    /// A splitter refusing bodies over `max_body`.
    pub fn new(max_body: usize) -> Self {
        FrameSplitter {
            max_body,
            buf: Vec::new(),
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete body, `Ok(None)` when more bytes are needed, or the error that
    /// ends the stream (an oversized or empty frame; the splitter is then useless).
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = body_len(*header, self.max_body)?;
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
        self.buf.drain(..FRAME_HEADER_LEN + len);
        Ok(Some(body))
    }

    /// Bytes held that are not yet a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let len = body_len(frame[..4].try_into().unwrap(), usize::MAX).unwrap();
        assert_eq!(frame.len(), 4 + len);
        &frame[4..]
    }

    fn ids(n: usize) -> Vec<ChunkId> {
        (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Manifest([3; 32]),
            Request::Chunks(ids(1)),
            Request::Chunks(ids(64)),
        ] {
            let f = r.encode();
            assert!(f.len() - 4 <= MAX_REQUEST_BODY);
            assert_eq!(Request::decode(body(&f)), Ok(r));
        }
    }

    #[test]
    fn responses_round_trip() {
        let chunk = |raw: bool, n: usize| Response::Chunk {
            id: ChunkId::of(b"c"),
            encoded: EncodedChunk {
                raw,
                bytes: vec![5; n],
            },
            raw_len: if raw { n as u32 } else { 65536 },
        };
        for r in [
            Response::Manifest(vec![1, 2, 3]),
            Response::NotFound([9; 32]),
            chunk(true, 65536),
            chunk(true, 1),
            chunk(false, 65536 + FRAME_MARGIN),
            chunk(false, 1),
            Response::End,
            Response::Busy {
                retry_after_ms: MAX_RETRY_AFTER_MS,
            },
        ] {
            let f = r.encode();
            assert!(f.len() - 4 <= MAX_RESPONSE_BODY);
            assert_eq!(Response::decode(body(&f)), Ok(r));
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let mut two = Request::Chunks(vec![ChunkId::of(b"a"), ChunkId::of(b"a")]).encode();
        assert!(matches!(
            Request::decode(body(&two)),
            Err(WireError::DuplicateId(_))
        ));
        two.pop();
        assert!(matches!(
            Request::decode(&two[4..]),
            Err(WireError::Length { .. })
        ));
        assert!(matches!(
            Request::decode(body(&Request::Chunks(ids(65)).encode())),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert_eq!(
            Request::decode(&[TAG_GET_CHUNKS, 65]),
            Err(WireError::IdCount(65))
        );
        assert_eq!(
            Request::decode(body(&Request::Chunks(vec![]).encode())),
            Err(WireError::IdCount(0))
        );
        assert_eq!(Request::decode(&[]), Err(WireError::Empty));
        assert_eq!(Request::decode(&[0x7f]), Err(WireError::UnknownTag(0x7f)));
        assert!(Request::decode(&[TAG_GET_MANIFEST; 34]).is_err());
        assert!(Request::decode(&[TAG_GET_CHUNKS]).is_err());
        assert!(matches!(
            Request::decode(&vec![TAG_GET_CHUNKS; MAX_REQUEST_BODY + 1]),
            Err(WireError::FrameTooLarge { .. })
        ));
        // A response tag is not a request.
        assert!(Request::decode(body(&Response::End.encode())).is_err());
    }

    #[test]
    fn malformed_responses_are_refused() {
        let good = Response::Chunk {
            id: ChunkId::of(b"c"),
            encoded: EncodedChunk {
                raw: true,
                bytes: vec![1; 100],
            },
            raw_len: 100,
        }
        .encode();
        let b = body(&good);
        let mut flags = b.to_vec();
        flags[33] = 2;
        assert_eq!(Response::decode(&flags), Err(WireError::Flags(2)));
        let mut short = b.to_vec();
        short.pop();
        assert!(matches!(
            Response::decode(&short),
            Err(WireError::ChunkFrame { len: 99, .. })
        ));
        let mut zero = b.to_vec();
        zero[34..38].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(Response::decode(&zero), Err(WireError::RawLength(0)));
        let mut big = b.to_vec();
        big[34..38].copy_from_slice(&65537u32.to_be_bytes());
        assert_eq!(Response::decode(&big), Err(WireError::RawLength(65537)));
        // A compressed frame larger than the chunk plus the margin.
        let mut fat = b.to_vec();
        fat[33] = 0;
        fat.extend(std::iter::repeat_n(0, FRAME_MARGIN + 1));
        assert!(matches!(
            Response::decode(&fat),
            Err(WireError::ChunkFrame { .. })
        ));
        assert!(Response::decode(&b[..20]).is_err());
        assert_eq!(
            Response::decode(&[TAG_BUSY, 0, 0, 0xff, 0xff]),
            Err(WireError::RetryAfter(65535))
        );
        assert!(Response::decode(&[TAG_END, 0]).is_err());
        assert_eq!(
            Response::decode(&[TAG_MANIFEST]),
            Err(WireError::EmptyManifest)
        );
        assert!(Response::decode(&[TAG_NOT_FOUND, 1, 2]).is_err());
        assert_eq!(Response::decode(&[0]), Err(WireError::UnknownTag(0)));
    }

    #[test]
    fn frame_headers_are_bounded_before_allocation() {
        assert_eq!(body_len(10u32.to_be_bytes(), 10), Ok(10));
        assert_eq!(
            body_len(u32::MAX.to_be_bytes(), MAX_RESPONSE_BODY),
            Err(WireError::FrameTooLarge {
                len: u32::MAX as usize,
                max: MAX_RESPONSE_BODY
            })
        );
        assert_eq!(body_len([0; 4], 10), Err(WireError::Empty));
    }

    #[test]
    fn splitter_cuts_frames_at_any_boundary() {
        let frames: Vec<Vec<u8>> = vec![
            Request::Manifest([1; 32]).encode(),
            Request::Chunks(ids(3)).encode(),
            Request::Manifest([2; 32]).encode(),
        ];
        let all: Vec<u8> = frames.concat();
        for step in [1, 3, 7, all.len()] {
            let mut s = FrameSplitter::new(MAX_REQUEST_BODY);
            let mut got = Vec::new();
            for piece in all.chunks(step) {
                s.push(piece);
                while let Some(b) = s.next_body().unwrap() {
                    got.push(Request::decode(&b).unwrap());
                }
            }
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(s.buffered(), 0);
        }
        let mut s = FrameSplitter::new(16);
        s.push(&17u32.to_be_bytes());
        assert!(s.next_body().is_err());
    }
}
