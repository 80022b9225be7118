//! `finetune._finetune`: the Python face of the library. Bundles load, predict and train exactly as
//! the CLI does (same code paths, same messages); the GIL is released while Rust computes.
//!
//! libtorch is not bundled: the package's `__init__.py` imports `torch` first, so this module binds
//! to the libtorch of the `torch==2.11.0` wheel already in the process (and the rpath set by
//! build.rs finds the same files if it is imported alone).

use finetune::data::decode::{decode_bytes, decode_file, DecodeError};
use finetune::data::{DataConfig, PadMode, ResizeMethod, Size};
use finetune::device::{select as parse_device, DeviceError};
use finetune::infer::bundle::{self, Bundle, BundleError};
use finetune::infer::predict::{predict_with, Prediction};
use finetune::model::ArchSpec;
use finetune::train::report::{table_header, table_row};
use finetune::train::run::{Feedback, Outcome, Plan, Pretrained, RunError, Session, Settings};
use finetune::train::{EpochRow, FineTune, Report};
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyKeyboardInterrupt, PyRuntimeError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

create_exception!(
    finetune,
    FinetuneError,
    PyException,
    "An error reported by finetune; the message is the one the command line prints."
);

fn fail(e: impl std::fmt::Display) -> PyErr {
    FinetuneError::new_err(e.to_string())
}

fn bundle_err(e: BundleError, dir: &Path) -> PyErr {
    match e {
        BundleError::NotBundle(_) if !dir.exists() => PyFileNotFoundError::new_err(e.to_string()),
        e => fail(e),
    }
}

fn device_err(e: DeviceError) -> PyErr {
    match e {
        DeviceError::Unknown(_) => PyValueError::new_err(e.to_string()),
        e => fail(e),
    }
}

fn run_err(e: RunError) -> PyErr {
    use finetune::data::items::ItemsError;
    use finetune::data::DataError;
    match e {
        RunError::NoWeightsFile(_) | RunError::Data(DataError::Items(ItemsError::Missing(_))) => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        RunError::Data(DataError::Items(ItemsError::BadPct(_))) => {
            PyValueError::new_err(e.to_string())
        }
        e => fail(e),
    }
}

/// One input's outcome before it becomes Python objects.
type Ranked = Result<Vec<(String, f32)>, ItemError>;

enum ItemError {
    Missing(PathBuf),
    Decode(DecodeError),
}

impl ItemError {
    fn to_py(&self) -> PyErr {
        match self {
            ItemError::Missing(p) => {
                PyFileNotFoundError::new_err(format!("{} does not exist", p.display()))
            }
            ItemError::Decode(e) => fail(e),
        }
    }
}

/// Results as Python lists of `(label, score)`; a failed item raises, or with
/// `return_exceptions` stands in the list as its exception (as `asyncio.gather` does).
fn to_python(
    py: Python<'_>,
    results: Vec<Ranked>,
    return_exceptions: bool,
) -> PyResult<Py<PyList>> {
    let out = PyList::empty(py);
    for r in results {
        match r {
            Ok(top) => out.append(PyList::new(py, top)?)?,
            Err(e) if return_exceptions => out.append(e.to_py().into_value(py))?,
            Err(e) => return Err(e.to_py()),
        }
    }
    Ok(out.unbind())
}

/// A trained model bundle, loaded once and used for any number of predictions.
#[pyclass(module = "finetune", name = "Model", frozen)]
struct Model {
    /// One forward pass at a time; the lock also makes the model shareable between Python threads.
    bundle: Mutex<Bundle>,
    path: PathBuf,
    device: tch::Device,
}

