//! `finetune.load` and `Model`: a bundle loaded once, predictions on files, pixels or encoded bytes
//! with the GIL released.

use crate::errors::*;
use finetune::bundle::{self, Bundle};
use finetune::data::decode::{decode_bytes, decode_file};
use finetune::device::select as parse_device;
use finetune::infer::predict::{decide, predict_with, Answer};
use finetune::infer::tta::Tta;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::path::PathBuf;
use std::sync::Mutex;

/// Results as Python lists of `(label, score)` (with `details`, dicts that add `unknown` and
/// `unknown_score`); a failed item raises, or with `return_exceptions` stands in the list as its
/// exception (as `asyncio.gather` does).
pub(crate) fn to_python(
    py: Python<'_>,
    results: Vec<Ranked>,
    return_exceptions: bool,
    details: bool,
) -> PyResult<Py<PyList>> {
    let out = PyList::empty(py);
    for r in results {
        match r {
            Ok(a) if details => {
                let d = pyo3::types::PyDict::new(py);
                d.set_item("predictions", PyList::new(py, a.top)?)?;
                d.set_item("unknown", a.unknown)?;
                d.set_item("unknown_score", a.score)?;
                out.append(d)?
            }
            Ok(a) => out.append(PyList::new(py, a.top)?)?,
            Err(e) if return_exceptions => out.append(e.to_py().into_value(py))?,
            Err(e) => return Err(e.to_py()),
        }
    }
    Ok(out.unbind())
}

/// A trained model bundle, loaded once and used for any number of predictions.
#[pyclass(module = "finetune", name = "Model", frozen)]
pub(crate) struct Model {
    /// One forward pass at a time; the lock also makes the model shareable between Python threads.
    bundle: Mutex<Bundle>,
    path: PathBuf,
    device: tch::Device,
    /// The largest image file `predict` reads (`max_file_mb`, else `FINETUNE_MAX_FILE_MB`).
    max_file_bytes: u64,
}

