use clap::Parser;

mod cli;

// The allocator. libtorch allocates every activation and gradient with posix_memalign; glibc hands
// each block above its mmap threshold (a few MB) back to the kernel on free, so every batch maps and
// page-faults gigabytes afresh. mimalloc is statically linked with its `override` feature: the
// executable then defines malloc/free/posix_memalign/..., and the dynamic linker binds libtorch's,
// libgomp's and libc's own calls to those (an executable's symbols come first in the lookup scope),
// so no LD_PRELOAD and no environment variable is needed (tests/alloc.rs checks the binding).
// The `mimalloc` crate alone would only replace Rust's allocator, which holds no tensor.
//
// Measured (2026-11-29, this project's 2-core x86-64 machine, under the CPU lock; one frozen epoch of
// mobilenet_v2, real weights, 320 train + 129 valid clothing-small images, 192 px, bs 64; wall /
// user / sys seconds, peak RSS; losses bit-identical in every row):
//   glibc 2.36 defaults                                25.4-28.8 / 34.5-35.0 / 13.7-16.9 s, 4.4-4.6 GB
//   glibc M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 2^31-1,
//         M_TOP_PAD 1 GiB (the mallopt settings)       21.8-22.5 / 33.0-33.3 /  7.2-8.6 s,  5.7 GB
//     + M_ARENA_MAX 1, M_TOP_PAD 64 MiB                21.5      / 33.2      /  7.9 s,      6.0 GB
//   mimalloc 3.2 (default purge 10 ms)                 25.5      / 35.4      / 10.8 s,      4.2 GB
//   mimalloc 3.2, purge never                          22.4-23.5 / 34.4-35.8 /  7.6-7.7 s,  4.5 GB
//   mimalloc 2.3 (default purge 10 ms)                 28.7      / 36.2      / 15.6 s,      4.2 GB
//   mimalloc 2.3, purge never                          21.0-24.3 / 33.7-36.4 /  4.4-6.1 s,  4.6 GB
//   mimalloc 2.3, purge after 1 s (kept)               21.6      / 34.7      /  6.5 s,      4.4 GB
// glibc's mallopt does take thresholds above 32 MiB here (mallopt(M_MMAP_THRESHOLD, 1 GiB) returns 1
// and a 200 MB block then comes from the main heap), but only the main arena grows beyond 64 MiB
// (HEAP_MAX_SIZE): a big block allocated on any other thread (serve's inference worker, the batch
// producer) is still mmapped and unmapped every time unless M_ARENA_MAX is 1, and it keeps ~1.3 GB
// more resident at the peak. mimalloc 2 keeps big blocks in its own arenas and returns freed memory
// after a delay: at 1 s the churn is gone and an idle `serve` still gives memory back.
// MIMALLOC_PURGE_DELAY (and every other MIMALLOC_* variable) still works for experiments.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc 2's `mi_option_t` (the crate's `v2` feature).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    if cli::version::asked(&std::env::args_os().collect::<Vec<_>>()) {
        print!("{}", cli::version::text());
        return std::process::ExitCode::SUCCESS;
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
