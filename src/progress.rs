//! Counters that long-running operations update and a display thread reads.
//!
//! The library only counts; the command line decides whether and how to show the
//! figures, so operations run the same with and without a terminal.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Items and bytes done so far, and the totals once they are known.
///
/// What an item is depends on the operation: a file for backup and restore, a
/// snapshot or pack for check, a pack for prune.
#[derive(Debug, Default)]
pub struct Progress {
    items: AtomicU64,
    bytes: AtomicU64,
    total_items: AtomicU64,
    total_bytes: AtomicU64,
    has_total_items: AtomicBool,
    has_total_bytes: AtomicBool,
    phase: Mutex<&'static str>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressState {
    /// Items done.
    pub items: u64,
    /// Bytes done.
    pub bytes: u64,
    /// Items in all, if known.
    pub total_items: Option<u64>,
    /// Bytes in all, if known.
    pub total_bytes: Option<u64>,
    /// Current step of the operation, such as `reading packs`; empty if unset.
    pub phase: &'static str,
}

impl Progress {
    /// Adds finished items.
    pub fn add_items(&self, count: u64) {
        self.items.fetch_add(count, Ordering::Relaxed);
    }

    /// Adds processed bytes.
    pub fn add_bytes(&self, count: u64) {
        self.bytes.fetch_add(count, Ordering::Relaxed);
    }

    /// Sets the number of items the operation will process.
    pub fn set_total_items(&self, total: u64) {
        self.total_items.store(total, Ordering::Relaxed);
        self.has_total_items.store(true, Ordering::Release);
    }

    /// Sets the number of bytes the operation will process.
    pub fn set_total_bytes(&self, total: u64) {
        self.total_bytes.store(total, Ordering::Relaxed);
        self.has_total_bytes.store(true, Ordering::Release);
    }

    /// Names the current step and resets the counters and totals for it.
    pub fn start_phase(&self, phase: &'static str) {
        *self.phase.lock().expect("progress phase lock") = phase;
        self.items.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.has_total_items.store(false, Ordering::Release);
        self.has_total_bytes.store(false, Ordering::Release);
    }

    /// Returns the current counters.
    pub fn state(&self) -> ProgressState {
        let total = |has: &AtomicBool, value: &AtomicU64| {
            has.load(Ordering::Acquire)
                .then(|| value.load(Ordering::Relaxed))
        };
        ProgressState {
            items: self.items.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            total_items: total(&self.has_total_items, &self.total_items),
            total_bytes: total(&self.has_total_bytes, &self.total_bytes),
            phase: *self.phase.lock().expect("progress phase lock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_unknown_until_set() {
        let progress = Progress::default();
        progress.add_items(2);
        progress.add_bytes(10);
        let state = progress.state();
        assert_eq!(state.items, 2);
        assert_eq!(state.bytes, 10);
        assert_eq!(state.total_items, None);
        progress.set_total_items(5);
        assert_eq!(progress.state().total_items, Some(5));
    }

    #[test]
    fn phase_resets_counters() {
        let progress = Progress::default();
        progress.set_total_bytes(100);
        progress.add_bytes(50);
        progress.start_phase("repacking");
        let state = progress.state();
        assert_eq!(state.bytes, 0);
        assert_eq!(state.total_bytes, None);
        assert_eq!(state.phase, "repacking");
    }
}