impl Model {
    fn classes_of(&self) -> Vec<String> {
        self.lock().info.classes.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bundle> {
        self.bundle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes with `decode` and ranks every item (GIL released): the best `top_k` first, or for a
    /// multi-label model every label above `thresh`.
    fn rank<T: Sync + Send>(
        &self,
        py: Python<'_>,
        items: Vec<T>,
        (top_k, thresh): (usize, f64),
        tta: Option<Tta>,
        decode: impl Fn(&T) -> Result<image::RgbImage, ItemError> + Sync + Send,
    ) -> Vec<Ranked> {
        py.detach(|| {
            let b = self.lock();
            let classes = &b.info.classes;
            let k = top_k.clamp(1, classes.len());
            let task = b.info.task;
            let mut out = Vec::with_capacity(items.len());
            predict_with(
                &b,
                &items,
                decode,
                tta.as_ref(),
                |_, r: Result<Answer, _>| {
                    out.push(r.map(|a| {
                        Answered {
                            top: decide(&a.probs, task, k, thresh)
                                .into_iter()
                                .map(|(i, s)| (classes[i].clone(), s))
                                .collect(),
                            score: a.score.filter(|_| b.accept.is_some()),
                            unknown: a.unknown,
                        }
                    }))
                },
            );
            out
        })
    }
}

/// One image as Python hands it over: a path, an encoded file's bytes, or decoded pixels.
enum Item {
    Path(PathBuf),
    Bytes(PathBuf, Vec<u8>),
    Pixels(image::RgbImage),
}

impl Item {
    /// `what` names the argument in errors (`items[3]`).
    fn of(py: Python<'_>, it: &Bound<'_, PyAny>, what: &str) -> PyResult<Item> {
        Ok(if let Ok(p) = it.extract::<PathBuf>() {
            Item::Path(p)
        } else if it.is_instance_of::<pyo3::types::PyBytes>() {
            Item::Bytes(
                PathBuf::from(format!("<bytes {what}>")),
                it.extract::<Vec<u8>>()?,
            )
        } else {
            Item::Pixels(rgb_of(py, it, what)?)
        })
    }

    fn image(&self, cap: u64) -> Result<image::RgbImage, ItemError> {
        Ok(match self {
            Item::Path(p) if !p.exists() => return Err(ItemError::Missing(p.clone())),
            Item::Path(p) => decode_file(p, cap).map_err(ItemError::Decode)?,
            Item::Bytes(n, bytes) => decode_bytes(n, bytes).map_err(ItemError::Decode)?,
            Item::Pixels(img) => img.clone(),
        })
    }
}

/// `obj` as one RGB image: any object with a uint8 buffer of shape (H, W, 3), e.g. a numpy array
/// (others go through `numpy.asarray` first, so PIL images work too).
pub(crate) fn rgb_of(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<image::RgbImage> {
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
    /// probabilities; for a multi-label model every label whose sigmoid probability is above
    /// `thresh` (fastai's 0.5 by default), best first. An unreadable file raises (`FinetuneError`, or `FileNotFoundError`) naming it;
    /// with `return_exceptions=True` its place in the list holds that exception instead.
    /// `tta=True` (or a dict of `n`, `beta`, `seed`) predicts with test-time augmentation, as
    /// `finetune predict --tta` (fastai's `Learner.tta`).
    /// `details=True` gives a dict per image instead: `predictions` (the list above), `unknown`
    /// (the image is none of the classes, as far as the model can tell) and `unknown_score`
    /// (higher = more like the training data; `None` for a model without the unknown answer).
    #[pyo3(signature = (paths, top_k=1, return_exceptions=false, tta=None, thresh=0.5, details=false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments, each one a parameter
    fn predict(
        &self,
        py: Python<'_>,
        paths: Vec<PathBuf>,
        top_k: usize,
        return_exceptions: bool,
        tta: Option<&Bound<'_, PyAny>>,
        thresh: f64,
        details: bool,
    ) -> PyResult<Py<PyList>> {
        let tta = tta_of(tta)?;
        finetune::infer::predict::check_thresh(thresh).map_err(PyValueError::new_err)?;
        let r = self.rank(py, paths, (top_k, thresh), tta, |p| {
            if !p.exists() {
                return Err(ItemError::Missing(p.clone()));
            }
            decode_file(p, self.max_file_bytes).map_err(ItemError::Decode)
        });
        to_python(py, r, return_exceptions, details)
    }

    /// Like `predict`, for decoded pixels: a uint8 array of shape (N, H, W, 3), or a list of
    /// (H, W, 3) arrays of any sizes. They get the same resize and normalisation as files.
    #[pyo3(signature = (arrays, top_k=1, tta=None, thresh=0.5, details=false))]
    fn predict_arrays(
        &self,
        py: Python<'_>,
        arrays: &Bound<'_, PyAny>,
        top_k: usize,
        tta: Option<&Bound<'_, PyAny>>,
        thresh: f64,
        details: bool,
    ) -> PyResult<Py<PyList>> {
        let tta = tta_of(tta)?;
        finetune::infer::predict::check_thresh(thresh).map_err(PyValueError::new_err)?;
        let images = images_of(py, arrays)?;
        let r = self.rank(py, images, (top_k, thresh), tta, |img| Ok(img.clone()));
        to_python(py, r, false, details)
    }

    /// Embeddings (the head's input: the body's concat-pooled features, what `finetune embed`
    /// writes) of image files, decoded pixels or encoded bytes, as a float32 numpy array of shape
    /// (N, D) in input order. Each item is a path (str or os.PathLike), bytes of an encoded
    /// image, or uint8 RGB pixels (H, W, 3); an unreadable one raises naming it.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut list = Vec::new();
        for (i, it) in items.try_iter()?.enumerate() {
            list.push(Item::of(py, &it?, &format!("items[{i}]"))?);
        }
        let cap = self.max_file_bytes;
        let rows = py.detach(|| {
            let b = self.lock();
            let info = &b.info;
            let mut out: Vec<Result<Vec<f32>, ItemError>> = Vec::with_capacity(list.len());
            finetune::infer::predict::map_batches(
                &list,
                |it| Ok(finetune::infer::predict::preprocess(&it.image(cap)?, info)),
                |imgs| {
                    let f = finetune::infer::predict::features(&b, imgs);
                    finetune::infer::trust::fit::rows(&f.pooled)
                },
                |_, r| out.push(r),
            );
            out
        });
        let d = self.lock().info.arch.head_inputs() as usize;
        let mut flat = Vec::with_capacity(rows.len() * d);
        for r in &rows {
            match r {
                Ok(v) => flat.extend_from_slice(v),
                Err(e) => return Err(e.to_py()),
            }
        }
        let np = py.import("numpy")?;
        let arr = np.call_method1("array", (flat,))?;
        let arr = arr.call_method1("astype", ("float32",))?;
        arr.call_method1("reshape", ((rows.len(), d),))
    }

    /// The Grad-CAM heatmap of one image (a path, encoded bytes or uint8 RGB pixels (H, W, 3)):
    /// a float32 array (H, W) in [0, 1] at the model's input size, over the image as the model
    /// sees it (its resize and crop). `label` names the class to explain (a name or an index;
    /// the predicted class by default; Python reserves `class`); with `overlay=True`, the
    /// heatmap drawn over that image as uint8 RGB (H, W, 3) instead, as `predict --cam` writes.
    #[pyo3(signature = (image, label=None, overlay=false))]
    fn cam<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        label: Option<&Bound<'py, PyAny>>,
        overlay: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let item = Item::of(py, image, "image")?;
        let want = match label {
            None => None,
            Some(l) => Some(match l.extract::<usize>() {
                Ok(i) => i.to_string(),
                Err(_) => l.extract::<String>().map_err(|_| {
                    PyTypeError::new_err("label: a class name (str) or index (int)")
                })?,
            }),
        };
        let cap = self.max_file_bytes;
        let (cam, seen) = py.detach(|| {
            let b = self.lock();
            let class = want
                .map(|w| finetune::infer::cam::class_index(&b.info.classes, &w))
                .transpose()
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let img = finetune::infer::predict::preprocess(
                &item.image(cap).map_err(|e| e.to_py())?,
                &b.info,
            );
            let cams = finetune::infer::cam::cams(&b, &[&img], &[class])
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let cam = cams
                .into_iter()
                .next()
                .ok_or_else(|| PyValueError::new_err("no heatmap"))?;
            Ok::<_, PyErr>((cam, img))
        })?;
        let np = py.import("numpy")?;
        let (h, w) = (cam.height as usize, cam.width as usize);
        if overlay {
            // Vec<u8> becomes Python bytes, which numpy reads as a buffer (copied: writable).
            let raw = pyo3::types::PyBytes::new(py, &cam.overlay(&seen).into_raw());
            np.call_method1("frombuffer", (raw, "uint8"))?
                .call_method0("copy")?
                .call_method1("reshape", ((h, w, 3),))
        } else {
            let arr = np.call_method1("array", (cam.heat,))?;
            arr.call_method1("astype", ("float32",))?
                .call_method1("reshape", ((h, w),))
        }
    }

    /// Like `predict`, for encoded image files in memory (bytes of a JPEG, PNG, ...): decoding and
    /// resizing run in Rust on all cores. `names` (e.g. the source paths) name the images in
    /// errors. Ray's batch predictor calls this.
    #[pyo3(signature = (blobs, top_k=1, return_exceptions=false, names=None, tta=None, thresh=0.5, details=false))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments, each one a parameter
    fn predict_encoded(
        &self,
        py: Python<'_>,
        blobs: &Bound<'_, PyAny>,
        top_k: usize,
        return_exceptions: bool,
        names: Option<Vec<String>>,
        tta: Option<&Bound<'_, PyAny>>,
        thresh: f64,
        details: bool,
    ) -> PyResult<Py<PyList>> {
        let tta = tta_of(tta)?;
        finetune::infer::predict::check_thresh(thresh).map_err(PyValueError::new_err)?;
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
        let r = self.rank(py, items, (top_k, thresh), tta, |(name, bytes)| {
            decode_bytes(name, bytes).map_err(ItemError::Decode)
        });
        to_python(py, r, return_exceptions, details)
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
/// present), cpu, cuda or cuda:N. `max_file_mb`: the largest image file `predict` reads (default:
/// `FINETUNE_MAX_FILE_MB`, else 64, as the CLI's `--max-file-mb`). `raw_probs=True` answers with
/// the raw softmax instead of the calibrated probabilities (the CLI's `--raw-probs`); `unknown`:
/// the share of validation images the "unknown" threshold accepts, or `"off"` (default: the
/// bundle's own, as the CLI's `--unknown`).
#[pyfunction]
#[pyo3(signature = (path, device="auto", max_file_mb=None, raw_probs=false, unknown=None))]
pub(crate) fn load(
    py: Python<'_>,
    path: PathBuf,
    device: &str,
    max_file_mb: Option<u64>,
    raw_probs: bool,
    unknown: Option<&Bound<'_, PyAny>>,
) -> PyResult<Model> {
    let dev = parse_device(device).map_err(device_err)?;
    let accept = accept_of(unknown)?;
    let mut b = py
        .detach(|| bundle::load(&path, dev))
        .map_err(|e| bundle_err(e, &path))?;
    b.calibrated = !raw_probs;
    if let Some(a) = accept {
        b.set_accept(a);
    }
    Ok(Model {
        bundle: Mutex::new(b),
        path,
        device: dev,
        max_file_bytes: max_file_bytes(max_file_mb),
    })
}

/// The pixels `predict` sees for a file before resizing: decoded by finetune's decoder (format
/// sniffed from content, EXIF orientation applied, alpha on white) as (bytes, height, width).
#[pyfunction]
pub(crate) fn _read_image(py: Python<'_>, path: PathBuf) -> PyResult<(Vec<u8>, u32, u32)> {
    if !path.exists() {
        return Err(ItemError::Missing(path).to_py());
    }
    let cap = max_file_bytes(None);
    let img = py.detach(|| decode_file(&path, cap)).map_err(fail)?;
    let (w, h) = img.dimensions();
    Ok((img.into_raw(), h, w))
}

/// A call's `max_file_mb`, else the environment's (`FINETUNE_MAX_FILE_MB`), else the default.
pub(crate) fn max_file_bytes(max_file_mb: Option<u64>) -> u64 {
    max_file_mb.map_or_else(
        finetune::data::files::cap_from_env,
        finetune::data::files::mb_cap,
    )
}

/// `tta=`: `None`/`False` (none), `True` (fastai's defaults), or a dict overriding `n`, `beta`,
/// `seed` — checked as the CLI's `--tta-n`/`--tta-beta`.
fn tta_of(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Tta>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if let Ok(on) = obj.extract::<bool>() {
        return Ok(on.then(Tta::default));
    }
    let d = obj
        .cast::<pyo3::types::PyDict>()
        .map_err(|_| PyTypeError::new_err("tta: True, False or a dict of n, beta, seed"))?;
    let mut t = Tta::default();
    for (k, v) in d.iter() {
        match k.extract::<String>()?.as_str() {
            "n" => t.n = v.extract()?,
            "beta" => t.beta = v.extract()?,
            "seed" => t.seed = v.extract()?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "tta: unknown key `{other}`; use n, beta, seed"
                )))
            }
        }
    }
    t.validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(Some(t))
}

