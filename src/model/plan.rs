//! The inference plan: forward passes of a network whose weights no longer change (a loaded
//! bundle in predict, evaluate, serve, clean, interpret and the Python package) run with every
//! BatchNorm folded into the convolution before it — onnxruntime's first graph optimisation, done
//! once per layer and kept. Training and its validation never enter the plan: their BatchNorm
//! statistics and weights change between passes.
//!
//! The plan is entered per call, on the calling thread ([`folded`]), rather than switched on a
//! network, because the layers that fold are deep inside every family: a thread-local flag
//! reaches them all without every composite layer forwarding a visitor.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// How many forward passes ran in the plan (tests prove predict, serve and Python use it).
static PASSES: AtomicUsize = AtomicUsize::new(0);

/// `FINETUNE_PLAN=0` runs inference unfolded, to compare the two (bench/predict_bench.py).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FINETUNE_PLAN").as_deref() != Ok("0"))
}

/// Runs `f` (eval-mode forward passes of an inference network) in the plan.
pub fn folded<R>(f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    PASSES.fetch_add(1, Ordering::Relaxed);
    let before = ACTIVE.with(|a| a.replace(true));
    // Restored even if `f` panics, so a caught panic cannot leave training in the plan.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// Whether this thread's forward passes are in the plan.
pub fn active() -> bool {
    ACTIVE.with(|a| a.get())
}

/// Forward passes run in the plan so far, in this process.
pub fn passes() -> usize {
    PASSES.load(Ordering::Relaxed)
}
