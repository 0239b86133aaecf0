//! Reading and writing large files without the page cache.
//!
//! A backup reads each large file once, from start to end, and writes each
//! pack once. The kernel's copies between its page cache and the process's
//! buffers then take a large share of the backup's CPU time. With `O_DIRECT`
//! the device reads from and writes to the process's buffer instead. The
//! buffer, offsets and lengths of such transfers must be aligned to the
//! device's block size, so [`DirectReader`] and [`write_direct`] go through an
//! aligned buffer of their own.
//!
//! Where a file system rejects `O_DIRECT`, or a transfer ends short, the flag
//! is cleared and the rest goes through the page cache, so the bytes read or
//! written never depend on the flag.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Alignment of buffers, offsets and lengths of direct reads. 4096 covers the
/// logical block size of common disks and file systems.
const ALIGN: usize = 4096;

/// Bytes requested by one direct read.
pub const DIRECT_STEP: usize = 4 << 20;

/// Files smaller than this are read through the page cache: for them the
/// copy costs little.
pub const DIRECT_MIN_SIZE: u64 = 32 << 20;

/// An aligned buffer for [`DirectReader`], kept between files.
pub struct DirectBuffer {
    bytes: Vec<u8>,
    /// Length of the aligned part.
    step: usize,
}

impl Default for DirectBuffer {
    fn default() -> Self {
        Self::with_step(DIRECT_STEP)
    }
}

impl DirectBuffer {
    /// Returns a buffer whose aligned part is `step` bytes, a multiple of the
    /// block size.
    fn with_step(step: usize) -> Self {
        debug_assert_eq!(step % ALIGN, 0);
        Self {
            bytes: Vec::new(),
            step,
        }
    }

    /// Returns the aligned part of the buffer, allocated on first use.
    fn aligned(&mut self) -> &mut [u8] {
        if self.bytes.len() < self.step + ALIGN {
            self.bytes = vec![0; self.step + ALIGN];
        }
        let skip = self.bytes.as_ptr().align_offset(ALIGN);
        &mut self.bytes[skip..skip + self.step]
    }
}

/// A reader of a file from its start, with `O_DIRECT` while that works.
pub struct DirectReader<'a> {
    file: &'a File,
    buffer: &'a mut DirectBuffer,
    /// File offset of the next read from the file.
    offset: u64,
    /// Bytes of the aligned buffer that are filled and not yet handed out.
    pos: usize,
    filled: usize,
    direct: bool,
}

impl<'a> DirectReader<'a> {
    /// Reads `file` of `size` bytes from its start. The reader turns on
    /// `O_DIRECT` unless the file looks cached: a cached file is read through
    /// the cache rather than again from the device. The flag is cleared again
    /// when the reader is dropped.
    pub fn new(file: &'a File, buffer: &'a mut DirectBuffer, size: u64) -> Self {
        let direct = !looks_cached(file, size, buffer.aligned());
        Self::with_direct(file, buffer, direct)
    }