/// How many forward passes ran in the inference plan (BatchNorm folded into the convolutions) in
/// this process: every prediction of a loaded model does (a diagnostic; `finetune serve` reports
/// the same as `finetune_inference_plan_passes_total`).
#[pyfunction]
pub fn inference_plan_passes() -> usize {
    finetune::model::plan::passes()
}

/// `arrays` as images: a uint8 array of shape (N, H, W, 3), or a list of (H, W, 3) arrays.
fn images_of(py: Python<'_>, arrays: &Bound<'_, PyAny>) -> PyResult<Vec<image::RgbImage>> {
    {
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
        Ok(images)
    }
}

/// `unknown=`: `None` (the default), a share like `0.95`, or `"off"` (`Some(None)`), parsed as the
/// CLI's `--unknown`.
pub(crate) fn accept_of(unknown: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Option<f64>>> {
    let Some(u) = unknown.filter(|u| !u.is_none()) else {
        return Ok(None);
    };
    let text = match u.extract::<f64>() {
        Ok(v) => v.to_string(),
        Err(_) => u.str()?.to_string(),
    };
    let a: finetune::infer::trust::Accept = text
        .parse()
        .map_err(|e: String| PyValueError::new_err(format!("unknown: {e}")))?;
    Ok(Some(a.0))
}
