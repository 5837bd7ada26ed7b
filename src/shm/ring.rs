//! A ring of fixed-size samples one writer appends to and any process reads.
//!
//! Two counters: `written`, samples ever appended (the next goes to slot
//! `written % capacity`), and `writing`, one more than the sample being
//! written while a write is under way. A reader reads the samples it wants,
//! then `writing`: a sample `capacity` or more older than the one being
//! written may have been overwritten under it, and is dropped. Nobody waits.

use std::collections::TryReserveError;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// A ring over shared words: its two counters and `capacity` samples of
/// `sample_words` words each.
pub struct Ring<'a> {
    written: &'a AtomicU64,
    writing: &'a AtomicU64,
    cells: &'a [AtomicU64],
    sample_words: usize,
}

impl<'a> Ring<'a> {
    /// `cells.len()` is a whole number of samples, at least one.
    pub fn new(
        written: &'a AtomicU64,
        writing: &'a AtomicU64,
        cells: &'a [AtomicU64],
        sample_words: usize,
    ) -> Ring<'a> {
        assert!(sample_words > 0 && cells.len() >= sample_words);
        assert_eq!(cells.len() % sample_words, 0);
        Ring {
            written,
            writing,
            cells,
            sample_words,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cells.len() / self.sample_words
    }

    /// A new owner's first act: the ring is emptied.
    pub fn reset(&self) {
        self.written.store(0, Ordering::Relaxed);
        self.writing.store(0, Ordering::Relaxed);
    }

    fn slot(&self, n: u64) -> &'a [AtomicU64] {
        let at = (n % self.capacity() as u64) as usize * self.sample_words;
        &self.cells[at..at + self.sample_words]
    }

    /// Appends a sample (its first `sample_words` words). One writer only:
    /// the ring's owner.
    pub fn push(&self, words: &[u64]) {
        let n = self.written.load(Ordering::Relaxed);
        self.writing.store(n + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, &w) in self.slot(n).iter().zip(words) {
            cell.store(w, Ordering::Relaxed);
        }
        self.written.store(n + 1, Ordering::Release);
    }

    /// The numbers of the samples kept now: `first..before`, oldest first.
    pub fn kept(&self) -> (u64, u64) {
        let before = self.written.load(Ordering::Acquire);
        (before.saturating_sub(self.capacity() as u64), before)
    }

    /// Word `i` of sample `n` as it reads now, for a search by time before
    /// the read; the read itself checks what it took.
    pub fn word(&self, n: u64, i: usize) -> u64 {
        self.slot(n)[i].load(Ordering::Relaxed)
    }

    /// The samples numbered `picked` (among `kept()`, in order), decoded
    /// from their words; those overwritten while read are left out. `Err`
    /// when the list cannot be allocated.
    pub fn read<T, const N: usize>(
        &self,
        picked: &[u64],
        decode: impl Fn(&[u64; N]) -> T,
    ) -> Result<Vec<T>, TryReserveError> {
        assert_eq!(N, self.sample_words);
        let mut out: Vec<(u64, T)> = Vec::new();
        out.try_reserve_exact(picked.len())?;
        for &n in picked {
            let mut w = [0u64; N];
            for (v, cell) in w.iter_mut().zip(self.slot(n)) {
                *v = cell.load(Ordering::Relaxed);
            }
            out.push((n, decode(&w)));
        }
        fence(Ordering::Acquire);
        // A write begun since overwrote the slot of the sample `capacity` older.
        let valid_from = self
            .writing
            .load(Ordering::Relaxed)
            .saturating_sub(self.capacity() as u64);
        out.retain(|(n, _)| *n >= valid_from);
        Ok(out.into_iter().map(|(_, t)| t).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    struct Words {
        written: AtomicU64,
        writing: AtomicU64,
        cells: Vec<AtomicU64>,
    }

    fn words(capacity: usize, sample_words: usize) -> Words {
        Words {
            written: AtomicU64::new(0),
            writing: AtomicU64::new(0),
            cells: (0..capacity * sample_words)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn ring(w: &Words, sample_words: usize) -> Ring<'_> {
        Ring::new(&w.written, &w.writing, &w.cells, sample_words)
    }

    #[test]
    fn keeps_the_last_capacity_samples_oldest_first() {
        let w = words(4, 2);
        let r = ring(&w, 2);
        assert_eq!(r.kept(), (0, 0));
        for n in 0..10u64 {
            r.push(&[n, n * 10]);
        }
        let (first, before) = r.kept();
        assert_eq!((first, before), (6, 10));
        let all: Vec<u64> = (first..before).collect();
        let got = r.read(&all, |s: &[u64; 2]| (s[0], s[1])).unwrap();
        assert_eq!(got, vec![(6, 60), (7, 70), (8, 80), (9, 90)]);
        assert_eq!(r.word(9, 1), 90);
        r.reset();
        assert_eq!(r.kept(), (0, 0));
    }

    #[test]
    fn a_sample_overwritten_while_read_is_dropped() {
        let w = words(4, 1);
        let r = ring(&w, 1);
        for n in 0..4u64 {
            r.push(&[n]);
        }
        // A write of sample 4 is under way (its writer may even have died
        // there): it goes to sample 0's slot, so sample 0 is not answered.
        w.writing.store(5, Ordering::Relaxed);
        let got = r.read(&[0, 1, 2, 3], |s: &[u64; 1]| s[0]).unwrap();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn a_reader_racing_the_writer_never_takes_a_torn_sample() {
        const WORDS: usize = 16;
        let w = Arc::new(words(64, WORDS));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (w, stop) = (w.clone(), stop.clone());
            std::thread::spawn(move || {
                let r = ring(&w, WORDS);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    r.push(&[n; WORDS]);
                    n += 1;
                    // Paced, so some reads come between writes.
                    for _ in 0..(n % 512) {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let r = ring(&w, WORDS);
        // Reads until the writer lapped the ring 200 times.
        let (mut taken, mut reads) = (0u64, 0u64);
        let started = std::time::Instant::now();
        while r.kept().1 < 12_800 && started.elapsed() < std::time::Duration::from_secs(10) {
            let (first, before) = r.kept();
            let picked: Vec<u64> = (first..before).collect();
            let got = r.read(&picked, |s: &[u64; WORDS]| *s).unwrap();
            let mut last = None;
            for s in &got {
                assert!(s.iter().all(|&x| x == s[0]), "torn sample: {s:?}");
                assert!(last.is_none_or(|l| l < s[0]), "out of order");
                assert!(s[0] >= first && s[0] < before, "not a sample asked for");
                last = Some(s[0]);
            }
            taken += got.len() as u64;
            reads += 1;
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(
            r.kept().1 >= 12_800 && taken > 0,
            "{reads} reads, {taken} samples"
        );
    }
}
