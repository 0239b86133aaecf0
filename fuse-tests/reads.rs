//! Concurrent reads of large files through one mount.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;

use crate::support::{Fixture, MountGuard, SplitMix64, below, folder_name, pseudo_random_bytes};

/// Number of threads that each read their own file.
const OWN_FILE_THREADS: usize = 4;
/// Number of threads that read the shared file.
const SHARED_FILE_THREADS: usize = 4;
/// Random reads per thread.
const RANDOM_READS: usize = 100;
/// Maximum length of one random read.
const MAX_READ: u64 = 512 << 10;
/// Random reads between two drops of the file's page cache.
const READS_PER_CACHE_DROP: usize = 10;

/// Drops the kernel's cached pages of `file`, so that the next reads of them
/// reach cairn instead of the page cache.
fn drop_page_cache(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;

    // SAFETY: posix_fadvise on an open descriptor touches no memory.
    let error = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match error {
        0 => Ok(()),
        _ => Err(std::io::Error::from_raw_os_error(error)),
    }
}

/// Reads `count` random ranges of `file` and compares them with `expected`.
/// Returns a description of the first mismatch or error.
fn random_reads(
    file: &File,
    expected: &[u8],
    seed: u64,
    count: usize,
    label: &str,
) -> Result<(), String> {
    let mut random = SplitMix64(seed);
    let len = expected.len() as u64;
    for i in 0..count {
        if i % READS_PER_CACHE_DROP == 0 {
            drop_page_cache(file).map_err(|e| format!("{label}: posix_fadvise: {e}"))?;
        }
        let offset = random.below(len);
        let size = (1 + random.below(MAX_READ)).min(len - offset) as usize;
        let mut buffer = vec![0u8; size];
        file.read_exact_at(&mut buffer, offset)
            .map_err(|e| format!("{label}: read of {size} bytes at {offset}: {e}"))?;
        let want = &expected[offset as usize..offset as usize + size];
        if let Some(i) = buffer.iter().zip(want).position(|(a, b)| a != b) {
            return Err(format!(
                "{label}: read of {size} bytes at {offset} differs from the source at byte {}",
                offset as usize + i
            ));
        }
    }
    Ok(())
}

/// Reads all of `file` in 128 KiB steps and compares it with `expected`.
fn sequential_read(file: &File, expected: &[u8], label: &str) -> Result<(), String> {
    let mut buffer = vec![0u8; 128 << 10];
    let mut offset = 0;
    while offset < expected.len() {
        let n = file
            .read_at(&mut buffer, offset as u64)
            .map_err(|e| format!("{label}: sequential read at {offset}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{label}: end of file at {offset}, expected {} bytes",
                expected.len()
            ));
        }
        if buffer[..n] != expected[offset..offset + n] {
            return Err(format!(
                "{label}: sequential read of {n} bytes at {offset} differs from the source"
            ));
        }
        offset += n;
    }
    Ok(())
}

fn open(path: &Path) -> File {
    File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[test]
fn concurrent_random_reads_match() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir(&source).unwrap();
    let own_files: Vec<(String, Arc<Vec<u8>>)> = (0..OWN_FILE_THREADS)
        .map(|i| {
            let name = format!("own-{i}.bin");
            let bytes = pseudo_random_bytes((2 << 20) + 1000 * i, 100 + i as u64);
            fs::write(source.join(&name), &bytes).unwrap();
            (name, Arc::new(bytes))
        })
        .collect();
    let shared = Arc::new(pseudo_random_bytes((6 << 20) + 77, 200));
    fs::write(source.join("shared.bin"), shared.as_slice()).unwrap();
    fixture.backup(&[&source], &[]);
    let snapshots = fixture.snapshots();

    let mount = MountGuard::start(&fixture, &[]);
    let dir: PathBuf = below(
        &mount.path("snapshots").join(folder_name(&snapshots[0])),
        &source,
    );

    let barrier = Arc::new(Barrier::new(OWN_FILE_THREADS + SHARED_FILE_THREADS));
    // Two of the shared-file threads use one open file, the others their own.
    let shared_handle = Arc::new(open(&dir.join("shared.bin")));
    let mut threads = Vec::new();
    for (i, (name, bytes)) in own_files.iter().enumerate() {
        let file = open(&dir.join(name));
        let bytes = bytes.clone();
        let barrier = barrier.clone();
        let label = name.clone();
        threads.push(thread::spawn(move || {
            barrier.wait();
            sequential_read(&file, &bytes, &label)?;
            random_reads(&file, &bytes, i as u64, RANDOM_READS, &label)
        }));
    }
    for i in 0..SHARED_FILE_THREADS {
        let file = if i < 2 {
            shared_handle.clone()
        } else {
            Arc::new(open(&dir.join("shared.bin")))
        };
        let bytes = shared.clone();
        let barrier = barrier.clone();
        threads.push(thread::spawn(move || {
            barrier.wait();
            let label = format!("shared.bin, thread {i}");
            random_reads(&file, &bytes, 1000 + i as u64, RANDOM_READS, &label)
        }));
    }

    for (i, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(result) => {
                assert_eq!(result, Ok(()), "reader thread {i}");
            }
            Err(_) => panic!("reader thread {i} panicked"),
        }
    }
}
