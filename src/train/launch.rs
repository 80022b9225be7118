//! The one way a training run starts, for `finetune train` and `finetune.train(...)` alike
//! (text-embeddings-inference's shape: arguments, then one library call). Under torchrun it
//! picks the rank's device, continues the group's checkpoint after a restart, joins the group and
//! makes this process a replica; alone it is a plain run. The callers only parse arguments and
//! show what the [`Report`] receives.

use super::distributed::{self, DistOptions};
use super::report::{Report, SilentReport};
use super::run::{Feedback, Outcome, Plan, RunError, Session, Start};
use crate::data::CacheConfig;
use crate::model::Runtime;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Everything a run needs beyond its recipe's values.
pub struct Request {
    pub start: Start,
    /// The image cache; `None` decodes every image into memory.
    pub cache: Option<CacheConfig>,
    /// The cap on one image file (`--max-file-mb`).
    pub max_file_bytes: u64,
    /// Where and how to compute; under torchrun, CUDA becomes the rank's own GPU.
    pub runtime: Runtime,
    /// The group's backend and timeout under torchrun.
    pub dist: DistOptions,
    /// Set (by Ctrl-C) to stop after the current batch with a resumable bundle.
    pub stop: Arc<AtomicBool>,
    /// `--tensorboard DIR`: event files for TensorBoard (rank 0 only).
    pub tensorboard: Option<std::path::PathBuf>,
    /// `--mlflow URI`: the run logged to an MLflow tracking server (rank 0 only).
    pub mlflow: Option<String>,
}

/// Runs `req` to its saved bundle. Only rank 0 reports (the others would repeat it): the other
/// ranks' outcomes say `leader: false`.
pub fn launch(req: Request, report: &mut dyn Report) -> Result<Outcome, RunError> {
    // torchrun (or any launcher setting its variables) makes this one rank of a data-parallel run.
    let env = crate::dist::Launch::from_env()?;
    let mut rt = req.runtime;
    if let Some(l) = &env {
        rt.device = distributed::rank_device(l, rt.device);
    }
    let leader = env.as_ref().is_none_or(|l| l.is_leader());
    // Rank 0 reports everything; another rank's caller hears only `ready`.
    let (mut quiet, mut unused) = (SilentReport, SilentReport);
    let (caller, report): (&mut dyn Report, &mut dyn Report) = if leader {
        (&mut unused, report)
    } else {
        (report, &mut quiet)
    };
    let restarted = env
        .as_ref()
        .and_then(|l| distributed::restart_plan(l, &req.start, req.max_file_bytes));
    let mut plan = match restarted {
        Some(plan) => {
            let plan = plan?;
            report.log(&format!(
                "torchrun restarted the group: continuing {} from its checkpoint",
                plan.out.display()
            ));
            plan
        }
        None => Plan::of(req.start, req.max_file_bytes)?,
    };
    plan.cache = req.cache;
    plan.world = env.as_ref().map_or(1, |l| l.world);
    let replica = match &env {
        Some(l) => Some(distributed::join(l, &req.dist, rt.device)?),
        None => None,
    };
    if let Some(r) = &replica {
        report.log(&format!(
            "distributed: {} processes ({}), --bs {} per process, global batch {}",
            r.world(),
            r.group.backend,
            plan.cfg.bs,
            plan.cfg.bs * r.world()
        ));
    }
    let progress = report.data_progress();
    let download_bar = report.interactive();
    let mut session = Session::start(
        plan,
        rt,
        &mut Feedback {
            progress: progress.as_ref(),
            download_bar,
            log: &mut |m| report.log(m),
        },
    )?;
    if let Some(r) = replica {
        session.distribute(r)?;
    }
    session.learn.stop = req.stop;
    if let (Some(dir), true) = (&req.tensorboard, leader) {
        let file = super::tensorboard::attach(&mut session, dir)?;
        report.log(&format!("tensorboard: writing {}", file.display()));
    }
    if let (Some(uri), true) = (&req.mlflow, leader) {
        let id = super::mlflow::attach(&mut session, uri)?;
        report.log(&format!("mlflow: logging run {id} to {uri}"));
    }
    // Every rank's caller learns that training begins (a Ctrl-C handler then saves, not quits).
    caller.ready();
    report.ready();
    session.run(report)
}
