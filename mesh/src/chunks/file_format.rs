//! The on-disk format of one stored chunk: a 16-byte header, then the payload (a zstd frame,
//! or the raw bytes when the chunk did not compress).
//!
//! ```text
//! 0..4   magic "NCCK"
//! 4      format version (1)
//! 5      flags: bit 0 = payload is raw; other bits must be 0
//! 6..8   reserved, 0
//! 8..12  raw (uncompressed) length, u32 LE, 1..=64 KiB
//! 12..16 payload length, u32 LE (a file shorter or longer than this is truncated/corrupt)
//! ```
//! The id is the file name; the header does not repeat it.

use super::chunking::MAX_CHUNK_SIZE;
use super::codec::{EncodedChunk, FRAME_MARGIN};

pub const HEADER_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"NCCK";
const VERSION: u8 = 1;
const FLAG_RAW: u8 = 1;

/// The largest chunk file a store reads.
pub const MAX_FILE_LEN: usize = HEADER_LEN + MAX_CHUNK_SIZE + FRAME_MARGIN;

/// What is wrong with a chunk file's bytes (the caller adds which file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("bad magic {found:02x?}, expected \"NCCK\"")]
    Magic { found: [u8; 4] },
    #[error("unsupported format version {found} (this build reads {VERSION})")]
    Version { found: u8 },
    #[error("unknown flag bits {found:#04x} or non-zero reserved bytes")]
    Flags { found: u8 },
    #[error("raw length {len} is out of range 1..={MAX_CHUNK_SIZE}")]
    RawLength { len: u32 },
    #[error("payload length {len} exceeds the limit {limit}")]
    PayloadLength { len: u32, limit: usize },
    #[error("payload is {got} bytes but the header says {expected} (truncated or extended)")]
    PayloadMismatch { got: usize, expected: u32 },
}

/// Header plus payload of a chunk of `raw_len` bytes.
pub fn encode_file(encoded: &EncodedChunk, raw_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + encoded.bytes.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(if encoded.raw { FLAG_RAW } else { 0 });
    out.extend_from_slice(&[0, 0]);
    // Both lengths are bounded by MAX_FILE_LEN, checked by the callers (codec limits).
    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
    out.extend_from_slice(&(encoded.bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded.bytes);
    out
}

/// Splits a chunk file into the encoded chunk and its raw length, checking the header.
pub fn decode_file(mut file: Vec<u8>) -> Result<(EncodedChunk, usize), FormatError> {
    let header: [u8; HEADER_LEN] = file
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FormatError::ShortHeader { len: file.len() })?;
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(FormatError::Magic { found: magic });
    }
    if header[4] != VERSION {
        return Err(FormatError::Version { found: header[4] });
    }
    let flags = header[5];
    if flags & !FLAG_RAW != 0 || header[6] != 0 || header[7] != 0 {
        return Err(FormatError::Flags { found: flags });
    }
    let raw_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if raw_len == 0 || raw_len as usize > MAX_CHUNK_SIZE {
        return Err(FormatError::RawLength { len: raw_len });
    }
    let payload_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let limit = raw_len as usize + FRAME_MARGIN;
    if payload_len as usize > limit {
        return Err(FormatError::PayloadLength {
            len: payload_len,
            limit,
        });
    }
    let got = file.len() - HEADER_LEN;
    if got != payload_len as usize {
        return Err(FormatError::PayloadMismatch {
            got,
            expected: payload_len,
        });
    }
    file.drain(..HEADER_LEN);
    let encoded = EncodedChunk {
        raw: flags & FLAG_RAW != 0,
        bytes: file,
    };
    Ok((encoded, raw_len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_file(
            &EncodedChunk {
                raw: false,
                bytes: vec![1, 2, 3, 4, 5],
            },
            4096,
        )
    }

    #[test]
    fn round_trip() {
        for raw in [false, true] {
            let enc = EncodedChunk {
                raw,
                bytes: vec![9; 100],
            };
            let file = encode_file(&enc, 100);
            assert_eq!(file.len(), HEADER_LEN + 100);
            assert_eq!(decode_file(file), Ok((enc, 100)));
        }
    }

    #[test]
    fn every_header_field_is_checked() {
        let ok = sample();
        type Check = fn(&FormatError) -> bool;
        let cases: Vec<(usize, u8, Check)> = vec![
            (0, b'X', |e| matches!(e, FormatError::Magic { .. })),
            (4, 2, |e| matches!(e, FormatError::Version { found: 2 })),
            (5, 2, |e| matches!(e, FormatError::Flags { found: 2 })),
            (6, 1, |e| matches!(e, FormatError::Flags { .. })),
            (11, 1, |e| matches!(e, FormatError::RawLength { .. })),
            (14, 1, |e| matches!(e, FormatError::PayloadLength { .. })),
            (12, 6, |e| {
                matches!(
                    e,
                    FormatError::PayloadMismatch {
                        got: 5,
                        expected: 6
                    }
                )
            }),
        ];
        for (pos, value, check) in cases {
            let mut f = ok.clone();
            f[pos] = value;
            let err = decode_file(f).err();
            assert!(err.as_ref().is_some_and(check), "byte {pos}: {err:?}");
        }
        let mut zero_len = ok.clone();
        zero_len[8..12].fill(0);
        assert_eq!(
            decode_file(zero_len),
            Err(FormatError::RawLength { len: 0 })
        );
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let ok = sample();
        for cut in 0..ok.len() {
            assert!(decode_file(ok[..cut].to_vec()).is_err(), "cut {cut}");
        }
        let mut longer = ok.clone();
        longer.push(0);
        assert!(matches!(
            decode_file(longer),
            Err(FormatError::PayloadMismatch { got: 6, .. })
        ));
    }
}
