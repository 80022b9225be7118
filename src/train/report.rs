//! What a user sees while training: a progress bar per epoch on a terminal (plain lines otherwise)
//! and fastai's table `epoch train_loss valid_loss error_rate time`, one per fit.

use crate::bundle::EpochRow;
use crate::data::{Progress, Quiet};
use std::io::IsTerminal;

pub fn mmss(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// The header of fastai's epoch table.
pub fn table_header() -> String {
    table_header_for(false)
}

/// The header of fastai's epoch table; multi-label models show fastai's `accuracy_multi` and
/// `F1ScoreMulti` where single-label ones show `error_rate`.
pub fn table_header_for(multi_label: bool) -> String {
    if multi_label {
        return format!(
            "{:>5}  {:>10}  {:>10}  {:>14}  {:>8}  {:>5}",
            "epoch", "train_loss", "valid_loss", "accuracy_multi", "f1_score", "time"
        );
    }
    format!(
        "{:>5}  {:>10}  {:>10}  {:>10}  {:>5}",
        "epoch", "train_loss", "valid_loss", "error_rate", "time"
    )
}

/// One line of fastai's epoch table.
pub fn table_row(r: &EpochRow) -> String {
    if let Some(f1) = r.f1 {
        return format!(
            "{:>5}  {:>10.6}  {:>10.6}  {:>14.6}  {:>8.6}  {:>5}",
            r.epoch,
            r.train_loss,
            r.valid_loss,
            r.accuracy,
            f1,
            mmss(r.seconds)
        );
    }
    format!(
        "{:>5}  {:>10.6}  {:>10.6}  {:>10.6}  {:>5}",
        r.epoch,
        r.train_loss,
        r.valid_loss,
        r.error_rate,
        mmss(r.seconds)
    )
}

/// Receives training events and everything a run shows: the library prints nothing itself. The
/// CLI uses [`ConsoleReport`], the Python package prints through Python, tests and library users
/// may pass [`SilentReport`] or their own.
pub trait Report {
    /// A line about getting ready (the data, the model, resuming, the group): shown even when
    /// quiet.
    fn log(&mut self, _line: &str) {}
    /// What loading the data shows (images decoded, skipped files); nothing by default.
    fn data_progress(&mut self) -> Box<dyn Progress> {
        Box::new(Quiet)
    }
    /// Whether someone watches a terminal (downloads then show a bar).
    fn interactive(&self) -> bool {
        false
    }
    /// The data and the network are ready and training begins: from now on a stop request ends
    /// the run with a saved bundle. Called on every rank (the other events only on rank 0's).
    fn ready(&mut self) {}
    /// Called before the first fit: whether the table is multi-label's.
    fn task(&mut self, _multi_label: bool) {}
    fn begin_fit(&mut self, _phase: &str, _n_epochs: usize) {}
    fn begin_epoch(&mut self, _epoch: usize, _n_batches: usize) {}
    fn batch(&mut self, _i: usize, _smooth_loss: f64) {}
    fn begin_validate(&mut self) {}
    fn end_epoch(&mut self, _row: &EpochRow) {}
    fn message(&mut self, _msg: &str) {}
    /// A message that explains the table itself (early stopping, the epoch `--save-best` kept):
    /// shown even when quiet.
    fn notice(&mut self, msg: &str) {
        self.message(msg)
    }
}

pub struct SilentReport;
impl Report for SilentReport {}

/// Progress bar on a terminal, plain lines otherwise; `quiet` keeps only the tables.
pub struct ConsoleReport {
    /// Set when training begins (see [`ConsoleReport::training`]).
    training: std::sync::Arc<std::sync::atomic::AtomicBool>,
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    quiet: bool,
    n_batches: usize,
    last_plain: std::time::Instant,
    multi_label: bool,
}

impl ConsoleReport {
    pub fn new(quiet: bool) -> Self {
        ConsoleReport {
            training: Default::default(),
            bar: None,
            tty: std::io::stderr().is_terminal(),
            quiet,
            n_batches: 0,
            last_plain: std::time::Instant::now(),
            multi_label: false,
        }
    }
}

impl ConsoleReport {
    /// Whether training has begun, for a Ctrl-C handler: before it, nothing is worth saving and
    /// the process may end at once; after it, the run stops after the current batch and saves.
    pub fn training(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.training.clone()
    }
}

impl Report for ConsoleReport {
    fn log(&mut self, line: &str) {
        eprintln!("{line}");
    }
    fn data_progress(&mut self) -> Box<dyn Progress> {
        Box::new(ConsoleProgress::new("decoding images", self.quiet))
    }
    fn interactive(&self) -> bool {
        self.tty
    }
    fn task(&mut self, multi_label: bool) {
        self.multi_label = multi_label;
    }
    fn ready(&mut self) {
        self.training
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn begin_fit(&mut self, phase: &str, _n_epochs: usize) {
        println!();
        if !self.quiet {
            println!("{phase}:");
        }
        println!("{}", table_header_for(self.multi_label));
    }
    fn begin_epoch(&mut self, epoch: usize, n_batches: usize) {
        self.n_batches = n_batches;
        if self.quiet {
            return;
        }
        if self.tty {
            let b = indicatif::ProgressBar::new(n_batches as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} batches, eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(epoch.to_string());
            self.bar = Some(b);
        }
        self.last_plain = std::time::Instant::now();
    }
    fn batch(&mut self, i: usize, smooth_loss: f64) {
        if let Some(b) = &self.bar {
            b.set_position(i as u64 + 1);
            b.set_message(format!("loss {smooth_loss:.4}"));
        } else if !self.quiet && self.last_plain.elapsed().as_secs() >= 10 {
            eprintln!("  batch {}/{} loss {smooth_loss:.4}", i + 1, self.n_batches);
            self.last_plain = std::time::Instant::now();
        }
    }
    fn begin_validate(&mut self) {
        if let Some(b) = &self.bar {
            b.set_message("validating");
        }
    }
    fn end_epoch(&mut self, r: &EpochRow) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        println!("{}", table_row(r));
    }
    /// Warnings are shown even when quiet.
    fn notice(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
    fn message(&mut self, msg: &str) {
        if !self.quiet || msg.starts_with("warning") {
            match &self.bar {
                Some(b) => b.suspend(|| eprintln!("{msg}")),
                None => eprintln!("{msg}"),
            }
        }
    }
}

/// Loading data on a terminal: a bar (unless quiet or not a terminal), warnings and notes on
/// stderr, always.
pub struct ConsoleProgress {
    bar: indicatif::ProgressBar,
}

impl ConsoleProgress {
    /// A bar labelled `what`.
    pub fn new(what: &str, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return ConsoleProgress {
                bar: indicatif::ProgressBar::hidden(),
            };
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} [{{bar:30}}] {{pos}}/{{len}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        ConsoleProgress { bar }
    }
}

impl Progress for ConsoleProgress {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn restart(&self) {
        self.bar.set_position(0);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
    fn warn(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("warning: {msg}"));
    }
    fn note(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("{msg}"));
    }
}
