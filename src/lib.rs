//! cairn: encrypted, deduplicated backups that mount as ordinary directory trees.

pub mod chunker;
pub mod crypto;
pub mod id;
pub mod repository;
pub mod snapshot;
pub mod tree;
