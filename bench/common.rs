//! Helpers shared by the bench examples (included with `#[path]`; not an example itself).

/// The value after `name` on the command line, else `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Seconds per call, after one untimed warm-up call (the value read back forces completion).
#[allow(dead_code)] // not every example that includes this file times closures
pub fn time(iters: usize, f: &mut dyn FnMut() -> f64) -> f64 {
    std::hint::black_box(f());
    let t = std::time::Instant::now();
    for _ in 0..iters {
        std::hint::black_box(f());
    }
    t.elapsed().as_secs_f64() / iters.max(1) as f64
}
