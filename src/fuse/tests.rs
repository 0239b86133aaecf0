//! Mount tests: a repository built in a temporary directory is mounted with
//! [`mount`] on a thread and checked through ordinary file system calls. They
//! need `/dev/fuse` and permission to mount (root, or a setuid `fusermount3`).

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{MountOptions, mount, unmount};
use crate::crypto::{KdfParams, ObjectKind};
use crate::id::{ChunkId, SnapshotId};
use crate::repository::pack::BlobKind;
use crate::repository::{BlobWriter, LocalBackend, Repository};
use crate::snapshot::{BackupSummary, Snapshot};
use crate::tree::{Extent, Node, NodeKind, Timestamp, Tree, Xattr};

const FIRST_TIME: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z
const FIRST_FOLDER: &str = "2023-11-14T22-13-20Z";
const SECOND_FOLDER: &str = "2023-11-14T22-15-00Z";

/// Unmounts (lazily) on drop, so that a failed check leaves no mount behind.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

fn wait_for_mount(path: &Path, mounted: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(path) != mounted {
        assert!(
            Instant::now() < deadline,
            "{} mounted is not {mounted} after 10 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed.into()) as u8
        })
        .collect()
}

fn store_chunk(repo: &Repository, writer: &BlobWriter<'_>, data: &[u8]) -> Extent {
    let id = repo.keys().chunk_id(data);
    if writer.reserve(&id.0) {
        let sealed = repo.keys().seal(ObjectKind::Chunk, &id.0, data, 3).unwrap();
        writer
            .add(BlobKind::Chunk, id.0, &sealed, data.len() as u32)
            .unwrap();
    }
    Extent::Data {
        id,
        len: data.len() as u32,
    }
}

fn file(name: &str, content: Vec<Extent>) -> Node {
    let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
    node.size = content.iter().map(Extent::len).sum();
    node.content = content;
    node.mode = 0o644;
    node
}

/// Contents of `a.txt` and `big.bin`, and the snapshot ids, as stored.
struct Expected {
    a_txt: Vec<u8>,
    big_bin: Vec<u8>,
    ids: [SnapshotId; 2],
}

/// Builds a repository with two snapshots of one tree:
///
/// ```text
/// srv/a.txt     5000 bytes, a 10000-byte hole, 3000 bytes, xattr user.comment
/// srv/big.bin   three 300 KiB chunks
/// srv/broken    one chunk that is not in the repository
/// srv/dev       character device 1:3
/// srv/h1, h2    hard links (dev 7, inode 99, nlink 2)
/// srv/sub/inner "inner\n"
/// srv/sym       symbolic link to a.txt
/// ```
fn build_repository(path: &Path) -> (Repository, Expected) {
    let kdf = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let repo = Repository::init(Box::new(LocalBackend::new(path)), b"pw", "test", kdf).unwrap();
    let writer = repo.blob_writer();

    let head = pattern(5000, 1);
    let tail = pattern(3000, 2);
    let mut a_bytes = head.clone();
    a_bytes.resize(15_000, 0);
    a_bytes.extend_from_slice(&tail);
    let mut a = file(
        "a.txt",
        vec![
            store_chunk(&repo, &writer, &head),
            Extent::Hole { len: 10_000 },
            store_chunk(&repo, &writer, &tail),
        ],
    );
    a.mode = 0o640;
    a.uid = 1000;
    a.gid = 100;
    a.mtime = Timestamp {
        secs: 1_600_000_000,
        nanos: 123_456_789,
    };
    a.xattrs = vec![Xattr {
        name: b"user.comment".to_vec(),
        value: b"hi".to_vec(),
    }];

    let mut big_bytes = Vec::new();
    let mut big_content = Vec::new();
    for seed in 3..6 {
        let chunk = pattern(300 << 10, seed);
        big_content.push(store_chunk(&repo, &writer, &chunk));
        big_bytes.extend_from_slice(&chunk);
    }
    let big = file("big.bin", big_content);

    let broken = file(
        "broken",
        vec![Extent::Data {
            id: ChunkId([0xee; 32]),
            len: 100,
        }],
    );

    let mut dev = Node::new(b"dev".to_vec(), NodeKind::CharDevice);
    dev.rdev = libc::makedev(1, 3);
    dev.mode = 0o666;

    let mut links = Vec::new();
    for name in ["h1", "h2"] {
        let mut link = file(name, vec![store_chunk(&repo, &writer, b"linked\n")]);
        link.dev = 7;
        link.inode = 99;
        link.nlink = 2;
        links.push(link);
    }

    let inner = file("inner", vec![store_chunk(&repo, &writer, b"inner\n")]);
    let mut sub = Node::new(b"sub".to_vec(), NodeKind::Dir);
    sub.mode = 0o755;
    sub.subtree = Some(writer.store_tree(&Tree { nodes: vec![inner] }).unwrap());

    let mut sym = Node::new(b"sym".to_vec(), NodeKind::Symlink);
    sym.target = b"a.txt".to_vec();

    let mut nodes = vec![a, big, broken, dev];
    nodes.extend(links);
    nodes.extend([sub, sym]);
    let mut srv = Node::new(b"srv".to_vec(), NodeKind::Dir);
    srv.mode = 0o755;
    srv.subtree = Some(writer.store_tree(&Tree { nodes }).unwrap());
    let root = writer.store_tree(&Tree { nodes: vec![srv] }).unwrap();
    writer.finish().unwrap();

    let mut ids = Vec::new();
    for (offset, host, tags) in [
        (0, "host1", vec!["daily".to_string()]),
        (100, "host2", vec![]),
    ] {
        let snapshot = Snapshot {
            time: Timestamp {
                secs: FIRST_TIME + offset,
                nanos: 0,
            },
            hostname: host.into(),
            username: "root".into(),
            paths: vec![b"/srv".to_vec()],
            tree: root,
            parent: None,
            original: None,
            tags,
            incomplete: false,
            program_version: "test".into(),
            summary: BackupSummary::default(),
        };
        ids.push(repo.save_snapshot(&snapshot).unwrap().0);
    }
    let expected = Expected {
        a_txt: a_bytes,
        big_bin: big_bytes,
        ids: [ids[0], ids[1]],
    };
    (repo, expected)
}

