//! Batches gathered straight from memory-mapped shards.
//!
//! A batch is one `memcpy` per image from the mapping into the batch tensor. Before copying, the
//! batch's records are announced with `MADV_WILLNEED` (the kernel reads them ahead, in parallel);
//! every 64 MiB gathered, the mapped pages are dropped from this process's page tables with
//! `MADV_DONTNEED`. The bytes stay in the page cache (a later epoch maps them again with a minor
//! fault) but stop counting in the process's resident memory, so a data set larger than RAM trains
//! with bounded memory, and the kernel is free to evict cold shards under pressure.

use image::RgbImage;
use memmap2::{Advice, Mmap, UncheckedAdvice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

/// Where one image is: shard (index into [`Shards`]), byte offset into its data, size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub shard: u32,
    pub offset: u64,
    pub h: u32,
    pub w: u32,
}

impl Loc {
    pub fn bytes(&self) -> usize {
        self.h as usize * self.w as usize * 3
    }
}

#[derive(Debug)]
struct Mapped {
    path: PathBuf,
    map: Mmap,
    data_offset: usize,
    /// Read since the last release of its pages.
    touched: AtomicBool,
}

/// The shards a data set's images live in, mapped read-only.
#[derive(Debug, Default)]
pub struct Shards {
    maps: Vec<Mapped>,
    /// Record bytes gathered since the mapped pages were last released.
    gathered: AtomicU64,
}

impl Shards {
    /// Maps the images file at `path` whose data starts at `data_offset` and which must be exactly
    /// `len` bytes long (checked on the open handle, so a file swapped or cut since the check is
    /// refused too). Returns its shard number.
    pub fn map(&mut self, path: &Path, data_offset: u64, len: u64) -> Result<u32, String> {
        let (file, got) = crate::data::files::open_regular(path).map_err(|e| e.to_string())?;
        if got != len || data_offset > len {
            return Err(format!("{got} bytes, expected {len}"));
        }
        // SAFETY: shard files are never written after they are renamed into place (new data goes
        // to new files; old ones are only unlinked, which keeps the mapping valid), so the mapped
        // bytes do not change underneath the slices handed out below.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
        if map.len() as u64 != len {
            return Err(format!("mapped {} bytes, expected {len}", map.len()));
        }
        let _ = map.advise(Advice::Random);
        self.maps.push(Mapped {
            path: path.to_path_buf(),
            map,
            data_offset: data_offset as usize,
            touched: AtomicBool::new(false),
        });
        Ok((self.maps.len() - 1) as u32)
    }

    /// Whether `loc` lies inside its shard's data (checked once per image when the set is built).
    pub fn contains(&self, loc: &Loc) -> bool {
        self.maps.get(loc.shard as usize).is_some_and(|m| {
            (m.data_offset as u64)
                .checked_add(loc.offset)
                .and_then(|s| s.checked_add(loc.bytes() as u64))
                .is_some_and(|end| end <= m.map.len() as u64)
        })
    }

    pub fn len(&self) -> usize {
        self.maps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    pub fn path(&self, shard: u32) -> &Path {
        &self.maps[shard as usize].path
    }

    fn range(&self, loc: &Loc) -> (&Mapped, usize, usize) {
        let m = &self.maps[loc.shard as usize];
        (m, m.data_offset + loc.offset as usize, loc.bytes())
    }

    /// The image's bytes (HWC, RGB) in the mapping.
    pub fn record(&self, loc: &Loc) -> &[u8] {
        let (m, start, len) = self.range(loc);
        &m.map[start..start + len]
    }

    /// A copy of one image (for crop, whose window is cut per batch).
    pub fn image(&self, loc: &Loc) -> RgbImage {
        let img = RgbImage::from_raw(loc.w, loc.h, self.record(loc).to_vec());
        self.release(std::slice::from_ref(loc));
        img.unwrap_or_else(|| RgbImage::new(loc.w, loc.h))
    }

    /// Same-sized images into one u8 NHWC tensor (what `stack_u8` makes from decoded images).
    pub fn gather(&self, locs: &[Loc]) -> Tensor {
        let (h, w) = locs.first().map_or((0, 0), |l| (l.h, l.w));
        assert!(
            locs.iter().all(|l| (l.h, l.w) == (h, w)),
            "a batch gathered from the cache mixes image sizes"
        );
        for l in locs {
            let (m, start, len) = self.range(l);
            let _ = m.map.advise_range(Advice::WillNeed, start, len);
        }
        let each = h as usize * w as usize * 3;
        let out = Tensor::empty(
            [locs.len() as i64, h as i64, w as i64, 3],
            (Kind::Uint8, Device::Cpu),
        );
        if each > 0 && !locs.is_empty() {
            // SAFETY: `out` is a fresh contiguous CPU u8 tensor of exactly locs.len()·each bytes,
            // owned here and not yet shared.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut u8, locs.len() * each)
            };
            for (chunk, l) in dst.chunks_exact_mut(each).zip(locs) {
                chunk.copy_from_slice(self.record(l));
            }
        }
        self.release(locs);
        out
    }

    /// Drops the shards' pages from this process's page tables (they stay in the page cache) once
    /// [`RELEASE_EVERY`] bytes have been gathered since the last time. Whole shards, not just the
    /// records: touching one page maps the cached pages around it too (fault-around, and whole
    /// large folios on recent kernels), and those neighbours would otherwise stay resident.
    /// Measured on Linux 6.18/ext4 over one pass of 20 000 images at 192 px: releasing each
    /// record's own pages left 860 MB mapped, 64 KiB-aligned windows around them 410 MB. Releasing
    /// after every batch bounds it too but makes every record fault again (half the throughput);
    /// every 64 MiB keeps both small (README).
    fn release(&self, locs: &[Loc]) {
        let mut bytes = 0u64;
        for l in locs {
            self.maps[l.shard as usize]
                .touched
                .store(true, Ordering::Relaxed);
            bytes += l.bytes() as u64;
        }
        if self.gathered.fetch_add(bytes, Ordering::Relaxed) + bytes < RELEASE_EVERY {
            return;
        }
        self.gathered.store(0, Ordering::Relaxed);
        for m in &self.maps {
            if m.touched.swap(false, Ordering::Relaxed) {
                // SAFETY: a read-only shared file mapping: after MADV_DONTNEED the next access
                // faults the same file bytes back in, so no reader (another thread included) sees
                // a change.
                let _ = unsafe { m.map.unchecked_advise(UncheckedAdvice::DontNeed) };
            }
        }
    }
}

/// Bytes of records gathered between two releases of the mapped pages.
const RELEASE_EVERY: u64 = 64 << 20;
