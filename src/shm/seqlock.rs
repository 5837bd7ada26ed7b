//! A record of words one writer rewrites and any process reads, under a
//! sequence number that is odd while a write is under way.
//!
//! The writer makes the sequence odd, then writes the words, then makes it
//! even again; a reader takes the words only when it read the same even
//! sequence before and after them. The fences pair so that a reader that saw
//! any word of a later write also sees that write's odd sequence.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// How often a reader tries before it gives up (a writer killed mid-write
/// leaves the sequence odd until the slot's next owner resets it).
pub const READ_TRIES: usize = 4;

/// Writes `words` into the first `words.len()` cells. One writer at a time:
/// the record's owner.
pub fn write(seq: &AtomicU32, cells: &[AtomicU64], words: &[u64]) {
    debug_assert!(words.len() <= cells.len());
    seq.fetch_add(1, Ordering::Relaxed);
    fence(Ordering::Release);
    for (cell, &w) in cells.iter().zip(words) {
        cell.store(w, Ordering::Relaxed);
    }
    seq.fetch_add(1, Ordering::Release);
}

/// Reads the first `out.len()` cells as one writer left them whole; `false`
/// when a write was under way at every try (`out` then holds nothing useful).
pub fn read(seq: &AtomicU32, cells: &[AtomicU64], out: &mut [u64]) -> bool {
    debug_assert!(out.len() <= cells.len());
    for _ in 0..READ_TRIES {
        let before = seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        for (w, cell) in out.iter_mut().zip(cells) {
            *w = cell.load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) == before {
            return true;
        }
    }
    false
}

/// A new owner's first act: a sequence left odd by a writer that died
/// mid-write is made even again (the words are then whatever it left, which
/// the new owner overwrites or clears).
pub fn reset(seq: &AtomicU32) {
    if seq.load(Ordering::Acquire) % 2 == 1 {
        seq.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn cells(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn reads_what_was_written() {
        let (seq, c) = (AtomicU32::new(0), cells(4));
        write(&seq, &c, &[1, 2, 3, 4]);
        let mut out = [0; 4];
        assert!(read(&seq, &c, &mut out));
        assert_eq!(out, [1, 2, 3, 4]);
        // A shorter write leaves the words after it as they were.
        write(&seq, &c, &[9, 8]);
        assert!(read(&seq, &c, &mut out));
        assert_eq!(out, [9, 8, 3, 4]);
        assert_eq!(seq.load(Ordering::Relaxed) % 2, 0);
    }

    #[test]
    fn a_writer_killed_mid_write_blocks_readers_until_reset() {
        let (seq, c) = (AtomicU32::new(0), cells(2));
        write(&seq, &c, &[5, 5]);
        seq.fetch_add(1, Ordering::Relaxed); // killed after making it odd
        let mut out = [0; 2];
        assert!(!read(&seq, &c, &mut out), "never a half-written record");
        reset(&seq);
        assert!(read(&seq, &c, &mut out));
        reset(&seq); // even: nothing to do
        assert_eq!(seq.load(Ordering::Relaxed) % 2, 0);
    }

    #[test]
    fn a_reader_never_takes_a_torn_record() {
        const WORDS: usize = 32;
        let seq = Arc::new(AtomicU32::new(0));
        let c: Arc<Vec<AtomicU64>> = Arc::new(cells(WORDS));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (seq, c, stop) = (seq.clone(), c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    write(&seq, &c, &[k; WORDS]);
                }
                k
            })
        };
        // Reads until it saw 1,000 different writes (the writer is running).
        // The reader sleeps a moment now and then: where both threads share
        // one core (a loaded machine), the writer then writes between reads.
        let (mut whole, mut refused, mut seen, mut last) = (0u64, 0u64, 0u64, 0u64);
        let mut out = [0u64; WORDS];
        let started = std::time::Instant::now();
        while seen < 1_000 && started.elapsed() < std::time::Duration::from_secs(10) {
            if (whole + refused) % 1024 == 1023 {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
            if read(&seq, &c, &mut out) {
                assert!(out.iter().all(|&w| w == out[0]), "torn: {out:?}");
                assert!(out[0] >= last, "went back");
                seen += u64::from(out[0] != last);
                last = out[0];
                whole += 1;
            } else {
                refused += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().unwrap();
        assert!(
            seen >= 1_000,
            "{whole} reads, {refused} refused, {writes} writes"
        );
    }
}
