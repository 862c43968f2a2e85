//! `ChunkId`: the blake3 hash of a chunk's uncompressed bytes, the name a chunk has on disk and
//! on the wire.

use std::fmt;
use std::str::FromStr;

/// Length of a chunk id in bytes (a blake3 hash).
pub const CHUNK_ID_LEN: usize = 32;

/// The blake3 hash of a chunk's uncompressed bytes. Any 32 bytes are a valid id: an id read
/// from the network names a chunk, it does not prove anything about bytes until they are
/// hashed and compared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; CHUNK_ID_LEN]);

/// Why a string is not a chunk id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseChunkIdError {
    #[error("chunk id must be {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    #[error("chunk id has a non-hex character {found:?} at position {position}")]
    NotHex { position: usize, found: char },
}

impl ChunkId {
    /// Hashes `data` (the uncompressed chunk) into its id.
    ///
    /// ```
    /// use novacron_mesh::chunks::ChunkId;
    /// let id = ChunkId::of(b"chunk");
    /// assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
    /// assert_ne!(id, ChunkId::of(b"other"));
    /// ```
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Wraps 32 bytes, e.g. an id received from a peer.
    pub const fn from_bytes(bytes: [u8; CHUNK_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; CHUNK_ID_LEN] {
        &self.0
    }

    /// The lowercase hex of the first byte: the fan-out directory a store keeps the chunk in.
    pub fn fanout(&self) -> String {
        crate::util::hex::encode(&self.0[..1])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::util::hex::write(f, &self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = s.as_bytes();
        if raw.len() != CHUNK_ID_LEN * 2 {
            return Err(ParseChunkIdError::Length {
                expected: CHUNK_ID_LEN * 2,
                got: s.chars().count(),
            });
        }
        let mut out = [0u8; CHUNK_ID_LEN];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let hi = nibble(s, i * 2)?;
            let lo = nibble(s, i * 2 + 1)?;
            debug_assert_eq!(pair.len(), 2);
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

/// The value of the hex digit at byte `position` of `s`, or an error naming the character.
fn nibble(s: &str, position: usize) -> Result<u8, ParseChunkIdError> {
    s.as_bytes()
        .get(position)
        .copied()
        .and_then(crate::util::hex::value)
        .ok_or_else(|| ParseChunkIdError::NotHex {
            position,
            // `position` may fall inside a multi-byte character: name the char around it.
            found: s
                .char_indices()
                .take_while(|&(start, _)| start <= position)
                .last()
                .map_or('?', |(_, c)| c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_blake3_of_the_bytes() {
        let id = ChunkId::of(b"hello");
        assert_eq!(id.as_bytes(), blake3::hash(b"hello").as_bytes());
        assert_ne!(id, ChunkId::of(b"hellp"));
    }

    #[test]
    fn hex_round_trip_and_known_value() {
        let id = ChunkId::of(b"");
        let hex = id.to_string();
        // blake3 of the empty input, from the blake3 test vectors.
        assert_eq!(
            hex,
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(hex.parse::<ChunkId>(), Ok(id));
        assert_eq!(hex.to_uppercase().parse::<ChunkId>(), Ok(id));
        assert_eq!(id.fanout(), "af");
        assert_eq!(format!("{id:?}"), format!("ChunkId({hex})"));
    }

    #[test]
    fn parse_rejects_wrong_length() {
        assert_eq!(
            "abc".parse::<ChunkId>(),
            Err(ParseChunkIdError::Length {
                expected: 64,
                got: 3
            })
        );
        let long = "0".repeat(66);
        assert!(matches!(
            long.parse::<ChunkId>(),
            Err(ParseChunkIdError::Length { got: 66, .. })
        ));
    }

    #[test]
    fn parse_names_the_bad_character() {
        let mut s = "0".repeat(64);
        s.replace_range(10..11, "g");
        assert_eq!(
            s.parse::<ChunkId>(),
            Err(ParseChunkIdError::NotHex {
                position: 10,
                found: 'g'
            })
        );
        // A multi-byte character keeps the byte length at 64 but is still refused.
        let mut s = "0".repeat(62);
        s.push('é');
        let err = s.parse::<ChunkId>().err();
        assert!(
            matches!(
                err,
                Some(ParseChunkIdError::NotHex {
                    position: 62,
                    found: 'é'
                })
            ),
            "{err:?}"
        );
    }
}
