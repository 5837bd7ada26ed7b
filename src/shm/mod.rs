//! The word layouts shared between nginx's processes, safe over atomic words:
//! a seqlock for a record one process rewrites, a ring of samples one process
//! appends to, and the claim of a slot by a pid. A writer never waits and a
//! reader never waits: a reader that meets a write in progress tries again a
//! few times or drops what the write touched. Each is unit-tested on ordinary
//! memory; the nginx layer only finds the words in its zones.
//!
//! Every protocol assumes one writer per record or ring: the process whose pid
//! its claim word holds (see `claim`).

pub mod claim;
pub mod ring;
pub mod samples;
pub mod seqlock;
pub mod summary;
