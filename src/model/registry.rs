//! Known pretrained weights: where they are cached, and fetching them with a hash check.

use super::{Arch, KnownWeights};
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
        arch: Arch,
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
    #[error("cannot write to the weights cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `$FINETUNE_CACHE`, else the platform cache dir (`~/.cache/finetune` on Linux): the base of the
/// weights cache and the image cache.
pub fn cache_base() -> PathBuf {
    std::env::var_os("FINETUNE_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("finetune")))
        .unwrap_or_else(|| PathBuf::from(".finetune-cache"))
}

/// `<cache base>/weights` (`~/.cache/finetune/weights` on Linux).
pub fn cache_dir() -> PathBuf {
    cache_base().join("weights")
}

/// Official URL, unless `FINETUNE_WEIGHTS_URL` names another base (a mirror, or a test server).
pub fn url_for(known: &KnownWeights) -> String {
    match std::env::var("FINETUNE_WEIGHTS_URL") {
        Ok(base) => format!("{}/{}", base.trim_end_matches('/'), known.file),
        Err(_) => known.url.to_string(),
    }
}

pub fn cached(arch: Arch) -> Option<PathBuf> {
    let p = cache_dir().join(arch.known_weights().file);
    p.is_file().then_some(p)
}

/// The weights file to use: the cached one, else a fresh download.
pub fn resolve(arch: Arch, progress: bool) -> Result<PathBuf, RegistryError> {
    match cached(arch) {
        Some(p) => Ok(p),
        None => fetch(arch, progress),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Downloads into the cache through a temporary file, checking the SHA-256 (full, or the prefix in
/// torchvision's file name) before the file takes its final name.
pub fn fetch(arch: Arch, progress: bool) -> Result<PathBuf, RegistryError> {
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
    let tmp = dir.join(format!(".{}.part", known.file));
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
    std::fs::rename(&tmp, &dest).map_err(|source| RegistryError::Io {
        path: dest.clone(),
        source,
    })?;
    Ok(dest)
}
