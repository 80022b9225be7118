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
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add(
            "IMAGE_EXTENSIONS",
            finetune::data::items::IMAGE_EXTS.to_vec(),
        )?;
        Ok(())
    }
}
