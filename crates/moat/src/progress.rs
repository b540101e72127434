//! Progress bars on stderr, drawn only when stderr is a terminal (scripts and pipes see
//! nothing). Dependency-free: one line per bar, redrawn in place with ANSI cursor movement.

use std::io::{IsTerminal, Write};

/// Width of the bar itself, in characters.
const BAR_WIDTH: usize = 30;

/// One bar: a label, how much of the total is done, and a note after it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Left of the bar.
    pub label: String,
    /// Done so far.
    pub done: u64,
    /// The whole (0 draws an empty bar).
    pub total: u64,
    /// Right of the bar.
    pub note: String,
}

/// Bars redrawn in place.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    drawn: usize,
}

/// `[#########.........]` for `done` of `total`.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done.min(total) as u128 * width as u128 / total as u128) as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

impl Progress {
    /// Bars on stderr, if it is a terminal.
    pub fn stderr() -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
            drawn: 0,
        }
    }

    /// Whether anything is drawn.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Draws `rows`, replacing what was drawn before.
    pub fn draw(&mut self, rows: &[Row]) {
        if !self.enabled {
            return;
        }
        let width = rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        if self.drawn > 0 {
            // Up to the first line drawn, clearing as we go down again.
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for r in rows {
            let percent = (r.done.min(r.total) * 100)
                .checked_div(r.total)
                .unwrap_or(0);
            out.push_str(&format!(
                "\x1b[2K{:<width$} {} {:>3}% {}\n",
                r.label,
                bar(r.done, r.total, BAR_WIDTH),
                percent,
                r.note
            ));
        }
        self.drawn = rows.len();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }

    /// Leaves the last drawing on screen; the next draw starts below it.
    pub fn finish(&mut self) {
        self.drawn = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(0, 10, 10), "[..........]");
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(bar(10, 10, 10), "[##########]");
        assert_eq!(bar(20, 10, 4), "[####]");
        assert_eq!(bar(3, 0, 4), "[....]");
    }
}
