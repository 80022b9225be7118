//! `finetune.train`: the CLI's `train` through the same `Plan`/`Session`, on its own thread while
//! Python waits without the GIL and still sees Ctrl-C.

use crate::errors::*;
use finetune::bundle::{Mix, Monitor, Tracking};
use finetune::data::augment::AugConfig;
use finetune::data::{DataConfig, PadMode, ResizeMethod, Size};
use finetune::device::select as parse_device;
use finetune::model::ArchSpec;
use finetune::train::distributed::DistOptions;
use finetune::train::report::{table_header_for, table_row};
use finetune::train::run::{Outcome, Pretrained, Start};
use finetune::train::{launch, EpochRow, FineTune, Recipe, Report, Request};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prints fastai's epoch table through Python's `print` (so notebooks show it), and the log lines.
pub(crate) struct PyReport {
    quiet: bool,
    multi_label: bool,
}

pub(crate) fn py_print(line: &str) {
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

/// Loading data from Python: no bar (a notebook would show its redraws), the warnings on stderr
/// as the CLI prints them.
struct PyProgress;

impl finetune::data::Progress for PyProgress {
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn note(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

impl Report for PyReport {
    fn data_progress(&mut self) -> Box<dyn finetune::data::Progress> {
        Box::new(PyProgress)
    }
    fn log(&mut self, line: &str) {
        if !self.quiet {
            py_print(line)
        }
    }
    fn task(&mut self, multi_label: bool) {
        self.multi_label = multi_label;
    }
    fn begin_fit(&mut self, phase: &str, _n: usize) {
        if !self.quiet {
            py_print(&format!("{phase}:"));
        }
        py_print(&table_header_for(self.multi_label));
    }
    fn end_epoch(&mut self, r: &EpochRow) {
        py_print(&table_row(r));
    }
    fn message(&mut self, msg: &str) {
        if !self.quiet || msg.starts_with("warning") {
            py_print(msg);
        }
    }
    fn notice(&mut self, msg: &str) {
        py_print(msg);
    }
}

pub(crate) fn size_of(obj: &Bound<'_, PyAny>) -> PyResult<Size> {
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

pub(crate) fn row_dict<'py>(py: Python<'py>, r: &EpochRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("phase", &r.phase)?;
    d.set_item("epoch", r.epoch)?;
    d.set_item("train_loss", r.train_loss)?;
    d.set_item("valid_loss", r.valid_loss)?;
    d.set_item("error_rate", r.error_rate)?;
    d.set_item("accuracy", r.accuracy)?;
    if let Some(f1) = r.f1 {
        // Multi-label: `accuracy` is accuracy_multi, `f1` the samples-averaged F1.
        d.set_item("f1", f1)?;
    }
    d.set_item("seconds", r.seconds)?;
    d.set_item("best", r.best)?;
    Ok(d)
}

pub(crate) fn outcome_dict<'py>(py: Python<'py>, o: &Outcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    // The row whose weights the bundle holds (under save_best, the kept epoch).
    let last = finetune::bundle::kept_row(&o.rows);
    for key in ["train_loss", "valid_loss", "error_rate", "accuracy"] {
        let v = last.map(|r| match key {
            "train_loss" => r.train_loss,
            "valid_loss" => r.valid_loss,
            "error_rate" => r.error_rate,
            _ => r.accuracy,
        });
        d.set_item(key, v)?;
    }
    if let Some(f1) = last.and_then(|r| r.f1) {
        d.set_item("f1", f1)?;
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

const FASTAI: Recipe = Recipe::FASTAI;

/// fastai's `vision_learner(dls, arch).fine_tune(epochs)` on a folder of class folders, saving a
/// bundle to `out` (default `models/<data folder name>`) exactly as `finetune train` does; the
/// options are that command's. Returns the final metrics (the last row of the bundle's
/// metrics.csv) and every epoch's row under `history`. `resume=DIR` continues an interrupted
/// bundle. Ctrl-C stops after the current batch, saves a resumable bundle and raises
/// KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (
    data=None, *, out=None, arch="resnet18", epochs=FASTAI.fine_tune.epochs,
    freeze_epochs=FASTAI.fine_tune.freeze_epochs, base_lr=FASTAI.fine_tune.base_lr,
    lr_mult=FASTAI.fine_tune.lr_mult, pct_start=FASTAI.fine_tune.pct_start,
    div=FASTAI.fine_tune.div, wd=FASTAI.wd, label_smoothing=FASTAI.label_smoothing, augment=None,
    mixup=None, cutmix=None, save_best=None, early_stop=None, labels=None, fn_col="0",
    label_col="1", valid_col=None, label_delim=None, size=None, resize="squish", pad_mode="reflection", bs=64, valid_pct=0.2, seed=42,
    strict=false, weights=None, random_init=false, force=false, resume=None, device="auto",
    precision="auto", quiet=false, max_file_mb=None, dist_backend="auto", dist_timeout=300,
    unknown=None, class_weights=None, balanced=FASTAI.balanced, tensorboard=None, mlflow=None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn train<'py>(
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
    augment: Option<&Bound<'py, PyAny>>,
    mixup: Option<f64>,
    cutmix: Option<f64>,
    save_best: Option<&Bound<'py, PyAny>>,
    early_stop: Option<usize>,
    labels: Option<PathBuf>,
    fn_col: &str,
    label_col: &str,
    valid_col: Option<String>,
    label_delim: Option<String>,
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
    max_file_mb: Option<u64>,
    dist_backend: &str,
    dist_timeout: u64,
    unknown: Option<&Bound<'py, PyAny>>,
    class_weights: Option<&Bound<'py, PyAny>>,
    balanced: bool,
    tensorboard: Option<PathBuf>,
    mlflow: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    // `unknown=`: the acceptance share of the "unknown" answer fitted after training, or "off".
    let accept =
        crate::model::accept_of(unknown)?.unwrap_or(Some(finetune::infer::trust::DEFAULT_ACCEPT));
    let dev = parse_device(device).map_err(device_err)?;
    let precision = precision
        .parse::<finetune::model::PrecisionChoice>()
        .map_err(PyValueError::new_err)?;
    // This call's choice only: a later load() in the same process takes its own defaults.
    let rt = finetune::model::Runtime {
        precision,
        ..finetune::model::Runtime::from(dev)
    };
    let cap = crate::model::max_file_bytes(max_file_mb);
    let start = match resume {
        Some(dir) => Start::Resume { dir, data },
        None => {
            let Some(data) = data else {
                return Err(PyTypeError::new_err(
                    "train() needs a data folder (or resume=DIR)",
                ));
            };
            let arch = arch
                .parse::<ArchSpec>()
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let size = match size {
                Some(s) => size_of(s)?,
                None => DataConfig::default().size,
            };
            let resize = resize
                .parse::<ResizeMethod>()
                .map_err(PyValueError::new_err)?;
            let pad = pad_mode.parse::<PadMode>().map_err(PyValueError::new_err)?;
            let pretrained = Pretrained::choose(weights, random_init).map_err(run_err)?;
            let (augment, aug) = aug_of(augment)?;
            let mix = match (mixup, cutmix) {
                (Some(_), Some(_)) => {
                    return Err(PyValueError::new_err(
                        "mixup and cutmix exclude each other; pass one of them",
                    ))
                }
                (Some(a), None) => Some(Mix::Mixup(a)),
                (None, Some(a)) => Some(Mix::Cutmix(a)),
                (None, None) => None,
            };
            // save_best: True (valid_loss) or a monitor's name, as the CLI's --save-best [MONITOR].
            let save_best: Option<Monitor> = match save_best.filter(|o| !o.is_none()) {
                None => None,
                Some(o) => match o.extract::<bool>() {
                    Ok(true) => Some(Monitor::ValidLoss),
                    Ok(false) => None,
                    Err(_) => Some(
                        o.extract::<String>()?
                            .parse()
                            .map_err(PyValueError::new_err)?,
                    ),
                },
            };
            let tracking = Tracking::of(save_best, early_stop);
            Start::New {
                data,
                out,
                force,
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
                    max_file_bytes: cap,
                    labels: labels.map(|p| finetune::data::labels::LabelsCsv {
                        path: p,
                        fn_col: fn_col.to_string(),
                        label_col: label_col.to_string(),
                        valid_col,
                        label_delim,
                    }),
                },
                recipe: Recipe {
                    fine_tune: FineTune {
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
                    aug: augment.then_some(aug),
                    mix,
                    tracking,
                    class_weights: class_weights_of(class_weights)?,
                    balanced,
                },
            }
        }
    };
    let req = Request {
        start,
        cache: Some(finetune::data::CacheConfig::new(
            finetune::data::CacheConfig::default_dir(),
        )),
        max_file_bytes: cap,
        runtime: rt,
        dist: DistOptions {
            backend: dist_backend.to_string(),
            timeout: Duration::from_secs(dist_timeout.max(1)),
        },
        stop: Arc::new(AtomicBool::new(false)),
        tensorboard,
        mlflow,
    };
    // Training runs on its own thread while this one waits without the GIL, checking for Ctrl-C
    // (Python's handler only runs on the main thread, between calls into Python).
    let stop = req.stop.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("finetune-train".into())
        .spawn(move || {
            let r = launch(
                req,
                &mut PyReport {
                    quiet,
                    multi_label: false,
                },
            );
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
    let d = outcome_dict(py, &outcome)?;
    if outcome.leader && !outcome.interrupted {
        // As at the end of `finetune train`: the temperature and the "unknown" answer.
        let opts = finetune::infer::trust::FitOptions {
            accept,
            max_file_bytes: cap,
            after_training: true,
            ..Default::default()
        };
        let data = outcome.info.data.as_ref().map(|d| d.source.clone());
        if let Some(data) = data {
            let fitted = py
                .detach(|| finetune::infer::trust::calibrate(&outcome.out, &data, rt, &opts))
                .map_err(fail)?;
            let c = fitted.calibration;
            if !quiet {
                py_print(&format!(
                    "calibrated: temperature {:.3} (valid ECE {:.4} -> {:.4}); unknown: {}",
                    c.temperature,
                    c.ece_before,
                    c.ece_after,
                    fitted.unknown.as_ref().map_or("off", |u| u.score.name())
                ));
            }
            let text = serde_json::to_string(&c).map_err(fail)?;
            d.set_item(
                "calibration",
                py.import("json")?.call_method1("loads", (text,))?,
            )?;
        }
    }
    Ok(d)
}

/// `augment=`: `False`, `True` (fastai's defaults) or a dict overriding `max_warp`, `max_rotate`,
/// `max_zoom`, `max_lighting`, `p_affine`, `p_lighting` (the CLI's `--max-warp`, ...).
fn aug_of(obj: Option<&Bound<'_, PyAny>>) -> PyResult<(bool, AugConfig)> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok((false, AugConfig::default()));
    };
    if let Ok(on) = obj.extract::<bool>() {
        return Ok((on, AugConfig::default()));
    }
    let d = obj.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err("augment: True, False or a dict of aug_transforms magnitudes")
    })?;
    let mut c = AugConfig::default();
    for (k, v) in d.iter() {
        let v: f64 = v.extract()?;
        match k.extract::<String>()?.as_str() {
            "max_warp" => c.max_warp = v,
            "max_rotate" => c.max_rotate = v,
            "max_zoom" => c.max_zoom = v,
            "max_lighting" => c.max_lighting = v,
            "p_affine" => c.p_affine = v,
            "p_lighting" => c.p_lighting = v,
            other => {
                return Err(PyValueError::new_err(format!(
                    "augment: unknown key `{other}`; use max_warp, max_rotate, max_zoom, max_lighting, p_affine, p_lighting"
                )))
            }
        }
    }
    Ok((true, c))
}

/// `class_weights=`: `"auto"`, a CSV file's path (as the CLI's `--class-weights`), or a dict of
/// class name to weight.
fn class_weights_of(
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<finetune::bundle::ClassWeights>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = std::collections::BTreeMap::new();
        for (k, v) in d.iter() {
            m.insert(k.extract::<String>()?, v.extract::<f64>()?);
        }
        return Ok(Some(finetune::bundle::ClassWeights::Given(m)));
    }
    let s: String = obj
        .extract::<PathBuf>()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|_| {
            PyTypeError::new_err("class_weights: \"auto\", a CSV path or a dict of class -> weight")
        })?;
    finetune::bundle::ClassWeights::parse(&s)
        .map(Some)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}
