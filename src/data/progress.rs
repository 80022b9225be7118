//! What loading data shows while it works: how many images are done, and warnings (a skipped
//! file, an image cache that cannot be used) and notes (waiting for another process's cache
//! lock). The library prints nothing itself: the CLI draws a bar and prints the warnings
//! (`train::report::ConsoleProgress`), the Python package prints them its way, and tests and
//! library users who want silence pass [`Quiet`]. `Sync`: images decode on rayon's threads.

pub trait Progress: Sync {
    /// `total` images will be loaded.
    fn start(&self, _total: u64) {}
    /// `n` more are done.
    fn advance(&self, _n: u64) {}
    /// Loading starts over (the cache was not usable; everything decodes into memory).
    fn restart(&self) {}
    fn finish(&self) {}
    /// A warning, without the `warning: ` prefix; the work goes on.
    fn warn(&self, _msg: &str) {}
    /// Something the user may wonder about while nothing moves (a lock being waited for).
    fn note(&self, _msg: &str) {}
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {}
