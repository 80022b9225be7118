//! One writer at a time per cached data set: an exclusive `flock` on `<dir>/lock`, held while the
//! index is read, shards are written and the shards are mapped. Readers need no lock afterwards:
//! shard files are immutable once renamed into place and are only ever unlinked, never truncated,
//! so a mapping stays valid even if another run deletes the file.

use std::fs::File;
use std::path::Path;

#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Waits for the lock on `dir` (creating `dir`), saying once on stderr that it waits. A lock file
/// deleted by `cache clear` while waiting is noticed (its inode no longer matches the path) and the
/// lock is taken again on the new one.
pub fn lock(dir: &Path, progress: &dyn super::super::Progress) -> std::io::Result<DirLock> {
    let path = dir.join("lock");
    let mut said = false;
    loop {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !try_flock(&file)? {
            if !said {
                progress.note(&format!(
                    "waiting for another finetune that is writing the image cache {}",
                    dir.display()
                ));
                said = true;
            }
            flock_blocking(&file)?;
        }
        if same_file(&file, &path) {
            return Ok(DirLock { _file: file });
        }
    }
}

#[cfg(unix)]
fn try_flock(f: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a valid open descriptor; flock has no memory effects.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(unix)]
fn flock_blocking(f: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: as above.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn try_flock(_: &File) -> std::io::Result<bool> {
    Ok(true)
}
#[cfg(not(unix))]
fn flock_blocking(_: &File) -> std::io::Result<()> {
    Ok(())
}
#[cfg(not(unix))]
fn same_file(_: &File, _: &Path) -> bool {
    true
}