impl Model {
    fn classes_of(&self) -> Vec<String> {
        self.lock().info.classes.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bundle> {
        self.bundle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes with `decode` and ranks every item (GIL released), best `top_k` first.
    fn rank<T: Sync + Send>(
        &self,
        py: Python<'_>,
        items: Vec<T>,
        top_k: usize,
        decode: impl Fn(&T) -> Result<image::RgbImage, ItemError> + Sync + Send,
    ) -> Vec<Ranked> {
        py.detach(|| {
            let b = self.lock();
            let classes = &b.info.classes;
            let k = top_k.clamp(1, classes.len());
            let mut out = Vec::with_capacity(items.len());
            predict_with(&b, &items, decode, |_, r| {
                out.push(r.map(|probs| {
                    let p = Prediction {
                        path: PathBuf::new(),
                        probs,
                    };
                    p.top(k)
                        .into_iter()
                        .map(|(i, s)| (classes[i].clone(), s))
                        .collect()
                }))
            });
            out
        })
    }
}

/// `obj` as one RGB image: any object with a uint8 buffer of shape (H, W, 3), e.g. a numpy array
/// (others go through `numpy.asarray` first, so PIL images work too).
fn rgb_of(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<image::RgbImage> {
    let pixels = |o: &Bound<'_, PyAny>| -> PyResult<(Vec<usize>, Vec<u8>)> {
        let buf = PyBuffer::<u8>::get(o)?;
        Ok((buf.shape().to_vec(), buf.to_vec(py)?))
    };
    let (shape, data) = match pixels(obj) {
        Ok(v) => v,
        Err(_) => {
            let arr = py.import("numpy")?.call_method1("asarray", (obj,))?;
            pixels(&arr).map_err(|_| {
                let dtype = arr
                    .getattr("dtype")
                    .and_then(|d| d.str())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "?".into());
                PyTypeError::new_err(format!(
                    "{what}: expected uint8 RGB pixels of shape (H, W, 3), got dtype {dtype}"
                ))
            })?
        }
    };
    match shape[..] {
        [h, w, 3] if h > 0 && w > 0 => image::RgbImage::from_raw(w as u32, h as u32, data)
            .ok_or_else(|| {
                PyValueError::new_err(format!("{what}: pixel buffer does not match its shape"))
            }),
        _ => Err(PyValueError::new_err(format!(
            "{what}: expected uint8 RGB pixels of shape (H, W, 3), got shape {shape:?}"
        ))),
    }
}

#[pymethods]
impl Model {
    /// Class names, in the order of the network's outputs.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.classes_of()
    }

    /// The bundle folder this model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Where the network runs (`cpu`, `cuda:0`, ...).
    #[getter]
    fn device(&self) -> String {
        match self.device {
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        }
    }

    /// The bundle's `model.json` as a dict: architecture, input size, resize method, normalisation,
    /// how it was trained, final metrics.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.lock().info).map_err(fail)?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// Top-k `(label, score)` for each image file, in input order, scores being softmax
    /// probabilities. An unreadable file raises (`FinetuneError`, or `FileNotFoundError`) naming it;
    /// with `return_exceptions=True` its place in the list holds that exception instead.
    #[pyo3(signature = (paths, top_k=1, return_exceptions=false))]
    fn predict(
        &self,
        py: Python<'_>,
        paths: Vec<PathBuf>,
        top_k: usize,
        return_exceptions: bool,
    ) -> PyResult<Py<PyList>> {
        let r = self.rank(py, paths, top_k, |p| {
            if !p.exists() {
                return Err(ItemError::Missing(p.clone()));
            }
            decode_file(p).map_err(ItemError::Decode)
        });
        to_python(py, r, return_exceptions)
    }

    /// Like `predict`, for decoded pixels: a uint8 array of shape (N, H, W, 3), or a list of
    /// (H, W, 3) arrays of any sizes. They get the same resize and normalisation as files.
    #[pyo3(signature = (arrays, top_k=1))]
    fn predict_arrays(
        &self,
        py: Python<'_>,
        arrays: &Bound<'_, PyAny>,
        top_k: usize,
    ) -> PyResult<Py<PyList>> {
        let mut images = Vec::new();
        let batch = PyBuffer::<u8>::get(arrays)
            .ok()
            .filter(|b| b.dimensions() == 4);
        if let Some(buf) = batch {
            let s = buf.shape().to_vec();
            if s[3] != 3 || s[1] == 0 || s[2] == 0 {
                return Err(PyValueError::new_err(format!(
                    "arrays: expected uint8 RGB pixels of shape (N, H, W, 3), got shape {s:?}"
                )));
            }
            let data = buf.to_vec(py)?;
            let per = s[1] * s[2] * 3;
            for chunk in data.chunks_exact(per.max(1)) {
                images.push(
                    image::RgbImage::from_raw(s[2] as u32, s[1] as u32, chunk.to_vec())
                        .ok_or_else(|| {
                            PyValueError::new_err("arrays: pixel buffer does not match its shape")
                        })?,
                );
            }
        } else {
            if PyBuffer::<u8>::get(arrays).is_ok_and(|b| b.dimensions() == 3) {
                return Err(PyValueError::new_err(
                    "arrays: got one (H, W, 3) image; pass [image] or an (N, H, W, 3) array",
                ));
            }
            for (i, a) in arrays.try_iter()?.enumerate() {
                images.push(rgb_of(py, &a?, &format!("arrays[{i}]"))?);
            }
        }
        let r = self.rank(py, images, top_k, |img| Ok(img.clone()));
        to_python(py, r, false)
    }

