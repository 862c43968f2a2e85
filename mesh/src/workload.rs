//! The published benchmark workloads, shared by the VM engine (the host fills guest memory
//! with the pattern before a benchmark guest starts), the chunk store and the benchmarks, so
//! every figure is measured on exactly the same bytes.

/// Seed of the benchmark "pattern" (the migration issue's workload).
pub const PATTERN_SEED: u32 = 0x2545_F491;

/// The benchmark "pattern": 8-byte little-endian words whose low 32 bits are successive
/// xorshift32 outputs from [`PATTERN_SEED`] and whose high 32 bits are zero (~1.95x with
/// zstd 1). Exactly `len` bytes (a partial last word is cut).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    PatternStream::new().fill(&mut out);
    out
}

/// Incompressible bytes (xorshift64* from `seed`); exactly `len` bytes.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    RandomStream::new(seed).fill(&mut out);
    out
}

/// The pattern as a stream, for filling large areas piece by piece: consecutive `fill`s of
/// whole words give the same bytes as one `pattern` of the total length.
pub struct PatternStream(u32);

impl PatternStream {
    pub fn new() -> Self {
        Self(PATTERN_SEED)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        fill_words(out, || {
            let x = &mut self.0;
            *x ^= *x << 13;
            *x ^= *x >> 17;
            *x ^= *x << 5;
            u64::from(*x)
        });
    }
}

impl Default for PatternStream {
    fn default() -> Self {
        Self::new()
    }
}

/// [`random`] as a stream (see [`PatternStream`]).
pub struct RandomStream(u64);

impl RandomStream {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        fill_words(out, || {
            let x = &mut self.0;
            *x ^= *x >> 12;
            *x ^= *x << 25;
            *x ^= *x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        });
    }
}

fn fill_words(out: &mut [u8], mut next: impl FnMut() -> u64) {
    for word in out.chunks_mut(8) {
        let bytes = next().to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// A mostly-zero buffer: one 4 KiB page in 32 holds the pattern (~3% of the bytes), the
/// rest is zero, like a freshly booted guest.
pub fn mostly_zero(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let page = pattern(4096);
    for chunk in out.chunks_mut(32 * 4096) {
        let n = chunk.len().min(4096);
        chunk[..n].copy_from_slice(&page[..n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_in_pieces_equal_one_buffer() {
        let mut p = PatternStream::new();
        let mut r = RandomStream::new(7);
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        p.fill(&mut a[..1024]);
        p.fill(&mut a[1024..]);
        r.fill(&mut b[..8]);
        r.fill(&mut b[8..]);
        assert_eq!(a, pattern(4096));
        assert_eq!(b, random(4096, 7));
    }

    #[test]
    fn pattern_matches_the_definition() {
        let p = pattern(24);
        // xorshift32 from 0x2545F491, computed by hand from the definition.
        let mut x: u32 = 0x2545_F491;
        for word in p.chunks_exact(8) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            assert_eq!(&word[..4], &x.to_le_bytes());
            assert_eq!(&word[4..], &[0, 0, 0, 0]);
        }
        assert_eq!(pattern(13).len(), 13);
    }

    #[test]
    fn generators_have_the_expected_compressibility() {
        let len = 1 << 20;
        let ratio = |b: &[u8]| b.len() as f64 / zstd::bulk::compress(b, 1).unwrap().len() as f64;
        let p = ratio(&pattern(len));
        assert!((1.8..2.1).contains(&p), "pattern ratio {p}");
        let r = ratio(&random(len, 1));
        assert!(r < 1.01, "random ratio {r}");
        let z = mostly_zero(len);
        let nonzero_pages = z
            .chunks(4096)
            .filter(|p| !crate::chunks::is_zero(p))
            .count();
        assert_eq!(nonzero_pages, len / 4096 / 32);
    }
}
