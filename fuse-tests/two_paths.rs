//! A hard-link group that spans two backed-up paths, and a sparse file of
//! 10 GiB apparent size, through restore and through the mount.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::support::{Fixture, MountGuard, below, folder_name};

const SPARSE_LEN: u64 = 10 << 30;
const DATA_AT: u64 = 7 << 30;

fn build(fixture: &Fixture) -> (std::path::PathBuf, std::path::PathBuf) {
    let first = fixture.path("first");
    let second = fixture.path("second");
    fs::create_dir_all(&first).unwrap();
    fs::create_dir_all(&second).unwrap();
    fs::write(first.join("linked"), b"one inode, two backed-up paths\n").unwrap();
    fs::hard_link(first.join("linked"), second.join("also-linked")).unwrap();

    let sparse = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(first.join("sparse"))
        .unwrap();
    sparse.set_len(SPARSE_LEN).unwrap();
    sparse
        .write_all_at(b"data in the middle of a hole", DATA_AT)
        .unwrap();
    (first, second)
}

fn check_tree(label: &str, first: &Path, second: &Path) {
    let a = fs::metadata(first.join("linked")).unwrap();
    let b = fs::metadata(second.join("also-linked")).unwrap();
    assert_eq!(
        a.ino(),
        b.ino(),
        "{label}: the two links have different inodes"
    );
    assert_eq!(a.nlink(), 2, "{label}: link count of the hard-link group");

    let sparse = fs::File::open(first.join("sparse")).unwrap();
    let metadata = sparse.metadata().unwrap();
    assert_eq!(
        metadata.len(),
        SPARSE_LEN,
        "{label}: apparent size of the sparse file"
    );
    let mut middle = [0u8; 28];
    sparse.read_exact_at(&mut middle, DATA_AT).unwrap();
    assert_eq!(
        &middle, b"data in the middle of a hole",
        "{label}: data inside the sparse file"
    );
    let mut zeros = [1u8; 4096];
    sparse.read_exact_at(&mut zeros, 1 << 30).unwrap();
    assert!(
        zeros.iter().all(|b| *b == 0),
        "{label}: a hole does not read as zeros"
    );
}

#[test]
fn hard_links_across_paths_and_huge_sparse_file() {
    let fixture = Fixture::new();
    let (first, second) = build(&fixture);
    let summary = fixture.backup(&[&first, &second], &[]);
    let read = summary["bytes_read"].as_u64().unwrap();
    assert!(
        read < 1 << 20,
        "backup read {read} bytes of a file with 28 bytes of data"
    );

    let target = fixture.path("restored");
    fixture.run_ok([
        "restore".as_ref(),
        "latest".as_ref(),
        "--target".as_ref(),
        target.as_os_str(),
    ]);
    let restored_first = below(&target, &first);
    let restored_second = below(&target, &second);
    check_tree("restore", &restored_first, &restored_second);
    let blocks = fs::metadata(restored_first.join("sparse"))
        .unwrap()
        .blocks();
    assert!(
        blocks * 512 < 1 << 20,
        "restored sparse file allocates {} bytes",
        blocks * 512
    );

    let mount = MountGuard::start(&fixture, &[]);
    let snapshot = fixture.snapshots().pop().unwrap();
    let folder = mount.path(&format!("snapshots/{}", folder_name(&snapshot)));
    check_tree("mount", &below(&folder, &first), &below(&folder, &second));
}
