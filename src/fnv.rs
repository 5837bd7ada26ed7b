//! FNV-1a, 64 bits: short names hashed where no input is an adversary's (a
//! zone's name in the history rings, a Prometheus family's in the writer's
//! index). Imports nothing of ours.

/// The hash of no bytes.
pub const EMPTY: u64 = 0xcbf2_9ce4_8422_2325;

/// `hash` continued over `bytes`.
pub fn extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
