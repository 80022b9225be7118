//! `finetune train` under torchrun, for the CLI and the Python package alike: where each rank
//! computes, joining the group, refusing ranks started differently, and continuing the bundle's
//! checkpoint after torchrun restarts the group (`--max-restarts`).

use super::run::{Plan, RunError, Session, Start};
use crate::dist::{Backend, Launch, Replica};
use std::time::Duration;
use tch::Device;

/// `--dist-backend` and `--dist-timeout`.
#[derive(Debug, Clone)]
pub struct DistOptions {
    /// auto, gloo or nccl.
    pub backend: String,
    /// How long any collective (and joining) may wait for the other ranks.
    pub timeout: Duration,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            backend: "auto".into(),
            timeout: Duration::from_secs(crate::dist::DEFAULT_TIMEOUT_S),
        }
    }
}

/// The device rank `launch` computes on: `cuda:LOCAL_RANK` when the run is on CUDA (one GPU per
/// process, torchrun's convention), the CPU otherwise.
pub fn rank_device(launch: &Launch, device: Device) -> Device {
    match device {
        Device::Cuda(_) => Device::Cuda(launch.local_rank),
        d => d,
    }
}

/// Joins the group torchrun described, with the backend `opts` asks for on `device`.
pub fn join(launch: &Launch, opts: &DistOptions, device: Device) -> Result<Replica, RunError> {
    let backend = Backend::choose(&opts.backend, device.is_cuda())?;
    let group = crate::dist::Group::join(launch, backend, opts.timeout)?;
    Ok(Replica::new(group, device))
}

/// After torchrun restarted the group (`--max-restarts`), the run continues from the checkpoint
/// the previous attempt left in its bundle folder (the one `start` names, else the default for
/// its data), as `--resume` would; `None` on a first attempt or when the folder holds no
/// checkpoint.
pub fn restart_plan(
    launch: &Launch,
    start: &Start,
    max_file_bytes: u64,
) -> Option<Result<Plan, RunError>> {
    if launch.restart == 0 {
        return None;
    }
    let (dir, data) = match start {
        Start::Resume { dir, data } => (dir.clone(), data.clone()),
        Start::New { data, out, .. } => (
            out.clone().unwrap_or_else(|| super::run::default_out(data)),
            Some(data.clone()),
        ),
    };
    if !matches!(crate::bundle::read_checkpoint(&dir), Ok(Some(_))) {
        return None;
    }
    Some(Plan::resume(&dir, data, max_file_bytes))
}

impl Session {
    /// Makes this session one rank of a data-parallel run: refuses ranks started with other data
    /// or settings (naming the first that differs), then starts from rank 0's weights.
    pub fn distribute(&mut self, replica: Replica) -> Result<(), RunError> {
        replica.check_same(&self.fingerprint())?;
        self.learn.distribute(replica)?;
        Ok(())
    }

    /// What every rank must agree on, each as text (hashed and compared across the ranks).
    fn fingerprint(&self) -> Vec<(&'static str, String)> {
        let p = &self.plan;
        let dls = &self.learn.dls;
        let files = |set: &crate::data::dataset::ImageSet| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (i, path) in set.paths.iter().enumerate() {
                std::hash::Hash::hash(&path.strip_prefix(&p.data).unwrap_or(path), &mut h);
                std::hash::Hash::hash(&set.labels[i], &mut h);
                std::hash::Hash::hash(set.multi.get(i).map_or(&[][..], |m| &m[..]), &mut h);
            }
            format!(
                "{} images, digest {:016x}",
                set.paths.len(),
                std::hash::Hasher::finish(&h)
            )
        };
        vec![
            ("the classes", format!("{:?}", dls.classes)),
            ("the training images", files(&dls.train)),
            ("the validation images", files(&dls.valid)),
            ("the architecture", p.arch.to_string()),
            ("the seed", format!("--seed {}", p.cfg.seed)),
            ("the batch size", format!("--bs {}", p.cfg.bs)),
            (
                "the image size",
                format!("{:?} {:?} {:?}", p.cfg.size, p.cfg.method, p.cfg.pad),
            ),
            ("the schedule", format!("{:?}", p.recipe.fine_tune)),
            // The whole value: a field added to the recipe is compared without a line here.
            ("the training recipe", format!("{:?}", p.recipe)),
            (
                "the checkpoint resumed",
                match &p.resume {
                    Some((_, ck)) => format!(
                        "{} epoch(s) of the {} phase",
                        ck.state.epochs_done, ck.state.phase
                    ),
                    None => "none".into(),
                },
            ),
            (
                "the device type",
                format!("{:?}", self.learn.net.device()).replace(|c: char| c.is_ascii_digit(), ""),
            ),
        ]
    }
}
