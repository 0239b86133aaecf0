//! cairn: encrypted, deduplicated backups that mount as ordinary directory trees.

pub mod audit;
pub mod backup;
pub mod calendar;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod diff;
pub mod display;
pub mod exclude;
pub mod fuse;
pub mod id;
pub mod meta;
pub mod parent_record;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod serve;
pub mod snapshot;
pub mod stream;
pub mod tree;
