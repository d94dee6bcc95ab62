//! A bitmap of pages, one bit per 4 KiB page, in 64-bit words laid out as
//! KVM's dirty log is (bit `i % 64` of word `i / 64` is page `i`), so KVM's
//! words can be merged in without translation.

/// Pages per word.
const WORD: u64 = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
    /// Set bits, kept up to date so an empty bitmap is never scanned.
    ones: u64,
}

impl PageBitmap {
    /// A clean bitmap of `pages` pages.
    pub fn new(pages: u64) -> Self {
        PageBitmap {
            words: vec![0; pages.div_ceil(WORD) as usize],
            pages,
            ones: 0,
        }
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn set(&mut self, page: u64) {
        if page < self.pages && !self.get(page) {
            self.words[(page / WORD) as usize] |= 1 << (page % WORD);
            self.ones += 1;
        }
    }

    pub fn clear(&mut self, page: u64) {
        if self.get(page) {
            self.words[(page / WORD) as usize] &= !(1 << (page % WORD));
            self.ones -= 1;
        }
    }

    pub fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / WORD) as usize] & (1 << (page % WORD)) != 0
    }

    /// Sets every page whose bit is set in `words` (KVM's layout); bits
    /// beyond the bitmap's pages are ignored.
    pub fn or_words(&mut self, words: &[u64]) {
        let last = self.words.len().saturating_sub(1);
        let tail = self.tail_mask();
        for (i, (mine, theirs)) in self.words.iter_mut().zip(words).enumerate() {
            let theirs = if i == last { theirs & tail } else { *theirs };
            self.ones += u64::from((theirs & !*mine).count_ones());
            *mine |= theirs;
        }
    }

    /// Sets every page.
    pub fn fill(&mut self) {
        self.words.fill(u64::MAX);
        let tail = self.tail_mask();
        if let Some(last) = self.words.last_mut() {
            *last &= tail;
        }
        self.ones = self.pages;
    }

    pub fn clear_all(&mut self) {
        if self.ones > 0 {
            self.words.fill(0);
            self.ones = 0;
        }
    }

    pub fn count(&self) -> u64 {
        self.ones
    }

    pub fn is_clear(&self) -> bool {
        self.ones == 0
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

    /// Takes the set pages in `[first, end)`, ascending, at most `limit`:
    /// pushes `base + page * 4096` for each to `out` (when given) and, with
    /// `reset`, clears exactly those, a word at a time. Returns how many.
    pub fn take(
        &mut self,
        first: u64,
        end: u64,
        limit: usize,
        reset: bool,
        mut out: Option<(&mut Vec<u64>, u64)>,
    ) -> usize {
        let end = end.min(self.pages);
        let mut taken = 0;
        let mut page = first;
        while page < end && taken < limit && self.ones > 0 {
            let index = (page / WORD) as usize;
            let word_end = ((index as u64 + 1) * WORD).min(end);
            let mut mask = u64::MAX << (page % WORD);
            if word_end % WORD != 0 {
                mask &= (1 << (word_end % WORD)) - 1;
            }
            let mut bits = self.words[index] & mask;
            let ones = bits.count_ones() as usize;
            let took = if out.is_none() && ones <= limit - taken {
                // Counting only, and the whole word fits: no bit-by-bit walk.
                taken += ones;
                bits
            } else {
                let mut took = 0u64;
                while bits != 0 && taken < limit {
                    let bit = bits & bits.wrapping_neg();
                    if let Some((out, base)) = out.as_mut() {
                        let page = index as u64 * WORD + u64::from(bit.trailing_zeros());
                        out.push(*base + page * 4096);
                    }
                    took |= bit;
                    bits &= bits - 1;
                    taken += 1;
                }
                took
            };
            if reset {
                self.words[index] &= !took;
                self.ones -= u64::from(took.count_ones());
            }
            page = word_end;
        }
        taken
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

    /// Runs of set pages as `(first, count)`, ascending, skipping clear
    /// words whole.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            bitmap: self,
            page: 0,
        }
    }

    /// Sets every page set in `other` (of the same size).
    pub fn union(&mut self, other: &PageBitmap) {
        self.or_words(&other.words);
    }

    /// The bits of the last word that are pages.
    fn tail_mask(&self) -> u64 {
        match self.pages % WORD {
            0 => u64::MAX,
            tail => (1 << tail) - 1,
        }
    }
}

/// See `PageBitmap::runs`.
pub struct Runs<'a> {
    bitmap: &'a PageBitmap,
    page: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let words = &self.bitmap.words;
        let pages = self.bitmap.pages;
        // The first set page at or after `page`.
        let mut first = None;
        while self.page < pages {
            let i = (self.page / WORD) as usize;
            let word = words[i] & (u64::MAX << (self.page % WORD));
            if word != 0 {
                first = Some(i as u64 * WORD + u64::from(word.trailing_zeros()));
                break;
            }
            self.page = (i as u64 + 1) * WORD;
        }
        let first = first.filter(|&f| f < pages)?;
        // Then the first clear page after it.
        self.page = first;
        while self.page < pages {
            let i = (self.page / WORD) as usize;
            let word = !words[i] & (u64::MAX << (self.page % WORD));
            if word != 0 {
                self.page = (i as u64 * WORD + u64::from(word.trailing_zeros())).min(pages);
                break;
            }
            self.page = (i as u64 + 1) * WORD;
        }
        self.page = self.page.min(pages);
        Some((first, self.page - first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn runs_cover_exactly_the_set_pages(
            pages in 1u64..400,
            set in proptest::collection::vec(0u64..400, 0..200),
        ) {
            let mut b = PageBitmap::new(pages);
            for &p in set.iter().filter(|&&p| p < pages) {
                b.set(p);
            }
            let mut from_runs = Vec::new();
            let mut last_end = None;
            for (first, count) in b.runs() {
                prop_assert!(count > 0);
                prop_assert!(last_end.is_none_or(|end| first > end), "runs are maximal and ascending");
                from_runs.extend(first..first + count);
                last_end = Some(first + count);
            }
            prop_assert_eq!(from_runs, b.set_pages(0, pages, usize::MAX));
        }
    }

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
        fn take_returns_and_resets_exactly_what_a_naive_scan_finds(
            pages in 1u64..400,
            set in prop::collection::vec(0u64..400, 0..80),
            first in 0u64..400,
            len in 0u64..400,
            limit in 0usize..100,
            reset in any::<bool>(),
        ) {
            let mut b = PageBitmap::new(pages);
            for &p in &set {
                b.set(p);
            }
            let end = first.saturating_add(len);
            let naive: Vec<u64> = (first..end.min(pages)).filter(|&p| b.get(p)).take(limit).collect();
            let mut after = b.clone();
            if reset {
                for &p in &naive {
                    after.clear(p);
                }
            }
            let mut counted = b.clone();
            let mut got = Vec::new();
            prop_assert_eq!(b.take(first, end, limit, reset, Some((&mut got, 0))), naive.len());
            prop_assert_eq!(got, naive.iter().map(|p| p * 4096).collect::<Vec<_>>());
            prop_assert_eq!(&b, &after);
            prop_assert_eq!(counted.take(first, end, limit, reset, None), naive.len());
            prop_assert_eq!(&counted, &after);
            let ones: u64 = counted.words().iter().map(|w| u64::from(w.count_ones())).sum();
            prop_assert_eq!(counted.count(), ones);
        }

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
