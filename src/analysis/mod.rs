//! Samples in, the answer's model out: safe Rust over plain data, no I/O,
//! unit-tested without nginx. Imports `model`, `sources`' parsed types and
//! `shm`'s codecs; nothing here reads a file or touches nginx.

pub mod assemble;
pub mod breakdown;
pub mod chunk_words;
pub mod container;
pub mod findings;
pub mod history;
pub mod lua;
pub mod lua_walk;
pub mod pools;
pub mod server;
pub mod zones;
