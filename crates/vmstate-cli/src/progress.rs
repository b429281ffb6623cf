//! A one-line progress bar on stderr, for large inputs when stderr is a terminal.
//!
//! Never drawn into a pipe or a file (scripts and tests see nothing), nor for inputs small
//! enough to be done before anyone would look.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Inputs smaller than this get no bar.
const MIN_TOTAL: u64 = 64 << 20;

/// The line is redrawn at most this often: a terminal is slower than the parser.
const REDRAW: Duration = Duration::from_millis(100);

/// Width of the bar in characters.
const WIDTH: u64 = 30;

/// A progress bar for one pass over `total` bytes.
pub struct Progress {
    label: &'static str,
    total: u64,
    enabled: bool,
    /// The offset at which the next whole percent is reached and the line is redrawn.
    next: u64,
    /// When the line was last drawn.
    drawn_at: Option<Instant>,
    drawn: bool,
}

impl Progress {
    /// A bar labelled `label` for `total` bytes; inert unless stderr is a terminal and the
    /// input is large.
    pub fn new(label: &'static str, total: u64) -> Progress {
        let enabled = total >= MIN_TOTAL && std::io::stderr().is_terminal();
        Progress {
            label,
            total,
            enabled,
            next: 0,
            drawn_at: None,
            drawn: false,
        }
    }

    /// Moves the bar to `done` bytes; cheap enough to call per record.
    pub fn update(&mut self, done: u64) {
        if !self.enabled || done < self.next {
            return;
        }
        let percent = done.saturating_mul(100) / self.total.max(1);
        self.next = percent
            .saturating_add(1)
            .saturating_mul(self.total)
            .div_ceil(100);
        if self.drawn_at.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        self.drawn_at = Some(Instant::now());
        let filled = (done.saturating_mul(WIDTH) / self.total.max(1)).min(WIDTH);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{:<9} [{bar}] {:>3}%  {} / {} MiB",
            self.label,
            percent.min(100),
            done >> 20,
            self.total >> 20
        );
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the line, leaving stderr as it was for what follows.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
