//! A bitmap of pages, one bit per 4 KiB page, in 64-bit words laid out as
//! KVM's dirty log is (bit `i % 64` of word `i / 64` is page `i`), so KVM's
//! words can be merged in without translation.

/// Pages per word.
const WORD: u64 = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl PageBitmap {
    /// A clean bitmap of `pages` pages.
    pub fn new(pages: u64) -> Self {
        PageBitmap {
            words: vec![0; pages.div_ceil(WORD) as usize],
            pages,
        }
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / WORD) as usize] |= 1 << (page % WORD);
        }
    }

    pub fn clear(&mut self, page: u64) {
        if page < self.pages {
            self.words[(page / WORD) as usize] &= !(1 << (page % WORD));
        }
    }

    pub fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / WORD) as usize] & (1 << (page % WORD)) != 0
    }

    /// Sets every page whose bit is set in `words` (KVM's layout); bits
    /// beyond the bitmap's pages are ignored.
    pub fn or_words(&mut self, words: &[u64]) {
        for (mine, theirs) in self.words.iter_mut().zip(words) {
            *mine |= theirs;
        }
        self.trim();
    }

    /// Sets every page.
    pub fn fill(&mut self) {
        self.words.fill(u64::MAX);
        self.trim();
    }

    pub fn clear_all(&mut self) {
        self.words.fill(0);
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_clear(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The set pages in `[first, end)`, ascending, at most `limit` of them.
    pub fn set_pages(&self, first: u64, end: u64, limit: usize) -> Vec<u64> {
        let end = end.min(self.pages);
        let mut out = Vec::new();
        let mut page = first;
        while page < end && out.len() < limit {
            let word_index = page / WORD;
            let mut word = self.words[word_index as usize] & (u64::MAX << (page % WORD));
            let word_end = ((word_index + 1) * WORD).min(end);
            while word != 0 && out.len() < limit {
                let found = word_index * WORD + u64::from(word.trailing_zeros());
                if found >= word_end {
                    break;
                }
                out.push(found);
                word &= word - 1;
            }
            page = word_end;
        }
        out
    }

    /// The words of this bitmap restricted to pages `[first, end)`: bits
    /// outside the range are zero.
    pub fn masked_words(words: &[u64], first: u64, end: u64) -> Vec<u64> {
        words
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let (lo, hi) = (i as u64 * WORD, (i as u64 + 1) * WORD);
                if hi <= first || lo >= end {
                    return 0;
                }
                let mut mask = u64::MAX;
                if first > lo {
                    mask &= u64::MAX << (first - lo);
                }
                if end < hi {
                    mask &= u64::MAX >> (hi - end);
                }
                w & mask
            })
            .collect()
    }

    /// Clears bits past the last page (a partial last word).
    fn trim(&mut self) {
        let tail = self.pages % WORD;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1 << tail) - 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_get_clear_and_count() {
        let mut b = PageBitmap::new(130);
        for p in [0, 63, 64, 129] {
            b.set(p);
        }
        b.set(130); // beyond the end: ignored
        assert_eq!(b.count(), 4);
        assert!(b.get(63) && b.get(129) && !b.get(130));
        b.clear(63);
        assert_eq!(b.set_pages(0, 130, usize::MAX), vec![0, 64, 129]);
        b.fill();
        assert_eq!(b.count(), 130);
    }

    #[test]
    fn masked_words_keep_exactly_the_range() {
        let words = [u64::MAX, u64::MAX, u64::MAX];
        let masked = PageBitmap::masked_words(&words, 60, 130);
        let mut b = PageBitmap::new(192);
        b.or_words(&masked);
        assert_eq!(
            b.set_pages(0, 192, usize::MAX),
            (60..130).collect::<Vec<_>>()
        );
    }

    proptest! {
        #[test]
        fn set_pages_matches_a_naive_scan(
            pages in 1u64..400,
            set in prop::collection::vec(0u64..400, 0..80),
            first in 0u64..400,
            len in 0u64..400,
            limit in 0usize..100,
        ) {
            let mut b = PageBitmap::new(pages);
            for &p in &set {
                b.set(p);
            }
            let end = first.saturating_add(len);
            let naive: Vec<u64> = (first..end.min(pages)).filter(|&p| b.get(p)).take(limit).collect();
            prop_assert_eq!(b.set_pages(first, end, limit), naive);
        }
    }
}
