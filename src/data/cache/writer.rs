//! Writing one shard: images streamed into a hidden temporary file (so memory holds one decode
//! chunk, not the shard), the header written last (its shape is known only then), fsynced, the
//! labels file written atomically, and the images file renamed into place. A crash leaves only
//! temporaries and files the index does not name, which the next run removes.

use super::index::{images_file, labels_file, ShardMeta};
use super::npy;
use image::RgbImage;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where one image went in the shard being written.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub row: u64,
    pub offset: u64,
}

pub struct ShardWriter {
    dir: PathBuf,
    pub name: String,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    dims: Option<(u32, u32)>,
    uniform: bool,
    bytes: u64,
    labels: Vec<i64>,
}

impl ShardWriter {
    pub fn create(dir: &Path, name: String) -> std::io::Result<Self> {
        let tmp = crate::atomic::temp_sibling(&dir.join(images_file(&name)), "tmp");
        let mut file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        // Placeholder for the header, rewritten by `finish`.
        file.write_all(&[b' '; npy::PAGE])?;
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            name,
            tmp,
            file: Some(file),
            dims: None,
            uniform: true,
            bytes: 0,
            labels: Vec::new(),
        })
    }

    pub fn push(&mut self, img: &RgbImage, label: u32) -> std::io::Result<Placed> {
        let placed = Placed {
            row: self.labels.len() as u64,
            offset: self.bytes,
        };
        let dims = img.dimensions();
        match self.dims {
            None => self.dims = Some(dims),
            Some(d) if d != dims => self.uniform = false,
            Some(_) => {}
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("shard already finished"))?
            .write_all(img.as_raw())?;
        self.bytes += img.as_raw().len() as u64;
        self.labels.push(label as i64);
        Ok(placed)
    }

    /// Data bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Completes the shard on disk and returns its description for the index.
    pub fn finish(mut self) -> std::io::Result<ShardMeta> {
        let n = self.labels.len() as u64;
        let shape = match (self.uniform, self.dims) {
            (true, Some((w, h))) => vec![n, h as u64, w as u64, 3],
            _ => vec![self.bytes],
        };
        let head = npy::header("|u1", &shape, npy::PAGE);
        if head.len() != npy::PAGE {
            return Err(std::io::Error::other("shard header longer than a page"));
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("shard already finished"))?;
        let n_labels = self.labels.len();
        let r = (|| {
            let mut f = file.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&head)?;
            f.sync_all()?;
            drop(f);
            let mut labels = npy::header("<i8", &[n], npy::ALIGN);
            labels.reserve(n_labels * 8);
            for l in &self.labels {
                labels.extend_from_slice(&l.to_le_bytes());
            }
            crate::atomic::write_file(&self.dir.join(labels_file(&self.name)), &labels)?;
            std::fs::rename(&self.tmp, self.dir.join(images_file(&self.name)))?;
            Ok::<_, std::io::Error>(labels.len() as u64)
        })();
        let labels_bytes = match r {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                let _ = std::fs::remove_file(self.dir.join(labels_file(&self.name)));
                return Err(e);
            }
        };
        Ok(ShardMeta {
            shape,
            n,
            images_bytes: npy::PAGE as u64 + self.bytes,
            labels_bytes,
        })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Not finished (an error or a panic): the temporary must not outlive us.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
