//! `--tensorboard DIR`: TensorBoard event files, written as training runs — per step the loss and
//! learning rate, per epoch every column of the table and the confusion matrix (an image), the
//! show-batch grid (an image), and the run's settings as hparams (TensorBoard's HParams dashboard).
//!
//! The format is TensorFlow's: a file of TFRecords (length, masked CRC-32C of it, the bytes, their
//! masked CRC-32C), each an `Event` protobuf. Five message types are written here by hand, with a
//! dozen lines of protobuf wire encoding, rather than through a protobuf toolchain or the
//! tensorboard crates (unmaintained, on protobuf 2): the messages are fixed and tiny, and the
//! tests read the files back with TensorBoard's own reader.

use super::callback::{BatchEnd, Callback, EpochEnd};
pub use super::error::TensorBoardError;
use super::learner::Learner;
use super::report::Report;
use image::RgbImage;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Protobuf wire encoding: only what the messages below use.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, ((field as u64) << 3) | wire as u64);
    }
    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }
    pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(out: &mut Vec<u8>, field: u32, v: f32) {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        key(out, field, 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// A setting's value in the HParams dashboard (`google.protobuf.Value`).
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// One `Summary.Value`, encoded.
fn scalar_value(tag: &str, v: f32) -> Vec<u8> {
    let mut out = Vec::new();
    pb::bytes(&mut out, 1, tag.as_bytes());
    pb::float(&mut out, 2, v);
    out
}

fn image_value(tag: &str, img: &RgbImage) -> Vec<u8> {
    let mut png = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB buffer cannot fail short of running out of memory.
    let _ = img.write_to(&mut png, image::ImageFormat::Png);
    let mut im = Vec::new();
    pb::uint(&mut im, 1, img.height() as u64);
    pb::uint(&mut im, 2, img.width() as u64);
    pb::uint(&mut im, 3, 3); // RGB
    pb::bytes(&mut im, 4, png.get_ref());
    let mut out = Vec::new();
    pb::bytes(&mut out, 1, tag.as_bytes());
    pb::bytes(&mut out, 4, &im);
    out
}

/// The HParams plugin's `session_start_info` summary (what `hparams.summary.session_start_pb`
/// writes): the settings, and a `SummaryMetadata` naming the plugin.
fn hparams_value(hparams: &[(String, HParam)], start: f64) -> Vec<u8> {
    let mut info = Vec::new();
    for (k, v) in hparams {
        let mut value = Vec::new();
        match v {
            HParam::Number(x) => pb::double(&mut value, 2, *x),
            HParam::Text(s) => pb::bytes(&mut value, 3, s.as_bytes()),
            HParam::Bool(b) => pb::uint(&mut value, 4, *b as u64),
        }
        let mut entry = Vec::new();
        pb::bytes(&mut entry, 1, k.as_bytes());
        pb::bytes(&mut entry, 2, &value);
        pb::bytes(&mut info, 1, &entry);
    }
    pb::double(&mut info, 5, start);
    let mut plugin = Vec::new();
    pb::uint(&mut plugin, 1, 0); // HParamsPluginData.version
    pb::bytes(&mut plugin, 3, &info);
    let mut data = Vec::new();
    pb::bytes(&mut data, 1, b"hparams");
    pb::bytes(&mut data, 2, &plugin);
    let mut meta = Vec::new();
    pb::bytes(&mut meta, 1, &data);
    let mut out = Vec::new();
    pb::bytes(&mut out, 1, b"_hparams_/session_start_info");
    pb::bytes(&mut out, 9, &meta);
    out
}

/// An event file being written.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (created), named as TensorFlow names them so TensorBoard finds it.
    pub fn create(dir: &Path) -> Result<EventWriter, TensorBoardError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TensorBoardError { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.finetune",
            now() as u64,
            std::process::id()
        ));
        let file = std::fs::File::create(&path).map_err(err(&path))?;
        let mut w = EventWriter {
            file: std::io::BufWriter::new(file),
            path,
        };
        let mut ev = Vec::new();
        pb::double(&mut ev, 1, now());
        pb::bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<(), TensorBoardError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .map_err(|source| TensorBoardError {
                path: self.path.clone(),
                source,
            })
    }

    /// One `Event` at `step` holding the given `Summary.Value`s.
    fn summary(&mut self, step: usize, values: &[Vec<u8>]) -> Result<(), TensorBoardError> {
        let mut summary = Vec::new();
        for v in values {
            pb::bytes(&mut summary, 1, v);
        }
        let mut ev = Vec::new();
        pb::double(&mut ev, 1, now());
        pb::uint(&mut ev, 2, step as u64);
        pb::bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<(), TensorBoardError> {
        let v: Vec<Vec<u8>> = values
            .iter()
            .map(|(t, x)| scalar_value(t, *x as f32))
            .collect();
        self.summary(step, &v)
    }

    pub fn image(
        &mut self,
        step: usize,
        tag: &str,
        img: &RgbImage,
    ) -> Result<(), TensorBoardError> {
        self.summary(step, &[image_value(tag, img)])
    }

    pub fn hparams(&mut self, hparams: &[(String, HParam)]) -> Result<(), TensorBoardError> {
        self.summary(0, &[hparams_value(hparams, now())])
    }

    /// Written through to the file, so TensorBoard shows the run as it goes.
    pub fn flush(&mut self) -> Result<(), TensorBoardError> {
        self.file.flush().map_err(|source| TensorBoardError {
            path: self.path.clone(),
            source,
        })
    }
}

