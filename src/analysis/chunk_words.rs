//! The words a walk of directly mapped chunks read, and how they are read
//! again at once: grouped into spans of neighbours (one span per chunk's
//! headers, not one read per word), then compared in the bits that count.
//! Safe arithmetic, unit-tested; the nginx layer does the reading.

/// A word a walk read, the bits of it its result rests on (`mask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word {
    pub addr: u64,
    pub value: u64,
    pub mask: u64,
}

/// Words at most this far apart are read as one span (a chunk's headers, its
/// object's header, the fencepost before the next chunk's).
const SPAN_GAP: u64 = 64;
/// A span ends at this length.
const SPAN_MAX: u64 = 4096;
/// Spans per read (`IOV_MAX` for `process_vm_readv`).
pub const SPANS_PER_READ: usize = 1024;

/// The spans `[start, end)` of the first words of `words` (sorted by
/// address), at most `SPANS_PER_READ`, and how many words they cover.
pub fn spans_of(words: &[Word]) -> (Vec<(u64, u64)>, usize) {
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(SPANS_PER_READ);
    for (i, w) in words.iter().enumerate() {
        let full = spans.len() == SPANS_PER_READ;
        match spans.last_mut() {
            Some((start, end)) if w.addr <= *end + SPAN_GAP && w.addr + 8 - *start <= SPAN_MAX => {
                *end = (*end).max(w.addr + 8);
            }
            _ if full => return (spans, i),
            _ => spans.push((w.addr, w.addr + 8)),
        }
    }
    (spans, words.len())
}

/// Whether `words` (those `spans` cover, sorted) read the same in `bytes`,
/// the spans' bytes one after another.
pub fn words_match(words: &[Word], spans: &[(u64, u64)], bytes: &[u8]) -> bool {
    let mut span = 0;
    let mut span_at = 0u64;
    words.iter().all(|w| {
        while span < spans.len() && w.addr + 8 > spans[span].1 {
            span_at += spans[span].1 - spans[span].0;
            span += 1;
        }
        let Some(&(start, _)) = spans.get(span) else {
            return false;
        };
        let at = (span_at + w.addr - start) as usize;
        let Some(now) = bytes.get(at..at + 8) else {
            return false;
        };
        let now = u64::from_ne_bytes(now.try_into().unwrap_or([0; 8]));
        (w.value ^ now) & w.mask == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(addr: u64, value: u64) -> Word {
        Word {
            addr,
            value,
            mask: u64::MAX,
        }
    }

    #[test]
    fn neighbours_share_a_span_and_far_words_do_not() {
        // A chunk's two headers and its object's, then the fencepost before
        // the next chunk's headers, a MiB on.
        let w = [
            word(0x1000, 1),
            word(0x1008, 2),
            word(0x1018, 3),
            word(0x1020, 4),
            word(0x101008, 11),
            word(0x101020, 1),
            word(0x101028, 2),
        ];
        let (spans, taken) = spans_of(&w);
        assert_eq!(taken, 7);
        assert_eq!(spans, vec![(0x1000, 0x1028), (0x101008, 0x101030)]);
    }

    #[test]
    fn spans_stop_at_their_most_per_read() {
        let w: Vec<Word> = (0..SPANS_PER_READ as u64 + 5)
            .map(|i| word(i * 0x10000, i))
            .collect();
        let (spans, taken) = spans_of(&w);
        assert_eq!((spans.len(), taken), (SPANS_PER_READ, SPANS_PER_READ));
        // A long run of neighbours is cut at SPAN_MAX.
        let run: Vec<Word> = (0..1024u64).map(|i| word(i * 8, i)).collect();
        let (spans, _) = spans_of(&run);
        assert!(spans.iter().all(|&(s, e)| e - s <= SPAN_MAX));
        assert_eq!(spans.iter().map(|&(s, e)| e - s).sum::<u64>(), 8192);
    }

    #[test]
    fn each_word_is_compared_at_its_place_in_the_bytes() {
        let w = [word(0x1000, 7), word(0x1010, 9), word(0x9000, 5)];
        let (spans, _) = spans_of(&w);
        assert_eq!(spans, vec![(0x1000, 0x1018), (0x9000, 0x9008)]);
        let mut bytes = vec![0u8; 32];
        bytes[0..8].copy_from_slice(&7u64.to_ne_bytes());
        bytes[16..24].copy_from_slice(&9u64.to_ne_bytes());
        bytes[24..32].copy_from_slice(&5u64.to_ne_bytes());
        assert!(words_match(&w, &spans, &bytes));
        bytes[16] ^= 1;
        assert!(!words_match(&w, &spans, &bytes), "a word changed");
        // Only the masked bits count.
        let masked = [Word {
            addr: 0x1010,
            value: 9 | 0xff,
            mask: 0xff00,
        }];
        assert!(words_match(&masked, &[(0x1010, 0x1018)], &bytes[16..24]));
        assert!(!words_match(&w, &spans, &bytes[..20]), "bytes cut short");
    }
}
