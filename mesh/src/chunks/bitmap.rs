//! A fixed-length bitmap: the answer to "which of these chunks do you have", compact enough to
//! send back for a long chunk list (one bit per id).

/// `len` bits packed into 64-bit words, bit `i` in word `i / 64` at position `i % 64`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    /// `len` bits, all clear.
    pub fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Rebuilds a bitmap from its words (e.g. received from a peer). `None` when the word count
    /// does not match `len` or a bit past `len` is set.
    pub fn from_words(words: Vec<u64>, len: usize) -> Option<Self> {
        if words.len() != len.div_ceil(64) {
            return None;
        }
        let spare = words.len() * 64 - len;
        if spare > 0 && words.last().is_some_and(|&w| w >> (64 - spare) != 0) {
            return None;
        }
        Some(Self { words, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Bit `i`; bits past the end read as clear.
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; an index past the end is ignored.
    pub fn set(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Indices of the set bits, in order.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitmap::new(130);
        assert_eq!(b.words().len(), 3);
        for i in [0, 63, 64, 129] {
            b.set(i);
        }
        b.set(130); // past the end: ignored
        assert!(b.get(0) && b.get(63) && b.get(64) && b.get(129));
        assert!(!b.get(1) && !b.get(130) && !b.get(10_000));
        assert_eq!(b.count_ones(), 4);
        assert_eq!(b.ones().collect::<Vec<_>>(), [0, 63, 64, 129]);
        assert_eq!(Bitmap::from_words(b.words().to_vec(), 130), Some(b));
    }

    #[test]
    fn from_words_is_checked() {
        assert_eq!(Bitmap::from_words(vec![], 0), Some(Bitmap::new(0)));
        assert!(Bitmap::from_words(vec![0], 65).is_none());
        assert!(Bitmap::from_words(vec![1 << 5], 5).is_none());
        assert!(Bitmap::from_words(vec![1 << 4], 5).is_some());
        assert!(Bitmap::from_words(vec![u64::MAX], 64).is_some());
    }
}
