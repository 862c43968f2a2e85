//! Chunk compression: zstd at a chosen level, incompressible chunks kept raw (flagged, so
//! nobody spends CPU decompressing them), and a bounded, verifying decoder for chunks that
//! came from outside.

use tracing::trace;
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, ResetDirective, WriteBuf};

use super::chunking::MAX_CHUNK_SIZE;
use super::id::ChunkId;

/// A zstd frame may be this much larger than the raw chunk it holds and still be accepted
/// (zstd's own worst case for 64 KiB is 288 bytes over). Our encoder never produces a frame
/// this large: it keeps such chunks raw.
pub const FRAME_MARGIN: usize = 512;

/// A chunk stays raw unless zstd gets it below this share of its size (in percent): under a
/// 3% saving, the CPU spent decompressing it costs more than the bytes saved.
const KEEP_RAW_PERCENT: usize = 97;

/// Bytes sampled by the entropy pre-check (spread over the chunk in `SAMPLE_WINDOWS` windows).
const SAMPLE_BYTES: usize = 1024;
const SAMPLE_WINDOWS: usize = 16;

/// The pre-check estimates the collision (Renyi order-2) entropy of the sample, which is never
/// above its Shannon entropy, from `sum c(c-1)` over the byte histogram: an unbiased estimate
/// of `n(n-1) * sum p^2`. A chunk is taken as incompressible when that entropy is at least
/// 7.7 bits per byte (so an order-0 coder saves at most ~3.75%), that is when the sum is at
/// most `n(n-1) * 2^-7.7` (2^-7.7 = 0.00481). Uniform bytes give ~4,090 for a 5,035 limit
/// (about 10 standard deviations below it); the benchmark pattern (half zero bytes) ~270,000.
/// Integer arithmetic only: no logarithms per chunk.
const MAX_PAIR_SUM: u64 = (SAMPLE_BYTES * (SAMPLE_BYTES - 1)) as u64 * 481 / 100_000;

/// A zstd compression level, 1 (fastest, the default) to 19.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Level(i32);

impl Level {
    pub const MIN: i32 = 1;
    pub const MAX: i32 = 19;

    pub fn new(level: i32) -> Result<Self, CodecError> {
        if (Self::MIN..=Self::MAX).contains(&level) {
            Ok(Self(level))
        } else {
            Err(CodecError::Level { level })
        }
    }

    pub const fn get(self) -> i32 {
        self.0
    }
}

impl Default for Level {
    fn default() -> Self {
        Self(1)
    }
}

/// A chunk as stored and sent: a zstd frame, or the raw bytes when they did not compress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    pub raw: bool,
    pub bytes: Vec<u8>,
}

