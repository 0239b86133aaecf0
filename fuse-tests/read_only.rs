//! Every change to a mounted snapshot fails with EROFS.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

use crate::support::{Fixture, MountGuard, below, folder_name, list_names};

type Change<'a> = Box<dyn Fn() -> io::Result<()> + 'a>;

fn to_io(result: nix::Result<()>) -> io::Result<()> {
    result.map_err(io::Error::from)
}

#[test]
fn snapshot_writes_fail_erofs() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir_all(source.join("empty-dir")).unwrap();
    fs::write(source.join("file.txt"), b"must stay as it is\n").unwrap();
    xattr::set(source.join("file.txt"), "user.comment", b"kept").unwrap();
    fixture.backup(&[&source], &[]);
    let snapshots = fixture.snapshots();

    let mount = MountGuard::start(&fixture, &[]);
    let folder = mount.path("snapshots").join(folder_name(&snapshots[0]));
    let dir = below(&folder, &source);
    let file = dir.join("file.txt");
    let names_before = list_names(&dir);

    let changes: Vec<(&str, Change)> = vec![
        (
            "create a file",
            Box::new(|| fs::File::create(dir.join("new-file")).map(drop)),
        ),
        (
            "create a file in the snapshot folder",
            Box::new(|| fs::File::create(folder.join("new-file")).map(drop)),
        ),
        (
            "create a file in snapshots/",
            Box::new(|| fs::File::create(mount.path("snapshots/new-file")).map(drop)),
        ),
        ("mkdir", Box::new(|| fs::create_dir(dir.join("new-dir")))),
        ("unlink", Box::new(|| fs::remove_file(&file))),
        ("rmdir", Box::new(|| fs::remove_dir(dir.join("empty-dir")))),
        (
            "rename",
            Box::new(|| fs::rename(&file, dir.join("renamed.txt"))),
        ),
        (
            "chmod",
            Box::new(|| fs::set_permissions(&file, fs::Permissions::from_mode(0o600))),
        ),
        ("chown", Box::new(|| lchown(&file, Some(1), Some(1)))),
        (
            "truncate",
            Box::new(|| to_io(nix::unistd::truncate(file.as_path(), 0))),
        ),
        (
            "open with O_TRUNC",
            Box::new(|| {
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&file)
                    .map(drop)
            }),
        ),
        (
            "open for writing",
            Box::new(|| OpenOptions::new().write(true).open(&file).map(drop)),
        ),
        (
            "open for appending",
            Box::new(|| OpenOptions::new().append(true).open(&file).map(drop)),
        ),
        (
            "setxattr",
            Box::new(|| xattr::set(&file, "user.new", b"value")),
        ),
        (
            "removexattr",
            Box::new(|| xattr::remove(&file, "user.comment")),
        ),
        (
            "symlink",
            Box::new(|| symlink("file.txt", dir.join("new-link"))),
        ),
        (
            "link",
            Box::new(|| fs::hard_link(&file, dir.join("new-hard-link"))),
        ),
        (
            "mkfifo",
            Box::new(|| {
                to_io(nix::unistd::mkfifo(
                    &dir.join("new-fifo"),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                ))
            }),
        ),
        ("utimensat", Box::new(|| set_times(&file))),
    ];

    for (name, change) in &changes {
        let result = change();
        assert_eq!(
            result.as_ref().err().and_then(io::Error::raw_os_error),
            Some(libc::EROFS),
            "{name} inside a snapshot returned {result:?}, expected EROFS"
        );
    }

    assert_eq!(
        fs::read(&file).expect("read file.txt"),
        b"must stay as it is\n",
        "content of file.txt after the rejected changes"
    );
    assert_eq!(
        xattr::get(&file, "user.comment").expect("getxattr user.comment"),
        Some(b"kept".to_vec()),
        "user.comment of file.txt after the rejected changes"
    );
    assert_eq!(
        list_names(&dir),
        names_before,
        "entries of {} after the rejected changes",
        dir.display()
    );
}

fn set_times(path: &Path) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;

    let time = TimeSpec::new(1_000_000_000, 0);
    to_io(utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    ))
}
