//! Data-parallel training on PyTorch's own distributed engine (c10d), the one fastai's
//! `distrib_ctx` uses, reached through a small C++ shim (`csrc/dist_shim.cpp`) because tch exposes
//! none of it.
//!
//! A process learns its place from the environment torchrun (and Kubeflow's PyTorchJob, Slurm
//! scripts, SageMaker) sets ([`Launch`]), joins a process group ([`Group`]: Gloo on the CPU,
//! NCCL on CUDA when built in) and keeps its replica in step with the others ([`Replica`]:
//! rank 0's weights broadcast at the start, gradients averaged after every backward, metrics
//! summed, weights compared after every epoch). A process that finds no launcher never touches
//! any of it.

mod group;
mod launch;
mod replica;

pub use group::{Backend, Group, ReduceOp};
pub use launch::Launch;
pub use replica::Replica;

/// Whether this build has the c10d shim (it needs Gloo's headers at build time; see build.rs).
pub const AVAILABLE: bool = cfg!(finetune_dist);

/// How long a collective may wait for the other ranks by default (`--dist-timeout`).
pub const DEFAULT_TIMEOUT_S: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error(
        "this finetune was built without distributed training (Gloo's headers were missing at \
         build time): apt-get install libgloo-dev (or set GLOO_INCLUDE_DIR), then rebuild"
    )]
    NotBuilt,
    #[error("{var}={value:?} is not a valid {what} (set by torchrun; check the launcher)")]
    BadEnv {
        var: &'static str,
        value: String,
        what: &'static str,
    },
    #[error(
        "{0} is not set: run under torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
    )]
    MissingEnv(&'static str),
    #[error("unknown --dist-backend `{0}`; use gloo or nccl")]
    UnknownBackend(String),
    #[error("rank {rank} of {world}: could not join the process group at {addr}: {msg}")]
    Join {
        rank: usize,
        world: usize,
        addr: String,
        msg: String,
    },
    #[error("rank {rank} of {world}: {what} failed ({msg}); {lost}")]
    Collective {
        rank: usize,
        world: usize,
        what: &'static str,
        msg: String,
        lost: String,
    },
    #[error("the ranks disagree on {what}: {detail}; every rank must be started with the same data, arch, seed and settings")]
    Mismatch { what: String, detail: String },
    #[error("the ranks' weights differ after {phase} epoch {epoch} (a bug: please report it)")]
    Diverged { phase: String, epoch: usize },
}