/// What is wrong with a chunk or its encoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("zstd level {level} is out of range 1..=19")]
    Level { level: i32 },
    #[error("chunk length {len} is out of range 1..={max}")]
    ChunkLength { len: usize, max: usize },
    #[error("raw chunk is {got} bytes, expected {expected}")]
    RawLength { got: usize, expected: usize },
    #[error("zstd frame is {len} bytes, more than the limit {limit} for a {expected}-byte chunk")]
    FrameTooLarge {
        len: usize,
        limit: usize,
        expected: usize,
    },
    #[error("zstd frame decompresses to more than the expected {expected} bytes")]
    OutputTooLarge { expected: usize },
    #[error("zstd frame decompresses to {got} bytes, expected {expected}")]
    OutputTooShort { got: usize, expected: usize },
    #[error("zstd frame is malformed: {reason}")]
    Zstd { reason: &'static str },
    #[error("chunk hash mismatch: expected {expected}, bytes hash to {got}")]
    HashMismatch { expected: ChunkId, got: ChunkId },
    #[error("cannot set zstd level {level}: {reason}")]
    Setup { level: i32, reason: &'static str },
}

/// Compresses chunks with one reusable zstd context (creating a context per 4 KiB chunk
/// would cost more than compressing it). Not shared between threads: make one per thread.
pub struct ChunkEncoder {
    cctx: CCtx<'static>,
    level: Level,
    precheck: bool,
}

impl ChunkEncoder {
    pub fn new(level: Level) -> Result<Self, CodecError> {
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(level.get()))
            .map_err(|code| CodecError::Setup {
                level: level.get(),
                reason: zstd_safe::get_error_name(code),
            })?;
        // The length is known from the chunk list; the frame need not repeat it or a checksum
        // (the blake3 id covers the bytes).
        let _ = cctx.set_parameter(CParameter::ContentSizeFlag(false));
        let _ = cctx.set_parameter(CParameter::ChecksumFlag(false));
        Ok(Self {
            cctx,
            level,
            precheck: true,
        })
    }

    /// Turns the entropy pre-check on or off (on by default). With it off, every chunk goes
    /// through zstd, and only the size test decides; benchmarks compare the two.
    pub fn with_entropy_precheck(mut self, on: bool) -> Self {
        self.precheck = on;
        self
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Encodes one chunk (1 byte to 64 KiB). Raw when the pre-check finds it looks random or
    /// when zstd cannot bring it under 97% of its size.
    pub fn encode(&mut self, raw: &[u8]) -> Result<EncodedChunk, CodecError> {
        check_len(raw.len())?;
        if self.precheck && looks_incompressible(raw) {
            trace!(len = raw.len(), "chunk kept raw: high entropy sample");
            return Ok(keep_raw(raw));
        }
        let limit = raw.len() * KEEP_RAW_PERCENT / 100;
        let mut out = Vec::with_capacity(limit);
        match self.cctx.compress2(&mut out, raw) {
            Ok(n) if n < limit => Ok(EncodedChunk {
                raw: false,
                bytes: out,
            }),
            Ok(_) => Ok(keep_raw(raw)),
            Err(code) => {
                // Almost always "destination too small": the chunk does not compress enough.
                // Any other failure also leaves raw as a correct answer.
                trace!(
                    len = raw.len(),
                    reason = zstd_safe::get_error_name(code),
                    "chunk kept raw"
                );
                let _ = self.cctx.reset(ResetDirective::SessionOnly);
                Ok(keep_raw(raw))
            }
        }
    }
}

fn keep_raw(raw: &[u8]) -> EncodedChunk {
    EncodedChunk {
        raw: true,
        bytes: raw.to_vec(),
    }
}

fn check_len(len: usize) -> Result<(), CodecError> {
    if (1..=MAX_CHUNK_SIZE).contains(&len) {
        Ok(())
    } else {
        Err(CodecError::ChunkLength {
            len,
            max: MAX_CHUNK_SIZE,
        })
    }
}

/// Whether a sample of `raw` is so close to uniformly random bytes that zstd cannot save 3%
/// (see [`MAX_PAIR_SUM`]). Chunks shorter than the sample are left to zstd. It cannot see
/// long-range repeats of random data (a random page repeated inside one chunk): those are
/// kept raw.
pub fn looks_incompressible(raw: &[u8]) -> bool {
    if raw.len() < SAMPLE_BYTES {
        return false;
    }
    let window = SAMPLE_BYTES / SAMPLE_WINDOWS;
    let stride = (raw.len() - window) / (SAMPLE_WINDOWS - 1);
    let mut counts = [0u32; 256];
    for w in 0..SAMPLE_WINDOWS {
        let start = w * stride;
        for &b in &raw[start..start + window] {
            counts[usize::from(b)] += 1;
        }
    }
    let pairs: u64 = counts
        .iter()
        .map(|&c| u64::from(c) * u64::from(c.saturating_sub(1)))
        .sum();
    pairs <= MAX_PAIR_SUM
}

/// Decodes chunks that may come from outside, with one reusable zstd context. Output is
/// bounded by the expected length whatever a frame claims, and checked against the id.
pub struct ChunkDecoder {
    dctx: DCtx<'static>,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self {
            dctx: DCtx::create(),
        }
    }

    /// Decodes `encoded` into a new buffer of exactly `expected_len` bytes whose blake3 is
    /// `expected_id`, or fails; never returns other bytes.
    pub fn decode(
        &mut self,
        encoded: &EncodedChunk,
        expected_id: &ChunkId,
        expected_len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        check_len(expected_len)?;
        if encoded.raw {
            check_raw(&encoded.bytes, expected_len)?;
            verify(&encoded.bytes, expected_id)?;
            return Ok(encoded.bytes.clone());
        }
        let mut out = Vec::with_capacity(expected_len);
        self.decompress(&encoded.bytes, &mut out, expected_len)?;
        verify(&out, expected_id)?;
        Ok(out)
    }

    /// [`decode`](Self::decode) taking the encoded chunk by value: a raw chunk's bytes are
    /// checked and handed back without a copy.
    pub fn decode_owned(
        &mut self,
        encoded: EncodedChunk,
        expected_id: &ChunkId,
        expected_len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        if !encoded.raw {
            return self.decode(&encoded, expected_id, expected_len);
        }
        check_len(expected_len)?;
        check_raw(&encoded.bytes, expected_len)?;
        verify(&encoded.bytes, expected_id)?;
        Ok(encoded.bytes)
    }

    /// Decodes into `out` (whose length is the expected length), e.g. straight into guest
    /// memory. On error `out` holds unspecified bytes: the caller must not use them.
    pub fn decode_into(
        &mut self,
        encoded: &EncodedChunk,
        expected_id: &ChunkId,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let expected_len = out.len();
        check_len(expected_len)?;
        if encoded.raw {
            check_raw(&encoded.bytes, expected_len)?;
            out.copy_from_slice(&encoded.bytes);
        } else {
            self.decompress(&encoded.bytes, out, expected_len)?;
        }
        verify(out, expected_id)
    }

    /// Decompresses `frame` into `dst`, whose capacity bounds the output; the result must be
    /// exactly `expected_len` bytes.
    fn decompress<C: WriteBuf + ?Sized>(
        &mut self,
        frame: &[u8],
        dst: &mut C,
        expected_len: usize,
    ) -> Result<(), CodecError> {
        let limit = expected_len + FRAME_MARGIN;
        if frame.len() > limit {
            return Err(CodecError::FrameTooLarge {
                len: frame.len(),
                limit,
                expected: expected_len,
            });
        }
        // One-shot decompression writes straight into `dst` and stops with an error when it
        // is full, whatever content size the frame header claims.
        let result = self.dctx.decompress(dst, frame);
        // A failed frame can leave the context mid-frame: start the next one clean.
        let _ = self.dctx.reset(ResetDirective::SessionOnly);
        match result {
            Ok(n) if n == expected_len => Ok(()),
            Ok(got) => Err(CodecError::OutputTooShort {
                got,
                expected: expected_len,
            }),
            Err(code) if is_dst_too_small(code) => Err(CodecError::OutputTooLarge {
                expected: expected_len,
            }),
            Err(code) => Err(CodecError::Zstd {
                reason: zstd_safe::get_error_name(code),
            }),
        }
    }
}

