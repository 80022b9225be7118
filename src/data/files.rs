//! Reading user files safely: only regular files (symlinks resolved) are opened, and no read is
//! larger than a byte cap.
//!
//! A folder of "images" may hold anything: a symlink to `/dev/zero` (an endless read), a FIFO named
//! `pipe.jpg` (an `open` that blocks forever), a socket, a multi-gigabyte file. Every command that
//! reads a user's file goes through [`read_capped`], so none of them can hang or exhaust memory.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

/// The default cap on one image file: the decoder refuses more than 100 M pixels anyway, and a real
/// photo of that size compresses far below 64 MB. Every reader of images takes its cap as a value
/// (`--max-file-mb`, `FINETUNE_MAX_FILE_MB`, `DataConfig::max_file_bytes`), never from a global.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// `MB` megabytes as a byte cap (at least one byte).
pub fn mb_cap(mb: u64) -> u64 {
    mb.saturating_mul(1024 * 1024).max(1)
}

/// The cap `FINETUNE_MAX_FILE_MB` sets (as the CLI's `--max-file-mb` reads it), else the default:
/// for callers without a command line (the Python package).
pub fn cap_from_env() -> u64 {
    std::env::var("FINETUNE_MAX_FILE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_MAX_FILE_BYTES, mb_cap)
}

/// What a path is once symlinks are resolved, in words for a warning; `None` for a regular file or
/// a folder (the two kinds we read).
pub fn special_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() || t.is_dir() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
    }
    Some("not a regular file")
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file ({0}); only regular files are read")]
    NotRegular(&'static str),
    #[error("file is {size} bytes, more than the {cap}-byte cap (raise it with --max-file-mb)")]
    TooBig { size: u64, cap: u64 },
}

/// Opens `path` only if it is (or links to) a regular file. The open itself is non-blocking, so a
/// FIFO swapped in after the folder walk still cannot block; the type is checked on the open handle.
pub fn open_regular(path: &Path) -> Result<(File, u64), ReadError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts.open(path)?;
    let meta = f.metadata()?;
    if let Some(kind) = special_kind(&meta) {
        return Err(ReadError::NotRegular(kind));
    }
    if meta.is_dir() {
        return Err(ReadError::NotRegular("a folder"));
    }
    Ok((f, meta.len()))
}

/// The whole of a regular file, refused when larger than `cap` bytes. The size is checked before
/// reading and the read itself is bounded, so a file that grows while being read is caught too.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let (f, len) = open_regular(path)?;
    if len > cap {
        return Err(ReadError::TooBig { size: len, cap });
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(ReadError::TooBig {
            size: buf.len() as u64,
            cap,
        });
    }
    Ok(buf)
}

/// At most the first `n` bytes of a regular file (empty when it cannot be read).
pub fn head(path: &Path, n: usize) -> Vec<u8> {
    let Ok((f, _)) = open_regular(path) else {
        return Vec::new();
    };
    let mut buf = Vec::with_capacity(n);
    match f.take(n as u64).read_to_end(&mut buf) {
        Ok(_) => buf,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.jpg");
        std::fs::write(&big, vec![0u8; 1000]).unwrap();
        assert!(matches!(
            read_capped(&big, 999),
            Err(ReadError::TooBig { size: 1000, .. })
        ));
        assert_eq!(read_capped(&big, 1000).unwrap().len(), 1000);
        #[cfg(unix)]
        {
            let zero = dir.path().join("zero.jpg");
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
            let e = read_capped(&zero, 10).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
            let fifo = dir.path().join("pipe.jpg");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            let e = read_capped(&fifo, 10).unwrap_err();
            assert!(e.to_string().contains("FIFO"), "{e}");
            assert!(head(&fifo, 4).is_empty());
        }
    }
}