    /// Reads `file` from its start, with `O_DIRECT` when `direct` is true and
    /// the file system takes it.
    fn with_direct(file: &'a File, buffer: &'a mut DirectBuffer, direct: bool) -> Self {
        let direct = direct && set_direct(file, true).is_ok();
        Self {
            file,
            buffer,
            offset: 0,
            pos: 0,
            filled: 0,
            direct,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        let file = self.file;
        let offset = self.offset;
        let aligned = self.buffer.aligned();
        let n = if self.direct {
            match read_full(file, aligned, offset) {
                // A direct read may only end short at the end of the file. If
                // it is short for another reason, the next offset is not
                // aligned, so the reader goes on without the flag.
                Ok(n) => {
                    if n < aligned.len() {
                        self.stop_direct();
                    }
                    n
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.stop_direct();
                    let aligned = self.buffer.aligned();
                    read_full(file, aligned, offset)?
                }
                Err(e) => return Err(e),
            }
        } else {
            read_full(file, aligned, offset)?
        };
        self.offset += n as u64;
        self.pos = 0;
        self.filled = n;
        Ok(())
    }

    fn stop_direct(&mut self) {
        if self.direct {
            self.direct = false;
            let _ = set_direct(self.file, false);
        }
    }
}

impl Read for DirectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            self.refill()?;
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buffer.aligned()[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for DirectReader<'_> {
    fn drop(&mut self) {
        self.stop_direct();
    }
}

/// Returns true when the first and the middle block of the file are in the
/// page cache, found by reads that fail instead of waiting for the device.
/// A kernel or file system without such reads makes it return false.
fn looks_cached(file: &File, size: u64, scratch: &mut [u8]) -> bool {
    let middle = size / 2 / ALIGN as u64 * ALIGN as u64;
    [0, middle].into_iter().all(|offset| {
        let iov = libc::iovec {
            iov_base: scratch.as_mut_ptr().cast(),
            iov_len: ALIGN.min(scratch.len()),
        };
        // SAFETY: the iovec points at `scratch`, which outlives the call and
        // has at least `iov_len` bytes.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        n == iov.iov_len as isize
    })
}

/// Reads into `buf` at `offset` until it is full or the file ends.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes smaller than this go through the page cache.
pub const DIRECT_WRITE_MIN_SIZE: usize = 1 << 20;

/// Bytes that [`write_direct`] copies into its aligned buffer and writes at a
/// time. Each thread that writes packs keeps such a buffer, so it is smaller
/// than the read step. Backing up the large benchmark files took the same
/// system time with 1 MiB writes as with 4 MiB writes.
const DIRECT_WRITE_STEP: usize = 1 << 20;

thread_local! {
    /// Aligned buffer of [`write_direct`], kept for the thread's next write.
    static WRITE_BUFFER: std::cell::RefCell<DirectBuffer> =
        std::cell::RefCell::new(DirectBuffer::with_step(DIRECT_WRITE_STEP));
}

/// Writes all of `bytes` at the start of `file`, which must be open for
/// writing and not in append mode. Writes of at least [`DIRECT_WRITE_MIN_SIZE`]
/// bytes go through `O_DIRECT` in whole blocks, and the last partial block
/// through the page cache. `file` is left without the flag.
pub fn write_direct(file: &File, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    if bytes.len() >= DIRECT_WRITE_MIN_SIZE && set_direct(file, true).is_ok() {
        let aligned_len = bytes.len() / ALIGN * ALIGN;
        let direct = WRITE_BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            let aligned = buffer.aligned();
            while written < aligned_len {
                let len = (aligned_len - written).min(aligned.len());
                aligned[..len].copy_from_slice(&bytes[written..written + len]);
                match file.write_at(&aligned[..len], written as u64) {
                    // A short direct write leaves an unaligned offset, so the
                    // rest goes through the page cache.
                    Ok(n) if n == len => written += n,
                    Ok(n) => {
                        written += n;
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let cleared = set_direct(file, false);
        direct?;
        cleared?;
    }
    file.write_all_at(&bytes[written..], written as u64)
}

/// Sets or clears `O_DIRECT` on an open file.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl with F_GETFL and F_SETFL on a valid descriptor has no
    // memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    /// Writes `len` random bytes to a new file in a directory below /var/tmp,
    /// which is on a disk file system more often than /tmp.
    fn random_file(len: usize) -> (tempfile::TempDir, File, Vec<u8>) {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let mut bytes = vec![0u8; len];
        rand::rng().fill(&mut bytes[..]);
        let path = dir.path().join("data");
        std::fs::write(&path, &bytes).unwrap();
        (dir, File::open(&path).unwrap(), bytes)
    }

    /// Reads all of `reader` in reads of the given sizes, in turn.
    fn read_all(mut reader: impl Read, sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; *sizes.iter().max().unwrap()];
        for size in sizes.iter().cycle() {
            let n = reader.read(&mut chunk[..*size]).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        unreachable!()
    }

    #[test]
    fn reader_returns_file_with_and_without_flag() {
        let mut buffer = DirectBuffer::default();
        // Lengths at, around and between multiples of the block and the step.
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            DIRECT_STEP,
            DIRECT_STEP + 4097,
            2 * DIRECT_STEP + 123,
        ] {
            let (_dir, file, bytes) = random_file(len);
            for direct in [true, false] {
                let reader = DirectReader::with_direct(&file, &mut buffer, direct);
                let got = read_all(reader, &[1 << 20, 7, 65536, 3 << 20]);
                assert!(got == bytes, "{len} bytes read with direct {direct}");
            }
        }
    }

    #[test]
    fn reader_drop_clears_flag() {
        let (_dir, file, bytes) = random_file(ALIGN * 3 + 5);
        let mut buffer = DirectBuffer::default();
        let mut reader = DirectReader::with_direct(&file, &mut buffer, true);
        let mut first = [0u8; 10];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(first, bytes[..10]);
        drop(reader);
        // SAFETY: F_GETFL on a valid descriptor has no memory effects.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_DIRECT, 0);
        // Unaligned reads work again.
        let mut odd = [0u8; 3];
        file.read_exact_at(&mut odd, 7).unwrap();
        assert_eq!(odd, bytes[7..10]);
    }

    #[test]
    fn write_direct_writes_all_bytes() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        for len in [
            0,
            10,
            DIRECT_WRITE_MIN_SIZE - 1,
            DIRECT_WRITE_MIN_SIZE,
            DIRECT_STEP + 1,
            2 * DIRECT_STEP + ALIGN + 17,
        ] {
            let mut bytes = vec![0u8; len];
            rand::rng().fill(&mut bytes[..]);
            let path = dir.path().join(format!("file-{len}"));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            write_direct(&file, &bytes).unwrap();

            // SAFETY: F_GETFL on a valid descriptor has no memory effects.
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(flags & libc::O_DIRECT, 0, "flag left on after {len} bytes");
            drop(file);
            assert!(
                std::fs::read(&path).unwrap() == bytes,
                "{len} bytes written"
            );
        }
    }

    #[test]
    fn looks_cached_after_write() {
        let (_dir, file, _) = random_file(DIRECT_STEP);
        let mut buffer = DirectBuffer::default();
        assert!(looks_cached(&file, DIRECT_STEP as u64, buffer.aligned()));
    }
}
