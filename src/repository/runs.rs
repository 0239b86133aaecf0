//! Grouping the blobs that a reader needs from one pack into few reads.
//!
//! A read from a server or object store costs a round trip before its first
//! byte, so reading the bytes between two needed blobs is cheaper than a second
//! request when the gap is small. A local disk gains less, but fewer system
//! calls still help.

/// Largest run of unneeded bytes between two blobs that one read spans rather
/// than starting a new read. One round trip to an object store costs about as
/// much as transferring this much.
pub const MAX_GAP: u64 = 1 << 20;
/// Largest single read, unless one blob alone is larger. It bounds the memory
/// of each read in flight.
pub const MAX_READ: u64 = 4 << 20;

/// Splits `blobs`, sorted by offset in one pack, into runs that one read each
/// covers. `span` gives a blob's offset and length.
pub fn read_runs<T>(blobs: &[T], span: impl Fn(&T) -> (u64, u64)) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let mut first = 0;
    for next in 1..=blobs.len() {
        let start = span(&blobs[first]).0;
        let (last_offset, last_len) = span(&blobs[next - 1]);
        let end = last_offset + last_len;
        let split = blobs.get(next).is_none_or(|blob| {
            let (offset, len) = span(blob);
            offset.saturating_sub(end) > MAX_GAP || offset + len - start > MAX_READ
        });
        if split {
            runs.push(&blobs[first..next]);
            first = next;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(blobs: &[(u64, u64)]) -> Vec<(u64, u64)> {
        read_runs(blobs, |blob| *blob)
            .iter()
            .map(|run| (run[0].0, run[run.len() - 1].0 + run[run.len() - 1].1))
            .collect()
    }

    #[test]
    fn read_runs_split_at_gaps_and_size() {
        assert!(spans(&[]).is_empty());
        assert_eq!(spans(&[(100, 50)]), [(100, 150)]);
        // Touching blobs and a gap of exactly MAX_GAP share one read.
        assert_eq!(
            spans(&[(0, 10), (10, 10), (20 + MAX_GAP, 10)]),
            [(0, 30 + MAX_GAP)]
        );
        // One byte more and the next blob starts a read of its own.
        assert_eq!(
            spans(&[(0, 10), (11 + MAX_GAP, 10)]),
            [(0, 10), (11 + MAX_GAP, 21 + MAX_GAP)]
        );
        // A read stops before it would exceed MAX_READ.
        let quarter = MAX_READ / 4;
        let blobs: Vec<(u64, u64)> = (0..6).map(|n| (n * quarter, quarter)).collect();
        assert_eq!(
            spans(&blobs),
            [(0, 4 * quarter), (4 * quarter, 6 * quarter)]
        );
        // A blob larger than MAX_READ is read alone.
        let huge = MAX_READ + 1;
        assert_eq!(
            spans(&[(0, 5), (5, huge), (5 + huge, 5)]),
            [(0, 5), (5, 5 + huge), (5 + huge, 10 + huge)]
        );
    }
}
