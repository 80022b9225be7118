//! `finetune._finetune`: the Python face of the library. Bundles load, predict and train exactly as
//! the CLI does (same code paths, same messages); the GIL is released while Rust computes.
//!
//! libtorch is not bundled: the package's `__init__.py` imports `torch` first, so this module binds
//! to the libtorch of the `torch==2.11.0` wheel already in the process (and the rpath set by
//! build.rs finds the same files if it is imported alone).

mod errors;
mod model;
mod training;

use model::{_read_image, inference_plan_passes, load, Model};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use training::train;

create_exception!(
    finetune,
    FinetuneError,
    PyException,
    "An error reported by finetune; the message is the one the command line prints."
);

/// finetune from Python: load bundles, predict on files, pixels or encoded bytes, train.
#[pymodule]
mod _finetune {
    #[pymodule_export]
    use super::{_read_image, inference_plan_passes, load, train, FinetuneError, Model};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        super::keep_freed_memory();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        // Whether this build can train under torchrun (Gloo's headers were there at build time).
        m.add("DISTRIBUTED", finetune::dist::AVAILABLE)?;
        m.add(
            "IMAGE_EXTENSIONS",
            finetune::data::items::IMAGE_EXTS.to_vec(),
        )?;
        Ok(())
    }
}

/// Makes glibc's malloc keep freed memory for reuse, as the `finetune` binary's mimalloc does.
///
/// Inside Python, libtorch's tensors come from glibc's malloc, which hands every buffer above its
/// mmap threshold (activations of a batch are tens of MB) back to the kernel when it is freed and
/// page-faults a new one in at the next batch: `predict_arrays` on mobilenet_v2 at 192 px ran at
/// 108–132 img/s, and 180 img/s with mmap off and trimming off (the same settings through
/// `GLIBC_TUNABLES`, measured in one session). A Python extension cannot replace malloc; mallopt
/// changes it for the whole process, so the memory a large prediction used stays with the process
/// (as with jemalloc or tcmalloc, which PyTorch recommends for CPU inference).
/// `FINETUNE_MALLOC_TUNE=0` leaves malloc alone.
fn keep_freed_memory() {
    if std::env::var("FINETUNE_MALLOC_TUNE").as_deref() == Ok("0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; any value is valid for these two.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
