//! FNV-1a, 64 bits: a zone's name as the history rings keep it (the same
//! bytes hash the same in every build and process). Imports nothing of ours.

/// The hash of no bytes.
pub const EMPTY: u64 = 0xcbf2_9ce4_8422_2325;

/// `hash` continued over `bytes`.
pub fn extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