fn start(repo: Arc<Repository>, mountpoint: &Path) -> JoinHandle<anyhow::Result<()>> {
    let path = mountpoint.to_path_buf();
    let options = MountOptions {
        cache_bytes: 1 << 20,
        ..MountOptions::default()
    };
    let handle = std::thread::spawn(move || mount(repo, &path, &options));
    wait_for_mount(mountpoint, true);
    handle
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn errno(result: std::io::Result<impl Sized>) -> i32 {
    result.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn lseek(file: &File, offset: i64, whence: i32) -> i64 {
    // SAFETY: the descriptor is open for the duration of the call.
    unsafe { libc::lseek(file.as_raw_fd(), offset, whence) }
}

fn check_layout(root: &Path, expected: &Expected) {
    let first = format!("{FIRST_FOLDER}_{}", expected.ids[0].short());
    let second = format!("{SECOND_FOLDER}_{}", expected.ids[1].short());
    assert_eq!(names(root), ["hosts", "ids", "snapshots", "tags"]);
    assert_eq!(
        names(&root.join("snapshots")),
        [first.clone(), second.clone(), "latest".into()]
    );
    assert_eq!(
        fs::read_link(root.join("snapshots/latest")).unwrap(),
        Path::new(&second)
    );
    assert!(root.join("snapshots/latest/srv/a.txt").is_file());
    assert_eq!(names(&root.join("hosts")), ["host1", "host2"]);
    assert_eq!(names(&root.join("hosts/host1")), [first.as_str()]);
    assert_eq!(names(&root.join("tags")), ["daily"]);
    assert_eq!(names(&root.join("tags/daily")), [first.as_str()]);
    let by_id = root.join("ids").join(expected.ids[0].to_hex());
    assert_eq!(names(&by_id), ["srv"]);
    let folder = fs::metadata(root.join("snapshots").join(&first)).unwrap();
    assert!(folder.is_dir());
    assert_eq!(folder.mtime(), FIRST_TIME);
}

fn check_files(srv: &Path, expected: &Expected) {
    assert_eq!(
        names(srv),
        [
            "a.txt", "big.bin", "broken", "dev", "h1", "h2", "sub", "sym"
        ]
    );

    let a = srv.join("a.txt");
    assert_eq!(fs::read(&a).unwrap(), expected.a_txt);
    let meta = fs::symlink_metadata(&a).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 18_000);
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), 1000);
    assert_eq!(meta.gid(), 100);
    assert_eq!(meta.mtime(), 1_600_000_000);
    assert_eq!(meta.mtime_nsec(), 123_456_789);
    assert_eq!(meta.blocks(), 16);
    assert_eq!(meta.nlink(), 1);

    let handle = File::open(&a).unwrap();
    assert_eq!(lseek(&handle, 0, libc::SEEK_HOLE), 5000);
    assert_eq!(lseek(&handle, 5000, libc::SEEK_DATA), 15_000);

    assert_eq!(
        xattr::get(&a, "user.comment").unwrap(),
        Some(b"hi".to_vec())
    );
    assert_eq!(xattr::get(&a, "user.missing").unwrap(), None);
    let listed: Vec<_> = xattr::list(&a).unwrap().collect();
    assert_eq!(listed, ["user.comment"]);

    let mut big = Vec::new();
    let mut reader = File::open(srv.join("big.bin")).unwrap();
    let mut buffer = vec![0; 64 << 10];
    loop {
        let n = reader.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        big.extend_from_slice(&buffer[..n]);
    }
    assert!(
        big == expected.big_bin,
        "big.bin differs from what was stored"
    );

    assert_eq!(errno(fs::read(srv.join("broken"))), libc::EIO);

    let h1 = fs::metadata(srv.join("h1")).unwrap();
    let h2 = fs::metadata(srv.join("h2")).unwrap();
    assert_eq!(h1.ino(), h2.ino());
    assert_eq!(h1.nlink(), 2);
    assert_eq!(fs::read(srv.join("h2")).unwrap(), b"linked\n");

    let dev = fs::symlink_metadata(srv.join("dev")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), libc::makedev(1, 3));

    assert_eq!(fs::read_link(srv.join("sym")).unwrap(), Path::new("a.txt"));
    assert_eq!(fs::read(srv.join("sub/inner")).unwrap(), b"inner\n");
    assert!(fs::symlink_metadata(srv.join("sub")).unwrap().is_dir());
}

