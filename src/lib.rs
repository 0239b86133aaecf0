//! cairn: encrypted, deduplicated backups that mount as ordinary directory trees.

pub mod backup;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod crypto;
pub mod diff;
pub mod display;
pub mod fuse;
pub mod id;
pub mod meta;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod tree;