fn is_dst_too_small(code: zstd_safe::ErrorCode) -> bool {
    zstd_safe::get_error_name(code).contains("too small")
}

fn check_raw(bytes: &[u8], expected_len: usize) -> Result<(), CodecError> {
    if bytes.len() == expected_len {
        Ok(())
    } else {
        Err(CodecError::RawLength {
            got: bytes.len(),
            expected: expected_len,
        })
    }
}

fn verify(bytes: &[u8], expected: &ChunkId) -> Result<(), CodecError> {
    let got = ChunkId::of(bytes);
    if got == *expected {
        Ok(())
    } else {
        Err(CodecError::HashMismatch {
            expected: *expected,
            got,
        })
    }
}

/// Encodes one chunk with a fresh context. For many chunks, keep a [`ChunkEncoder`].
pub fn encode_chunk(raw: &[u8], level: Level) -> Result<EncodedChunk, CodecError> {
    ChunkEncoder::new(level)?.encode(raw)
}

/// Decodes and verifies one chunk with a fresh context. For many, keep a [`ChunkDecoder`].
pub fn decode_chunk(
    encoded: &EncodedChunk,
    expected_id: &ChunkId,
    expected_len: usize,
) -> Result<Vec<u8>, CodecError> {
    ChunkDecoder::new().decode(encoded, expected_id, expected_len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic incompressible bytes.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        crate::workload::random(len, seed)
    }

    /// Text-like bytes that zstd compresses well.
    pub(crate) fn text(len: usize) -> Vec<u8> {
        let words = b"the quick brown fox jumps over the lazy dog chunk store ";
        (0..len).map(|i| words[(i * 7 / 5) % words.len()]).collect()
    }

    #[test]
    fn levels_are_validated() {
        assert_eq!(Level::default().get(), 1);
        assert!(Level::new(1).is_ok() && Level::new(19).is_ok());
        for bad in [0, -1, 20, i32::MIN] {
            assert!(matches!(Level::new(bad), Err(CodecError::Level { level }) if level == bad));
        }
    }

    #[test]
    fn compressible_round_trip_at_several_levels() {
        let raw = text(65536);
        let id = ChunkId::of(&raw);
        for level in [1, 3, 19] {
            let enc = encode_chunk(&raw, Level::new(level).unwrap()).unwrap();
            assert!(!enc.raw);
            assert!(
                enc.bytes.len() < raw.len() / 4,
                "level {level}: {}",
                enc.bytes.len()
            );
            assert_eq!(decode_chunk(&enc, &id, raw.len()).unwrap(), raw);
        }
    }

    #[test]
    fn incompressible_is_kept_raw_with_and_without_precheck() {
        let raw = noise(16384, 7);
        assert!(looks_incompressible(&raw));
        for precheck in [true, false] {
            let mut enc = ChunkEncoder::new(Level::default())
                .unwrap()
                .with_entropy_precheck(precheck);
            let e = enc.encode(&raw).unwrap();
            assert!(e.raw, "precheck {precheck}");
            assert_eq!(e.bytes, raw);
            // The context is still usable after zstd ran out of room.
            let t = text(4096);
            assert!(!enc.encode(&t).unwrap().raw);
        }
        assert_eq!(
            decode_chunk(&keep_raw(&raw), &ChunkId::of(&raw), raw.len()).unwrap(),
            raw
        );
    }

    #[test]
    fn half_random_words_are_not_taken_for_noise() {
        // The benchmark's "pattern": random low halves, zero high halves (~2x with zstd).
        let mut raw = noise(65536, 3);
        for w in raw.chunks_exact_mut(8) {
            w[4..].fill(0);
        }
        assert!(!looks_incompressible(&raw));
        let e = encode_chunk(&raw, Level::default()).unwrap();
        assert!(!e.raw);
        assert!(e.bytes.len() < raw.len() * 6 / 10, "{}", e.bytes.len());
    }

    #[test]
    fn precheck_separates_noise_from_nearly_random_data() {
        for seed in 0..200u64 {
            for len in [1024, 4096, 65536, 5000] {
                assert!(
                    looks_incompressible(&noise(len, seed * 7919 + 1)),
                    "seed {seed} len {len}"
                );
            }
        }
        // 7 random bits per byte: zstd saves ~12%, so it must be tried.
        let mut seven = noise(65536, 3);
        seven.iter_mut().for_each(|b| *b &= 0x7f);
        assert!(!looks_incompressible(&seven));
        assert!(!encode_chunk(&seven, Level::default()).unwrap().raw);
        assert!(!looks_incompressible(&text(65536)));
        // A short zero run in random data: the chunk still cannot shrink by 3%, kept raw.
        let mut mostly = noise(65536, 4);
        mostly[..64].fill(0);
        assert!(encode_chunk(&mostly, Level::default()).unwrap().raw);
    }

    #[test]
    fn short_chunks_skip_the_precheck() {
        let raw = noise(100, 1);
        assert!(!looks_incompressible(&raw));
        let e = encode_chunk(&raw, Level::default()).unwrap();
        assert!(e.raw);
        let t = text(100);
        let e = encode_chunk(&t, Level::default()).unwrap();
        assert_eq!(decode_chunk(&e, &ChunkId::of(&t), 100).unwrap(), t);
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(matches!(
            encode_chunk(&[], Level::default()),
            Err(CodecError::ChunkLength { len: 0, .. })
        ));
        let big = vec![1u8; MAX_CHUNK_SIZE + 1];
        assert!(matches!(
            encode_chunk(&big, Level::default()),
            Err(CodecError::ChunkLength {
                len: 65537,
                max: 65536
            })
        ));
        let raw = keep_raw(&big);
        assert!(matches!(
            decode_chunk(&raw, &ChunkId::of(&big), big.len()),
            Err(CodecError::ChunkLength { .. })
        ));
    }

    #[test]
    fn wrong_hash_is_refused() {
        let raw = text(4096);
        let other = ChunkId::of(b"something else");
        let enc = encode_chunk(&raw, Level::default()).unwrap();
        let err = decode_chunk(&enc, &other, raw.len()).err();
        assert!(
            matches!(err, Some(CodecError::HashMismatch { expected, got }) if expected == other && got == ChunkId::of(&raw)),
            "{err:?}"
        );
        let err = decode_chunk(&keep_raw(&raw), &other, raw.len()).err();
        assert!(
            matches!(err, Some(CodecError::HashMismatch { .. })),
            "{err:?}"
        );
        let mut out = vec![0u8; raw.len()];
        let err = ChunkDecoder::new()
            .decode_into(&enc, &other, &mut out)
            .err();
        assert!(
            matches!(err, Some(CodecError::HashMismatch { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn raw_of_wrong_length_is_refused() {
        let raw = text(4096);
        let err = decode_chunk(&keep_raw(&raw), &ChunkId::of(&raw), 4095).err();
        assert!(
            matches!(
                err,
                Some(CodecError::RawLength {
                    got: 4096,
                    expected: 4095
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn decompression_bomb_is_bounded() {
        // A 16 MiB run of zeros compresses to a few hundred bytes, with its true size in the
        // header: the decoder must stop at the expected 4 KiB, not allocate 16 MiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 16 << 20], 19).unwrap();
        assert!(bomb.len() < 4096 + FRAME_MARGIN, "{}", bomb.len());
        let enc = EncodedChunk {
            raw: false,
            bytes: bomb,
        };
        let id = ChunkId::of(&[0u8; 4096]);
        let err = decode_chunk(&enc, &id, 4096).err();
        assert!(
            matches!(err, Some(CodecError::OutputTooLarge { expected: 4096 })),
            "{err:?}"
        );
        // The same without the content size in the header (a streamed frame).
        let mut streamed = Vec::new();
        {
            let mut w = zstd::stream::Encoder::new(&mut streamed, 3).unwrap();
            std::io::copy(&mut std::io::repeat(0).take_bytes(8 << 20), &mut w).unwrap();
            w.finish().unwrap();
        }
        let enc = EncodedChunk {
            raw: false,
            bytes: streamed,
        };
        let mut dec = ChunkDecoder::new();
        let err = dec.decode(&enc, &id, 4096).err();
        assert!(
            matches!(err, Some(CodecError::OutputTooLarge { .. })),
            "{err:?}"
        );
        // The decoder still works afterwards.
        let t = text(4096);
        let good = encode_chunk(&t, Level::default()).unwrap();
        assert_eq!(dec.decode(&good, &ChunkId::of(&t), 4096).unwrap(), t);
    }

    trait TakeBytes: std::io::Read + Sized {
        fn take_bytes(self, n: u64) -> std::io::Take<Self> {
            self.take(n)
        }
    }
    impl<R: std::io::Read> TakeBytes for R {}

    #[test]
    fn short_output_and_oversized_frame_are_refused() {
        let t = text(4000);
        let enc = encode_chunk(&t, Level::default()).unwrap();
        let err = decode_chunk(&enc, &ChunkId::of(&t), 4096).err();
        assert!(
            matches!(
                err,
                Some(CodecError::OutputTooShort {
                    got: 4000,
                    expected: 4096
                })
            ),
            "{err:?}"
        );
        let huge = EncodedChunk {
            raw: false,
            bytes: vec![0u8; 4096 + FRAME_MARGIN + 1],
        };
        let err = decode_chunk(&huge, &ChunkId::of(&t), 4096).err();
        assert!(
            matches!(err, Some(CodecError::FrameTooLarge { limit, .. }) if limit == 4096 + FRAME_MARGIN),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_and_truncated_frames_are_errors() {
        let t = text(8192);
        let id = ChunkId::of(&t);
        let enc = encode_chunk(&t, Level::default()).unwrap();
        let mut dec = ChunkDecoder::new();
        for cut in [0, 1, 4, enc.bytes.len() / 2, enc.bytes.len() - 1] {
            let bad = EncodedChunk {
                raw: false,
                bytes: enc.bytes[..cut].to_vec(),
            };
            assert!(dec.decode(&bad, &id, t.len()).is_err(), "cut {cut}");
        }
        let garbage = EncodedChunk {
            raw: false,
            bytes: noise(300, 9),
        };
        assert!(matches!(
            dec.decode(&garbage, &id, t.len()),
            Err(CodecError::Zstd { .. })
        ));
        // Flipping a byte of a valid frame gives an error, never wrong bytes.
        let mut errors = 0;
        for pos in 0..enc.bytes.len() {
            let mut bytes = enc.bytes.clone();
            bytes[pos] ^= 0x41;
            let bad = EncodedChunk { raw: false, bytes };
            // Some header bits do not change the output; the rest must be caught.
            match dec.decode(&bad, &id, t.len()) {
                Ok(out) => assert_eq!(out, t, "pos {pos}"),
                Err(_) => errors += 1,
            }
        }
        assert!(
            errors > enc.bytes.len() / 2,
            "{errors} of {}",
            enc.bytes.len()
        );
        assert_eq!(dec.decode(&enc, &id, t.len()).unwrap(), t);
    }

    #[test]
    fn decode_into_fills_the_buffer() {
        let t = text(16384);
        let enc = encode_chunk(&t, Level::default()).unwrap();
        let mut out = vec![0u8; t.len()];
        ChunkDecoder::new()
            .decode_into(&enc, &ChunkId::of(&t), &mut out)
            .unwrap();
        assert_eq!(out, t);
    }
}
