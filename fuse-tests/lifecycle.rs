//! Starting and stopping `cairn mount`.

use std::fs;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{EXIT_OK, Fixture, MountGuard, is_mounted};

/// Returns a fixture with one snapshot of a small tree.
fn fixture_with_snapshot() -> Fixture {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("file.txt"), b"content\n").unwrap();
    fixture.backup(&[&source], &[]);
    fixture
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    let fixture = fixture_with_snapshot();
    let mut mount = MountGuard::start(&fixture, &[]);
    let pid = Pid::from_raw(i32::try_from(mount.pid()).expect("pid fits in i32"));

    kill(pid, Signal::SIGTERM).expect("send SIGTERM to cairn mount");
    let status = mount.wait_for_exit();

    assert_eq!(
        status.code(),
        Some(EXIT_OK),
        "exit status after SIGTERM:\n{}",
        mount.log()
    );
    assert!(
        !is_mounted(mount.mountpoint()),
        "{} is still mounted after SIGTERM",
        mount.mountpoint().display()
    );
    assert!(
        !mount.path("snapshots").exists(),
        "snapshots/ is still visible after SIGTERM"
    );
}

#[test]
fn fusermount_unmount_exits_0() {
    let fixture = fixture_with_snapshot();
    let mut mount = MountGuard::start(&fixture, &[]);
    assert!(mount.is_running(), "cairn mount exited while mounted");

    let status = mount.unmount_with_fusermount();

    assert_eq!(
        status.code(),
        Some(EXIT_OK),
        "exit status after fusermount3 -u:\n{}",
        mount.log()
    );
    assert!(
        !is_mounted(mount.mountpoint()),
        "{} is still mounted after fusermount3 -u",
        mount.mountpoint().display()
    );
}
