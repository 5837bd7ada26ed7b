//! Who owns a shared slot (or ring): a pid word. 0: free; a pid: its owner;
//! minus a pid: that process is claiming it and has not finished. A claim
//! marks the word with minus the claimer's pid in one compare-and-swap, then
//! the claimer sets up the slot and stores its pid: so a process killed at
//! any point leaves a word that names it, and the next claimer takes the slot
//! back once that process is gone.

use std::sync::atomic::{AtomicI32, Ordering};

/// Whether a slot whose pid word reads `owner` may be taken by `claimer`:
/// free, its owner or claimer gone (`alive` says), or the claimer's own pid
/// in a slot it does not hold (a dead process's, its pid reused).
pub fn reclaimable(owner: i32, claimer: i32, alive: impl Fn(i32) -> bool) -> bool {
    let pid = owner.saturating_abs();
    owner == 0 || pid == claimer || !alive(pid)
}

/// Marks the first slot `claimer` may take as being claimed by it, and
/// returns its index; the claimer then sets the slot up and calls `own`.
pub fn begin<'a>(
    words: impl IntoIterator<Item = &'a AtomicI32>,
    claimer: i32,
    alive: impl Fn(i32) -> bool,
) -> Option<usize> {
    words.into_iter().position(|word| {
        let owner = word.load(Ordering::Acquire);
        reclaimable(owner, claimer, &alive)
            && word
                .compare_exchange(owner, -claimer, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    })
}

/// Ends a claim: the slot, set up, is `owner`'s; readers may take it now.
pub fn own(word: &AtomicI32, owner: i32) {
    word.store(owner, Ordering::Release);
}

/// Takes a slot that needs no setting up (`claimer`'s as soon as it is):
/// `true` when it holds it now.
pub fn take(word: &AtomicI32, claimer: i32, alive: impl Fn(i32) -> bool) -> bool {
    let owner = word.load(Ordering::Acquire);
    owner == claimer
        || (reclaimable(owner, claimer, alive)
            && word
                .compare_exchange(owner, claimer, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok())
}

/// Frees the slot if `owner` holds it (as the process exits).
pub fn release(word: &AtomicI32, owner: i32) {
    let _ = word.compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed);
}

/// The slot's owner, if it is set up: a claim under way reads as none.
pub fn owner(word: &AtomicI32) -> Option<i32> {
    let pid = word.load(Ordering::Acquire);
    (pid > 0).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(pids: &[i32]) -> Vec<AtomicI32> {
        pids.iter().map(|&p| AtomicI32::new(p)).collect()
    }

    /// Pids 100 to 199 run; others are gone.
    fn alive(pid: i32) -> bool {
        (100..200).contains(&pid)
    }

    #[test]
    fn a_free_slot_is_claimed_then_owned() {
        let s = slots(&[101, 0, 0]);
        assert_eq!(begin(&s, 150, alive), Some(1));
        assert_eq!(s[1].load(Ordering::Relaxed), -150);
        assert_eq!(owner(&s[1]), None, "being set up: not listed yet");
        own(&s[1], 150);
        assert_eq!(owner(&s[1]), Some(150));
        release(&s[1], 150);
        assert_eq!(s[1].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_dead_owners_slot_is_taken_back() {
        let s = slots(&[101, 7, 0]);
        assert_eq!(begin(&s, 150, alive), Some(1), "owner 7 died");
    }

    #[test]
    fn a_claim_left_by_a_killed_claimer_is_taken_back() {
        // Killed between its mark and its pid's store.
        let s = slots(&[101, -8]);
        assert_eq!(begin(&s, 150, alive), Some(1));
        // A live claimer's mark is left alone.
        let s = slots(&[101, -102]);
        assert_eq!(begin(&s, 150, alive), None);
    }

    #[test]
    fn the_claimers_own_pid_in_a_foreign_slot_is_taken_back() {
        // A dead process had pid 150; the claimer got it again.
        let s = slots(&[101, 150]);
        assert_eq!(begin(&s, 150, alive), Some(1));
    }

    #[test]
    fn a_full_table_of_live_owners_gives_nothing() {
        let s = slots(&[101, 102, -103]);
        assert_eq!(begin(&s, 150, alive), None);
        release(&s[0], 150); // not its own: left as is
        assert_eq!(s[0].load(Ordering::Relaxed), 101);
    }

    #[test]
    fn take_holds_or_takes_a_slot_without_setup() {
        let w = AtomicI32::new(0);
        assert!(take(&w, 150, alive));
        assert!(take(&w, 150, alive), "already its own");
        assert!(!take(&w, 151, alive), "150 runs");
        w.store(9, Ordering::Relaxed);
        assert!(take(&w, 151, alive), "9 is gone");
        assert_eq!(w.load(Ordering::Relaxed), 151);
    }
}