/// The callback: scalars per step, scalars and the confusion matrix per epoch. A write
/// that fails is warned about once and tracking stops; training goes on.
pub struct TensorBoard {
    w: Option<EventWriter>,
    /// The last step seen: an epoch's scalars are logged at it, so both share one x-axis.
    step: usize,
}

impl TensorBoard {
    /// Starts the file with the settings and the first training batch as the network sees it.
    pub fn start(
        dir: &Path,
        hparams: &[(String, HParam)],
        show_batch: Option<&RgbImage>,
    ) -> Result<TensorBoard, TensorBoardError> {
        let mut w = EventWriter::create(dir)?;
        w.hparams(hparams)?;
        if let Some(img) = show_batch {
            w.image(0, "show_batch", img)?;
        }
        w.flush()?;
        Ok(TensorBoard {
            w: Some(w),
            step: 0,
        })
    }

    fn write(
        &mut self,
        report: Option<&mut dyn Report>,
        f: impl FnOnce(&mut EventWriter) -> Result<(), TensorBoardError>,
    ) {
        let Some(w) = self.w.as_mut() else { return };
        if let Err(e) = f(w) {
            if let Some(r) = report {
                r.message(&format!(
                    "warning: {e}; TensorBoard logging stops, training goes on"
                ));
            }
            self.w = None;
        }
    }
}

impl Callback<Learner> for TensorBoard {
    fn after_batch(&mut self, b: &BatchEnd) {
        self.step = b.step;
        self.write(None, |w| {
            w.scalars(b.step, &[("train/loss", b.loss), ("train/lr", b.lr)])
        });
    }

    fn after_epoch(&mut self, learn: &mut Learner, _end: &EpochEnd, report: &mut dyn Report) {
        let Some(row) = learn.rows.last() else { return };
        let mut v = vec![
            ("epoch/train_loss", row.train_loss),
            ("epoch/valid_loss", row.valid_loss),
            ("epoch/error_rate", row.error_rate),
            ("epoch/accuracy", row.accuracy),
            ("epoch/seconds", row.seconds),
        ];
        if let Some(f1) = row.f1 {
            v.push(("epoch/f1", f1));
        }
        // The epoch's own validation counted it: no extra pass.
        let confusion = learn
            .confusion
            .as_ref()
            .map(|m| super::show_batch::confusion_image(&learn.dls.classes, m));
        let step = self.step;
        self.write(Some(report), |w| {
            w.scalars(step, &v)?;
            if let Some(img) = &confusion {
                w.image(step, "confusion_matrix", img)?;
            }
            w.flush()
        });
    }
}

/// The run's settings for the HParams dashboard: the recipe's scalar fields (nested ones as
/// `fine_tune.epochs`), the architecture, input size, batch size, seed and data folder.
pub fn hparams_of(plan: &super::run::Plan) -> Vec<(String, HParam)> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, HParam)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, x, out);
                }
            }
            serde_json::Value::Number(n) => {
                out.push((prefix.into(), HParam::Number(n.as_f64().unwrap_or(0.0))))
            }
            serde_json::Value::Bool(b) => out.push((prefix.into(), HParam::Bool(*b))),
            serde_json::Value::String(s) => out.push((prefix.into(), HParam::Text(s.clone()))),
            serde_json::Value::Null => {}
            serde_json::Value::Array(_) => out.push((prefix.into(), HParam::Text(v.to_string()))),
        }
    }
    let mut out = vec![
        ("arch".to_string(), HParam::Text(plan.arch.to_string())),
        (
            "size".to_string(),
            HParam::Text(format!("{}x{}", plan.cfg.size.w, plan.cfg.size.h)),
        ),
        ("bs".to_string(), HParam::Number(plan.cfg.bs as f64)),
        ("seed".to_string(), HParam::Number(plan.cfg.seed as f64)),
        ("world_size".to_string(), HParam::Number(plan.world as f64)),
        (
            "data".to_string(),
            HParam::Text(plan.data.display().to_string()),
        ),
    ];
    if let Ok(v) = serde_json::to_value(&plan.recipe) {
        flatten("", &v, &mut out);
    }
    out
}

/// Adds the TensorBoard callback to a run about to start (rank 0 only: the caller checks) and
/// returns the event file's path.
pub fn attach(session: &mut super::run::Session, dir: &Path) -> Result<PathBuf, TensorBoardError> {
    let learn = &session.learn;
    let aug = session.plan.recipe.augmentation();
    let grid = super::show_batch::first_batch(&learn.dls, learn.dls.cfg.bs.min(9), aug.as_ref())
        .ok()
        .map(|items| super::show_batch::grid(&items));
    let tb = TensorBoard::start(dir, &hparams_of(&session.plan), grid.as_ref())?;
    let path =
        tb.w.as_ref()
            .map(|w| w.path().to_path_buf())
            .unwrap_or_default();
    session.learn.add_callback(tb);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_the_masked_crc_are_tensorflows() {
        let mut v = Vec::new();
        pb::varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        // CRC-32C of "123456789" is 0xe3069283 (RFC 3720's check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // TensorFlow's mask, ((c >> 15) | (c << 17)) + 0xa282ead8, worked out by hand.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }
}
