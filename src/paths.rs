//! Where finetune keeps what it caches. Every stage of the pipeline (weights in `model`, decoded
//! images in `data`) caches under one base folder, so the base lives here, below all of them,
//! rather than in one stage that the others would then import against the pipeline's direction.

use std::path::PathBuf;

/// `$FINETUNE_CACHE`, else the platform cache dir (`~/.cache/finetune` on Linux): the base of the
/// weights cache and the image cache.
pub fn cache_base() -> PathBuf {
    std::env::var_os("FINETUNE_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("finetune")))
        .unwrap_or_else(|| PathBuf::from(".finetune-cache"))
}
