//! Parsers of what the kernel and glibc write (`/proc` text, the memory
//! cgroup's files, glibc's heap headers) and the one escape rule for names
//! read out of them or out of nginx. Safe and unit-tested on sample text.

pub mod cgroup;
pub mod errors;
pub mod escape;
pub mod glibc_heaps;
pub mod procfs;
