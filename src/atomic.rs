//! Writing results so that a crash, `kill -9` or a full disk never leaves half of them: everything
//! is written under a temporary name beside its destination, flushed to disk, then renamed into
//! place (a rename within one folder is atomic). A failed write removes its temporary and leaves
//! the previous version untouched.

use std::io::Write;
use std::path::{Path, PathBuf};

/// `path`'s temporary sibling: hidden, and unique to this process.
pub fn temp_sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Removes what a killed process left beside `path`: temporaries of processes no longer running
/// (on Linux, where `/proc` tells; elsewhere they are left alone).
pub fn remove_stale_siblings(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(&prefix) else {
            continue;
        };
        let Some((_, pid)) = rest.rsplit_once('-') else {
            continue;
        };
        let alive = pid.parse::<u32>().map_or(true, |p| {
            p == std::process::id() || Path::new(&format!("/proc/{p}")).exists()
        });
        if !alive {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path, "tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Puts the complete folder `new` at `dir`, replacing what was there in one step, then deletes the
/// old contents. On Linux the two are exchanged atomically (`renameat2(RENAME_EXCHANGE)`); elsewhere
/// the old folder is first renamed aside, so at every moment one complete version exists on disk.
pub fn replace_dir(new: &Path, dir: &Path) -> std::io::Result<()> {
    if let Ok(f) = std::fs::File::open(new) {
        let _ = f.sync_all();
    }
    if !dir.exists() {
        return std::fs::rename(new, dir);
    }
    if exchange(new, dir).is_ok() {
        // `new` now holds the old folder.
        let _ = std::fs::remove_dir_all(new);
        return Ok(());
    }
    let old = temp_sibling(dir, "old");
    std::fs::rename(dir, &old)?;
    if let Err(e) = std::fs::rename(new, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("no atomic exchange here"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_folder_whole() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("old.txt"), "old").unwrap();
        let new = temp_sibling(&dir, "new");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("new.txt"), "new").unwrap();
        replace_dir(&new, &dir).unwrap();
        assert!(dir.join("new.txt").is_file());
        assert!(!dir.join("old.txt").exists());
        assert!(!new.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        write_file(&dir.join("a.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(dir.join("a.json")).unwrap(), b"{}");
    }
}
