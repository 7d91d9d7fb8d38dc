//! A progress indicator on stderr: `[3/16 0:42] cpu grkan_forward f32 25216x768 G8`, redrawn in
//! place on a terminal, one line per case otherwise (CI logs).

use crate::report::fmt_time;
use crate::results::{CaseResult, Status};
use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    total: usize,
    done: usize,
    start: Instant,
    tty: bool,
    quiet: bool,
}

impl Progress {
    /// A progress indicator for `total` cases; `quiet` prints nothing (tests).
    pub fn new(total: usize, quiet: bool) -> Self {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    fn prefix(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!(
            "[{}/{} {}:{:02}]",
            self.done + 1,
            self.total,
            s / 60,
            s % 60
        )
    }

    /// A free-form line (limits being measured, the peer starting).
    pub fn note(&mut self, msg: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{msg}");
    }

    /// A case starts.
    pub fn start(&mut self, backend: &str, id: &str) {
        if self.quiet {
            return;
        }
        let bar_width = 20;
        let filled = bar_width * self.done / self.total.max(1);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(bar_width - filled));
        if self.tty {
            eprint!("\r\x1b[K{} {bar} {backend} {id}", self.prefix());
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{} {backend} {id}", self.prefix());
        }
    }

    /// A case ended.
    pub fn done(&mut self, r: &CaseResult) {
        self.done += 1;
        if self.quiet {
            return;
        }
        let what = match (&r.status, &r.time) {
            (Status::Ok, Some(t)) => format!("ok, median {}", fmt_time(t.median_s)),
            (Status::Ok, None) => "ok".into(),
            (Status::Unsupported, _) => "unsupported".into(),
            (Status::Failed, _) => format!("FAILED: {}", r.message.as_deref().unwrap_or("")),
            (Status::OutOfTime, _) => "out of time".into(),
        };
        if self.tty {
            if r.status == Status::Failed {
                eprintln!("\r\x1b[K  {} {what}", r.case.id());
            }
        } else {
            eprintln!("    {what}");
        }
    }

    /// Clear the line at the end.
    pub fn finish(&mut self) {
        if !self.quiet && self.tty {
            eprint!("\r\x1b[K");
            let _ = std::io::stderr().flush();
        }
    }
}