fn check_read_only(srv: &Path) {
    assert_eq!(errno(fs::metadata(srv.join("missing"))), libc::ENOENT);
    assert_eq!(errno(File::create(srv.join("new"))), libc::EROFS);
    assert_eq!(errno(fs::write(srv.join("a.txt"), b"x")), libc::EROFS);
    assert_eq!(errno(fs::remove_file(srv.join("a.txt"))), libc::EROFS);
    assert_eq!(errno(fs::create_dir(srv.join("d"))), libc::EROFS);
    assert_eq!(
        errno(xattr::set(srv.join("a.txt"), "user.x", b"1")),
        libc::EROFS
    );
}

#[test]
fn mount_serves_snapshots() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests need the fuse kernel module and root"
    );
    let repo_dir = tempfile::tempdir().unwrap();
    let mount_dir = tempfile::tempdir().unwrap();
    let mountpoint = mount_dir.path().canonicalize().unwrap();
    let _guard = MountGuard(mountpoint.clone());
    let (repo, expected) = build_repository(repo_dir.path());
    let repo = Arc::new(repo);

    // Unmounted from outside, as `umount` does.
    let session = start(repo.clone(), &mountpoint);
    check_layout(&mountpoint, &expected);
    let first = format!("{FIRST_FOLDER}_{}", expected.ids[0].short());
    let srv = mountpoint.join("snapshots").join(&first).join("srv");
    check_files(&srv, &expected);
    check_read_only(&srv);
    let by_id = mountpoint
        .join("ids")
        .join(expected.ids[0].to_hex())
        .join("srv");
    let other_place = fs::metadata(by_id.join("h1")).unwrap().ino();
    assert_ne!(other_place, fs::metadata(srv.join("h1")).unwrap().ino());
    assert_eq!(fs::read(by_id.join("a.txt")).unwrap(), expected.a_txt);
    unmount(&mountpoint).unwrap();
    session.join().unwrap().unwrap();
    assert!(!is_mounted(&mountpoint));

    // Unmounted by the mount itself on SIGTERM.
    let session = start(repo, &mountpoint);
    assert_eq!(
        fs::read(mountpoint.join("snapshots/latest/srv/h1")).unwrap(),
        b"linked\n"
    );
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    session.join().unwrap().unwrap();
    assert!(!is_mounted(&mountpoint));
    assert_eq!(
        errno(fs::metadata(mountpoint.join("snapshots"))),
        libc::ENOENT
    );
}
