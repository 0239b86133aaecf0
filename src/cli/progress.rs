//! A progress bar on standard error, drawn from the library's [`Progress`]
//! counters by a thread that polls them ten times a second.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Cli;
use crate::progress::{Progress, ProgressState};

const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Spinner frames; the last one is shown when the bar finishes.
const SPINNER: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓";

/// Characters of a bar: filled, tip, empty.
const BAR_CHARS: &str = "=> ";

/// A running progress display; [`ProgressDisplay::finish`] removes it.
pub struct ProgressDisplay {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

/// Name of the counted items, such as `files`.
#[derive(Clone, Copy)]
pub struct ItemNoun(pub &'static str);

impl ProgressDisplay {
    /// Returns the counters to pass to the operation and a display of them, or
    /// only the counters when standard error is not a terminal, `-q` is given or
    /// `json` output is requested.
    pub fn start(cli: &Cli, json: bool, noun: ItemNoun) -> (Arc<Progress>, Option<Self>) {
        let progress = Arc::new(Progress::default());
        if cli.quiet || json || !std::io::stderr().is_terminal() {
            return (progress, None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(style(Layout::Spinner));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let bar = bar.clone();
            let stop = Arc::clone(&stop);
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || poll(&bar, &progress, &stop, noun))
        };
        (
            progress,
            Some(Self {
                bar,
                stop,
                poller: Some(poller),
            }),
        )
    }

    /// Stops updating and erases the bar, so that results print on a clean line.
    pub fn finish(mut self) {
        self.stop_poller();
    }

    fn stop_poller(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for ProgressDisplay {
    /// Erases the bar also when the operation failed, before the error prints.
    fn drop(&mut self) {
        self.stop_poller();
    }
}

/// The layout a state calls for: what the bar's position and length count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// No total known: a spinner, with bytes as the position for the rate.
    Spinner,
    /// Total bytes known: a bar over bytes, with a time estimate.
    Bytes,
    /// Total items known: a bar over items, with a time estimate.
    Items,
}

fn layout_of(state: &ProgressState) -> Layout {
    if state.total_bytes.is_some_and(|total| total > 0) {
        Layout::Bytes
    } else if state.total_items.is_some_and(|total| total > 0) {
        Layout::Items
    } else {
        Layout::Spinner
    }
}

/// Returns the style of a layout. Each line stays below 80 columns, because
/// indicatif does not shorten lines and a wrapped line is redrawn badly.
fn style(layout: Layout) -> ProgressStyle {
    let template = match layout {
        Layout::Spinner => "{spinner} {elapsed} {msg} {binary_bytes} {binary_bytes_per_sec}",
        Layout::Bytes => {
            "{spinner} [{bar:20}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}"
        }
        Layout::Items => "{spinner} {elapsed} [{bar:20}] {msg} ETA {eta}",
    };
    ProgressStyle::with_template(template)
        .expect("progress templates are valid")
        .tick_chars(SPINNER)
        .progress_chars(BAR_CHARS)
}

fn poll(bar: &ProgressBar, progress: &Progress, stop: &AtomicBool, noun: ItemNoun) {
    let mut current: Option<(Layout, &'static str)> = None;
    while !stop.load(Ordering::Relaxed) {
        let state = progress.state();
        let layout = layout_of(&state);
        if current != Some((layout, state.phase)) {
            bar.reset();
            bar.set_style(style(layout));
            current = Some((layout, state.phase));
        }
        let phase = if state.phase.is_empty() {
            String::new()
        } else {
            format!("{} ", state.phase)
        };
        match layout {
            Layout::Spinner => {
                bar.set_position(state.bytes);
                bar.set_message(format!("{phase}{} {}", noun.0, state.items));
            }
            Layout::Bytes => {
                bar.set_length(state.total_bytes.unwrap_or_default());
                bar.set_position(state.bytes);
                let of_total = state
                    .total_items
                    .map(|total| format!("/{total}"))
                    .unwrap_or_default();
                bar.set_message(format!("{phase}{} {}{of_total}", noun.0, state.items));
            }
            Layout::Items => {
                let total = state.total_items.unwrap_or_default();
                bar.set_length(total);
                bar.set_position(state.items);
                bar.set_message(format!(
                    "{phase}{}/{total}, {}",
                    state.items,
                    indicatif::BinaryBytes(state.bytes)
                ));
            }
        }
        bar.tick();
        std::thread::sleep(POLL_INTERVAL);
    }
}
