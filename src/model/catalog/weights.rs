//! Where each arch's official pretrained checkpoint lives and how to recognise it.

use super::{timm, Arch};

/// A torchvision checkpoint on download.pytorch.org, with the hash prefix in its name.
macro_rules! tv {
    ($file:literal, $hash:literal, $size:expr) => {
        Weights::Known(KnownWeights {
            file: $file,
            url: concat!("https://download.pytorch.org/models/", $file),
            sha256: $hash,
            size_bytes: $size,
        })
    };
}

/// An official pretrained checkpoint: where it lives and how to recognise it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownWeights {
    pub file: &'static str,
    pub url: &'static str,
    /// Full SHA-256 where we have verified it; otherwise the prefix torchvision puts in the name.
    pub sha256: &'static str,
    pub size_bytes: u64,
}

/// Where a catalogue row's checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Weights {
    Known(KnownWeights),
    /// timm's default tag of the arch, from the hub table (`timm.rs`).
    TimmDefault,
}

impl Arch {
    /// The checkpoint `--weights` (without a path) downloads for this arch.
    pub fn known_weights(self) -> KnownWeights {
        match self.facts().weights {
            Weights::Known(k) => k,
            Weights::TimmDefault => match timm::default_for(self) {
                Some(w) => w.known,
                None => unreachable!("every timm-only arch has a hub row (checked by a test)"),
            },
        }
    }
}

/// Approximate sizes in MiB (torchvision's `_file_size`), as bytes.
pub(super) const fn mib(m: f64) -> u64 {
    (m * 1024.0 * 1024.0) as u64
}