    /// Like `predict`, for encoded image files in memory (bytes of a JPEG, PNG, ...): decoding and
    /// resizing run in Rust on all cores. `names` (e.g. the source paths) name the images in
    /// errors. Ray's batch predictor calls this.
    #[pyo3(signature = (blobs, top_k=1, return_exceptions=false, names=None))]
    fn predict_encoded(
        &self,
        py: Python<'_>,
        blobs: &Bound<'_, PyAny>,
        top_k: usize,
        return_exceptions: bool,
        names: Option<Vec<String>>,
    ) -> PyResult<Py<PyList>> {
        let mut items: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for (i, b) in blobs.try_iter()?.enumerate() {
            let b = b?;
            let bytes = PyBuffer::<u8>::get(&b)
                .and_then(|buf| buf.to_vec(py))
                .map_err(|_| PyTypeError::new_err(format!("blobs[{i}] is not bytes")))?;
            items.push((PathBuf::from(format!("<bytes {i}>")), bytes));
        }
        if let Some(names) = names {
            if names.len() != items.len() {
                return Err(PyValueError::new_err(format!(
                    "{} names for {} blobs",
                    names.len(),
                    items.len()
                )));
            }
            for (it, n) in items.iter_mut().zip(names) {
                it.0 = PathBuf::from(n);
            }
        }
        let r = self.rank(py, items, top_k, |(name, bytes)| {
            decode_bytes(name, bytes).map_err(ItemError::Decode)
        });
        to_python(py, r, return_exceptions)
    }

    fn __repr__(&self) -> String {
        let b = self.lock();
        format!(
            "finetune.Model('{}', arch={}, classes={}, size={}, device={})",
            self.path.display(),
            b.info.arch,
            b.info.classes.len(),
            b.info.size,
            self.device()
        )
    }
}

/// Loads a bundle made by `finetune train` (or `finetune.train`). `device`: auto (CUDA when
/// present), cpu, cuda or cuda:N.
#[pyfunction]
#[pyo3(signature = (path, device="auto"))]
fn load(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Model> {
    let dev = parse_device(device).map_err(device_err)?;
    let b = py
        .detach(|| bundle::load(&path, dev))
        .map_err(|e| bundle_err(e, &path))?;
    Ok(Model {
        bundle: Mutex::new(b),
        path,
        device: dev,
    })
}

/// The pixels `predict` sees for a file before resizing: decoded by finetune's decoder (format
/// sniffed from content, EXIF orientation applied, alpha on white) as (bytes, height, width).
#[pyfunction]
fn _read_image(py: Python<'_>, path: PathBuf) -> PyResult<(Vec<u8>, u32, u32)> {
    if !path.exists() {
        return Err(ItemError::Missing(path).to_py());
    }
    let img = py.detach(|| decode_file(&path)).map_err(fail)?;
    let (w, h) = img.dimensions();
    Ok((img.into_raw(), h, w))
}

/// Prints fastai's epoch table through Python's `print` (so notebooks show it), and the log lines.
struct PyReport {
    quiet: bool,
}

fn py_print(line: &str) {
    Python::attach(|py| {
        let _ = py
            .import("builtins")
            .and_then(|b| b.call_method1("print", (line,)));
        let _ = py
            .import("sys")
            .and_then(|s| s.getattr("stdout"))
            .and_then(|o| o.call_method0("flush"));
    });
}

impl Report for PyReport {
    fn begin_fit(&mut self, phase: &str, _n: usize) {
        if !self.quiet {
            py_print(&format!("{phase}:"));
        }
        py_print(&table_header());
    }
    fn end_epoch(&mut self, r: &EpochRow) {
        py_print(&table_row(r));
    }
    fn message(&mut self, msg: &str) {
        if !self.quiet || msg.starts_with("warning") {
            py_print(msg);
        }
    }
}

fn parse<T>(what: &str, s: &str, f: impl Fn(&str) -> Option<T>, choices: &str) -> PyResult<T> {
    f(s).ok_or_else(|| PyValueError::new_err(format!("{what} `{s}`: choose one of {choices}")))
}

fn size_of(obj: &Bound<'_, PyAny>) -> PyResult<Size> {
    let s = if let Ok(n) = obj.extract::<u32>() {
        n.to_string()
    } else if let Ok((w, h)) = obj.extract::<(u32, u32)>() {
        format!("{w}x{h}")
    } else {
        obj.extract::<String>()
            .map_err(|_| PyTypeError::new_err("size: an int, a (width, height) tuple or 'WxH'"))?
    };
    s.parse::<Size>()
        .map_err(|e| PyValueError::new_err(format!("size: {e}")))
}

fn row_dict<'py>(py: Python<'py>, r: &EpochRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("phase", &r.phase)?;
    d.set_item("epoch", r.epoch)?;
    d.set_item("train_loss", r.train_loss)?;
    d.set_item("valid_loss", r.valid_loss)?;
    d.set_item("error_rate", r.error_rate)?;
    d.set_item("accuracy", r.accuracy)?;
    d.set_item("seconds", r.seconds)?;
    Ok(d)
}

