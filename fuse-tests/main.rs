//! Tests that mount repositories with `cairn mount` and read the mounted file
//! system through ordinary system calls and tools (`cp`, `diff`, `getfacl`).
//!
//! Each test runs the built binary against a repository in its own temporary
//! directory, and each mount runs under a [`support::MountGuard`], which
//! unmounts it even when the test fails. The tests need `/dev/fuse`, and they
//! fail, never skip, without it. They expect to run as root, as CI does,
//! because they change owners, set trusted.* extended attributes and drop the
//! kernel's dentry cache. The test in `s3.rs` also starts `moto_server`
//! (`pip install 'moto[server]'`) on 127.0.0.1, and fails without it.
//!
//! Run them with `cargo test --test fuse`.

#[path = "../tests/support/s3_server.rs"]
mod s3_server;
mod support;
mod tree;

mod damage;
mod lifecycle;
mod listing;
mod read_only;
mod reads;
mod round_trip;
mod s3;
mod two_paths;
mod views;
