//! Fast all-zero detection: zero chunks are never hashed, stored or sent.

/// Bytes inspected per early-exit check: eight 64-bit words OR-ed together.
const BLOCK: usize = 64;

/// Whether every byte of `data` is zero. Reads 64-bit words, eight per step, and stops at the
/// first non-zero block; allocates nothing. The empty slice counts as zero.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        if or_words(block) != 0 {
            return false;
        }
    }
    let tail = blocks.remainder();
    let whole_words = tail.len() - tail.len() % 8;
    or_words(&tail[..whole_words]) == 0 && tail[whole_words..].iter().all(|&b| b == 0)
}

/// OR of the native-endian 64-bit words of `bytes` (its length must be a multiple of 8; a
/// trailing partial word is ignored, callers pass whole words).
fn or_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|w| <[u8; 8]>::try_from(w).map_or(u64::MAX, u64::from_ne_bytes))
        .fold(0, |acc, w| acc | w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_all_zero() {
        assert!(is_zero(&[]));
        for len in [1, 7, 8, 9, 63, 64, 65, 4096, 65536] {
            assert!(is_zero(&vec![0u8; len]), "len {len}");
        }
    }

    #[test]
    fn one_nonzero_byte_at_every_position() {
        // Every position of a buffer that spans whole blocks, a partial block and a partial
        // word, at every alignment of the slice start, with every single bit.
        let backing = vec![0u8; 4096 + 200];
        for start in 0..8 {
            for len in [1usize, 5, 8, 13, 64, 71, 135] {
                let mut buf = backing.clone();
                for pos in 0..len {
                    for bit in 0..8 {
                        buf[start + pos] = 1 << bit;
                        assert!(
                            !is_zero(&buf[start..start + len]),
                            "start {start} len {len} pos {pos} bit {bit}"
                        );
                        buf[start + pos] = 0;
                    }
                }
                // A non-zero byte just outside the slice does not count.
                buf[start + len] = 0xff;
                assert!(is_zero(&buf[start..start + len]), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn every_position_of_a_4k_chunk() {
        let mut page = vec![0u8; 4096];
        for pos in 0..page.len() {
            page[pos] = 0x80;
            assert!(!is_zero(&page), "pos {pos}");
            page[pos] = 0;
        }
        assert!(is_zero(&page));
    }
}
