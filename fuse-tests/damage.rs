//! Reading a file whose pack is damaged fails with EIO and never returns
//! wrong bytes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::support::{Fixture, MountGuard, below, folder_name, pseudo_random_bytes};

/// Size of each read of the damaged file.
const READ_SIZE: usize = 256 << 10;

/// Lists every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let md = fs::symlink_metadata(&path).expect("lstat repository entry");
        if md.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Flips one bit of the byte in the middle of the largest pack below
/// `REPO/data` and returns the pack's path.
fn damage_largest_pack(repo: &Path) -> PathBuf {
    let largest = files_below(&repo.join("data"))
        .into_iter()
        .max_by_key(|f| fs::metadata(f).unwrap().len())
        .expect("the repository has packs");
    let length = fs::metadata(&largest).unwrap().len();
    assert!(
        length > 2 << 20,
        "the largest pack {} has only {length} bytes, so it does not contain the large file",
        largest.display()
    );
    let pack = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&largest)
        .unwrap();
    let mut byte = [0u8; 1];
    pack.read_exact_at(&mut byte, length / 2).unwrap();
    byte[0] ^= 0x01;
    pack.write_all_at(&byte, length / 2).unwrap();
    largest
}

#[test]
fn damaged_pack_read_fails_eio() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir(&source).unwrap();
    let small_files = [("one.txt", "first small file\n"), ("two.txt", "second\n")];
    for (name, content) in small_files {
        fs::write(source.join(name), content).unwrap();
    }
    // The small files go into packs of the first backup, so the largest pack
    // contains only chunks of large.bin.
    fixture.backup(&[&source], &[]);
    let large = pseudo_random_bytes(3 << 20, 21);
    fs::write(source.join("large.bin"), &large).unwrap();
    fixture.backup(&[&source], &[]);
    let pack = damage_largest_pack(&fixture.repo);

    let snapshots = fixture.snapshots();
    let mount = MountGuard::start(&fixture, &[]);
    let folder = mount.path("snapshots").join(folder_name(&snapshots[1]));
    let dir = below(&folder, &source);
    let mounted_large = dir.join("large.bin");

    let whole = fs::read(&mounted_large);
    assert_eq!(
        whole.as_ref().err().and_then(std::io::Error::raw_os_error),
        Some(libc::EIO),
        "reading all of large.bin from the damaged pack {} returned {:?}",
        pack.display(),
        whole.as_ref().map(Vec::len)
    );

    // Reads that succeed must return the source bytes. Some reads must fail.
    // A read that starts on good bytes and runs into the damaged chunk ends
    // short instead of failing. So the rest of each range is read again until
    // it is complete or fails, which also finds a damaged chunk smaller than
    // one read, such as the file's last chunk.
    let file = File::open(&mounted_large).expect("open large.bin on the mount");
    let mut failed_reads = 0;
    let mut buffer = vec![0u8; READ_SIZE];
    for offset in (0..large.len()).step_by(READ_SIZE) {
        let want = &large[offset..large.len().min(offset + READ_SIZE)];
        let mut done = 0;
        while done < want.len() {
            let at = offset + done;
            match file.read_at(&mut buffer[done..want.len()], at as u64) {
                Ok(0) => panic!(
                    "read of large.bin at {at} returned end of file before byte {}",
                    large.len()
                ),
                Ok(n) => {
                    assert!(
                        buffer[done..done + n] == want[done..done + n],
                        "read of large.bin at {at} returned {n} bytes that differ from the source"
                    );
                    done += n;
                }
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::EIO),
                        "read of large.bin at {at}: {e}"
                    );
                    failed_reads += 1;
                    break;
                }
            }
        }
    }
    assert!(
        failed_reads > 0,
        "every read of large.bin succeeded although its pack is damaged"
    );

    for (name, content) in small_files {
        let path = dir.join(name);
        let got = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert_eq!(
            got,
            content.as_bytes(),
            "content of {name} from an undamaged pack"
        );
    }

    let log = mount.log();
    assert!(
        log.contains("large.bin"),
        "the mount log does not name large.bin:\n{log}"
    );
    assert!(
        log.contains("EIO"),
        "the mount log does not name EIO:\n{log}"
    );
}