fn outcome_dict<'py>(py: Python<'py>, o: &Outcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let last = o.rows.last();
    for key in ["train_loss", "valid_loss", "error_rate", "accuracy"] {
        let v = last.map(|r| match key {
            "train_loss" => r.train_loss,
            "valid_loss" => r.valid_loss,
            "error_rate" => r.error_rate,
            _ => r.accuracy,
        });
        d.set_item(key, v)?;
    }
    d.set_item("model", o.out.display().to_string())?;
    d.set_item("interrupted", o.interrupted)?;
    d.set_item("resumable", o.resumable)?;
    d.set_item("skipped_files", o.skipped_files)?;
    d.set_item("seconds", o.seconds)?;
    d.set_item("classes", &o.info.classes)?;
    let hist = PyList::empty(py);
    for r in &o.rows {
        hist.append(row_dict(py, r)?)?;
    }
    d.set_item("history", hist)?;
    Ok(d)
}

/// fastai's `vision_learner(dls, arch).fine_tune(epochs)` on a folder of class folders, saving a
/// bundle to `out` (default `models/<data folder name>`) exactly as `finetune train` does; the
/// options are that command's. Returns the final metrics (the last row of the bundle's
/// metrics.csv) and every epoch's row under `history`. `resume=DIR` continues an interrupted
/// bundle. Ctrl-C stops after the current batch, saves a resumable bundle and raises
/// KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (
    data=None, *, out=None, arch="resnet18", epochs=3, freeze_epochs=1, base_lr=2e-3,
    lr_mult=100.0, pct_start=0.3, div=5.0, wd=0.01, label_smoothing=0.0, augment=false,
    size=None, resize="squish", pad_mode="reflection", bs=64, valid_pct=0.2, seed=42,
    strict=false, weights=None, random_init=false, force=false, resume=None, device="auto",
    precision="auto", quiet=false
))]
#[allow(clippy::too_many_arguments)]
fn train<'py>(
    py: Python<'py>,
    data: Option<PathBuf>,
    out: Option<PathBuf>,
    arch: &str,
    epochs: usize,
    freeze_epochs: usize,
    base_lr: f64,
    lr_mult: f64,
    pct_start: f64,
    div: f64,
    wd: f64,
    label_smoothing: f64,
    augment: bool,
    size: Option<&Bound<'py, PyAny>>,
    resize: &str,
    pad_mode: &str,
    bs: usize,
    valid_pct: f64,
    seed: u64,
    strict: bool,
    weights: Option<PathBuf>,
    random_init: bool,
    force: bool,
    resume: Option<PathBuf>,
    device: &str,
    precision: &str,
    quiet: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let dev = parse_device(device).map_err(device_err)?;
    let precision = precision
        .parse::<finetune::model::PrecisionChoice>()
        .map_err(PyValueError::new_err)?;
    // This call's choice only: a later load() in the same process takes its own defaults.
    let rt = finetune::model::Runtime {
        precision,
        ..finetune::model::Runtime::from(dev)
    };
    let plan = match resume {
        Some(dir) => Plan::resume(&dir, data),
        None => {
            let Some(data) = data else {
                return Err(PyTypeError::new_err(
                    "train() needs a data folder (or resume=DIR)",
                ));
            };
            if bs == 0 {
                return Err(PyValueError::new_err("--bs must be at least 1"));
            }
            let arch = arch
                .parse::<ArchSpec>()
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let size = match size {
                Some(s) => size_of(s)?,
                None => DataConfig::default().size,
            };
            let resize = parse(
                "resize",
                resize,
                |s| match s {
                    "squish" => Some(ResizeMethod::Squish),
                    "crop" => Some(ResizeMethod::Crop),
                    "pad" => Some(ResizeMethod::Pad),
                    _ => None,
                },
                "squish, crop, pad",
            )?;
            let pad = parse(
                "pad_mode",
                pad_mode,
                |s| match s {
                    "reflection" => Some(PadMode::Reflection),
                    "zeros" => Some(PadMode::Zeros),
                    _ => None,
                },
                "reflection, zeros",
            )?;
            if weights.is_some() && random_init {
                return Err(PyValueError::new_err(
                    "weights and random_init exclude each other",
                ));
            }
            let pretrained = match (weights, random_init) {
                (_, true) => Pretrained::Random,
                (Some(w), false) => Pretrained::File(w),
                (None, false) => Pretrained::Known,
            };
            Plan::new(
                data,
                out,
                force,
                Settings {
                    arch,
                    pretrained,
                    cfg: DataConfig {
                        size,
                        method: resize,
                        pad,
                        bs,
                        valid_pct,
                        seed,
                        strict,
                    },
                    ft: FineTune {
                        epochs,
                        base_lr,
                        freeze_epochs,
                        lr_mult,
                        pct_start,
                        div,
                    },
                    wd,
                    label_smoothing,
                    augment,
                },
            )
        }
    }
    .map_err(run_err)?;
    // Training runs on its own thread while this one waits without the GIL, checking for Ctrl-C
    // (Python's handler only runs on the main thread, between calls into Python).
    let stop = Arc::new(AtomicBool::new(false));
    let stop_worker = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("finetune-train".into())
        .spawn(move || {
            let r = (|| {
                let mut log = |m: &str| {
                    if !quiet {
                        py_print(m)
                    }
                };
                let mut fb = Feedback {
                    bar: &indicatif::ProgressBar::hidden(),
                    download_bar: false,
                    log: &mut log,
                };
                let mut session = Session::start(plan, rt, &mut fb)?;
                session.learn.stop = stop_worker;
                session.run(&mut PyReport { quiet })
            })();
            let _ = tx.send(());
            r
        })
        .map_err(fail)?;
    let rx = Mutex::new(rx);
    let mut interrupt: Option<PyErr> = None;
    loop {
        let waited = py.detach(|| {
            rx.lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv_timeout(Duration::from_millis(100))
        });
        match waited {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupt.is_none() {
                    if let Err(e) = py.check_signals() {
                        stop.store(true, Ordering::SeqCst);
                        interrupt = Some(e);
                    }
                }
            }
            _ => break,
        }
    }
    let outcome = py
        .detach(|| worker.join())
        .map_err(|_| PyRuntimeError::new_err("training failed (a panic; see stderr)"))?
        .map_err(run_err)?;
    if let Some(e) = interrupt {
        if e.is_instance_of::<PyKeyboardInterrupt>(py) {
            let dir = outcome.out.display();
            let how = if outcome.resumable {
                format!("; continue it with finetune.train(resume='{dir}')")
            } else {
                String::new()
            };
            return Err(PyKeyboardInterrupt::new_err(format!(
                "training stopped; the bundle in {dir} was saved{how}"
            )));
        }
        return Err(e);
    }
    outcome_dict(py, &outcome)
}

/// finetune from Python: load bundles, predict on files, pixels or encoded bytes, train.
#[pymodule]
mod _finetune {
    #[pymodule_export]
    use super::{_read_image, load, train, FinetuneError, Model};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        // As the CLI's --max-file-mb: the largest image file read, from the same variable.
        if let Some(mb) = std::env::var("FINETUNE_MAX_FILE_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            finetune::data::files::set_max_file_bytes(mb.saturating_mul(1024 * 1024));
        }
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add(
            "IMAGE_EXTENSIONS",
            finetune::data::items::IMAGE_EXTS.to_vec(),
        )?;
        Ok(())
    }
}
