//! Content-defined chunking with FastCDC 2020 and a secret gear table.
//!
//! Sizes: minimum 512 KiB, average 1 MiB, maximum 8 MiB, normalization level 1.
//! Chunks of about 1 MiB keep the index small (ten million chunks hold about 10 TiB)
//! while an edit in a large file still costs only about one new megabyte. The gear
//! table comes from the repository's chunker key, so cut points, and with them the
//! chunk sizes an observer sees, depend on a secret.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, select_masks};
use serde::{Deserialize, Serialize};

/// Bytes that [`Chunker::chunk_reader_with_buffer`] reads before it looks for
/// the next cut point. Reading a few chunks at a time, instead of filling the
/// whole buffer, leaves less to move when the buffer wraps around.
const READ_STEP: usize = 4 << 20;

/// Chunk size limits, stored in the repository config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Minimum chunk size in bytes (except the last chunk of a file).
    pub min_size: u32,
    /// Target average chunk size in bytes.
    pub avg_size: u32,
    /// Maximum chunk size in bytes.
    pub max_size: u32,
    /// FastCDC normalization level, 0 to 3.
    pub normalization: u8,
}

impl ChunkerParams {
    /// 512 KiB / 1 MiB / 8 MiB, normalization 1.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min_size: 512 << 10,
        avg_size: 1 << 20,
        max_size: 8 << 20,
        normalization: 1,
    };

    /// Checks that the sizes are even, ordered and within 64 bytes to 64 MiB.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min_size >= 64
            && self.min_size < self.avg_size
            && self.avg_size < self.max_size
            && self.max_size <= 64 << 20
            && self.min_size.is_multiple_of(2)
            && self.avg_size.is_multiple_of(2)
            && self.max_size.is_multiple_of(2)
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(format!("invalid chunker parameters {self:?}"))
        }
    }
}

/// Splits byte streams at content-defined cut points.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Vec<u64>,
    gear_ls: Vec<u64>,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunker({:?}, <secret gear table>)", self.params)
    }
}

impl Chunker {
    /// Creates a chunker from validated parameters and a 256-entry gear table.
    pub fn new(params: ChunkerParams, gear: Vec<u64>) -> Self {
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, level);
        let gear_ls = gear.iter().map(|g| g << 1).collect();
        Self {
            params,
            gear,
            gear_ls,
            mask_s,
            mask_l,
        }
    }

    /// Returns the chunk size limits.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Returns the length of the first chunk of `data`. When `data` holds fewer
    /// than `max_size` bytes, the caller must pass the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, len) = cut_gear(
            data,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// Reads `reader` to its end and calls `sink` with each chunk in order.
    /// Returns the number of bytes read.
    pub fn chunk_reader<R: Read>(
        &self,
        reader: R,
        sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        self.chunk_reader_with_buffer(reader, &mut Vec::new(), sink)
    }

    /// Like [`Chunker::chunk_reader`], but reuses `buf` between calls, which saves
    /// allocating and clearing a buffer larger than the maximum chunk size for
    /// every small file.
    pub fn chunk_reader_with_buffer<R: Read>(
        &self,
        mut reader: R,
        buf: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        let max = self.params.max_size as usize;
        let step = READ_STEP.min(max);
        if buf.len() < max + step {
            buf.resize(max + step, 0);
        }
        let mut start = 0;
        let mut end = 0;
        let mut eof = false;
        let mut total = 0u64;
        loop {
            let available = end - start;
            if available == 0 && eof {
                return Ok(total);
            }
            if available > 0 {
                let len = self.cut(&buf[start..end]).max(1);
                // A cut point depends only on the bytes before it, so a cut
                // found before the end of the bytes read so far stays where it
                // is when more bytes follow. Otherwise it is final only with
                // `max` bytes or the end of the stream in view.
                if len < available || available >= max || eof {
                    sink(&buf[start..start + len])?;
                    start += len;
                    continue;
                }
            }
            // Moving the unfinished chunk to the front happens only when the
            // buffer has no room for another read after it. There is always
            // room afterwards, because less than `max` bytes are moved.
            if buf.len() - end < step {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            // Reading a whole step, instead of what one call returns, keeps a
            // pipe's small reads from making the chunker scan a chunk again
            // after every read.
            let target = end + step;
            while end < target {
                let n = match reader.read(&mut buf[end..target]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                end += n;
                total += n as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunker(gear_seed: u64) -> Chunker {
        let mut x = gear_seed;
        let gear = (0..256)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x
            })
            .collect();
        let params = ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 1,
        };
        Chunker::new(params, gear)
    }

    fn data(len: usize) -> Vec<u8> {
        let mut x = 1u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn chunks(c: &Chunker, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        c.chunk_reader(bytes, |chunk| {
            out.push(chunk.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn chunks_concatenate_to_input() {
        let input = data(200_000);
        let parts = chunks(&chunker(1), &input);
        assert_eq!(parts.concat(), input);
        assert!(parts.len() > 10);
        assert!(
            parts[..parts.len() - 1]
                .iter()
                .all(|p| p.len() >= 1024 && p.len() <= 16384)
        );
    }

    #[test]
    fn insert_shifts_few_chunks() {
        let input = data(200_000);
        let mut edited = input.clone();
        edited.splice(50_000..50_000, b"inserted bytes".iter().copied());
        let before = chunks(&chunker(1), &input);
        let after = chunks(&chunker(1), &edited);
        let common = after.iter().filter(|c| before.contains(c)).count();
        assert!(common + 3 >= after.len(), "{common} of {}", after.len());
    }

    #[test]
    fn cut_points_depend_on_gear_table() {
        let input = data(200_000);
        assert_ne!(chunks(&chunker(1), &input), chunks(&chunker(2), &input));
    }

    /// Returns at most `piece` bytes per call, like a pipe.
    struct SmallReads<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl Read for SmallReads<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn cuts_independent_of_read_sizes() {
        let c = chunker(1);
        let input = data(300_000);
        let mut expected = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let len = c.cut(rest).max(1);
            expected.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        for piece in [1, 100, 4095, 16384, 65536, 1 << 20] {
            let mut parts = Vec::new();
            let reader = SmallReads {
                data: &input,
                piece,
            };
            let total = c
                .chunk_reader(reader, |chunk| {
                    parts.push(chunk.to_vec());
                    Ok(())
                })
                .unwrap();
            assert_eq!(total, input.len() as u64, "piece {piece}");
            assert_eq!(parts, expected, "piece {piece}");
        }
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunks(&chunker(1), &[]).is_empty());
    }
}
