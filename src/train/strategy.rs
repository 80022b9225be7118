//! How a run's steps are spread (burn's learner strategies): one process alone, or one replica of a
//! data-parallel run. The loop asks its strategy at the same few points whatever it is, so the
//! data-parallel code sits here and in `crate::dist`, not in branches of the loop.

use super::optimizer::Adam;
use crate::bundle::Distributed;
use crate::data::DataLoaders;
use crate::dist::{DistError, Replica};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// What the training loop asks of the processes it runs on. The defaults are one process's.
pub trait Strategy: Send {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
    /// The epoch's training batches (index lists) from the seeded shuffle, or `balanced` draws.
    fn epoch_order(
        &self,
        dls: &DataLoaders,
        rng: &mut ChaCha8Rng,
        balanced: bool,
    ) -> Vec<Vec<usize>> {
        dls.train_order_by(rng, dls.cfg.bs, balanced)
    }
    /// The seed of this epoch's own crop, augmentation and mixing draws, `None` to draw from the
    /// data RNG itself.
    fn draw_seed(&self, _epoch_seed: u64) -> Option<u64> {
        None
    }
    /// Between backward and the step: make the gradients the global batch's. Returns the global
    /// batch's loss and the summed stop votes (`None` alone: the local loss stands, no vote).
    fn sync_grads(
        &self,
        _opt: &Adam,
        _loss: &Tensor,
        _stop: bool,
    ) -> Result<Option<(Tensor, Tensor)>, DistError> {
        Ok(None)
    }
    /// Whether to stop after this batch: alone, the local flag as soon as it is set; data-parallel,
    /// the votes every rank reads at the same batch (`read_now`), so all stop together.
    fn stop_now(
        &self,
        asked: bool,
        votes: &mut Vec<Tensor>,
        read_now: bool,
        voted: &mut bool,
    ) -> bool {
        let _ = (votes, read_now, voted);
        asked
    }
    /// Sums per-rank validation sums into the whole set's.
    fn sum(&self, local: &[f64]) -> Result<Vec<f64>, DistError> {
        Ok(local.to_vec())
    }
    /// After an epoch's training: every rank takes rank 0's copies of `buffers`.
    fn share_buffers(&self, _buffers: &[Tensor]) -> Result<(), DistError> {
        Ok(())
    }
    /// After validation: whether every rank holds the same variables.
    fn same_weights(&self, _vars: &[Tensor]) -> Result<bool, DistError> {
        Ok(true)
    }
    /// The bundle's record of the spread, `None` alone.
    fn record(&self, _global_batch: usize) -> Option<Distributed> {
        None
    }
}

/// One process on one device.
pub struct Single;

impl Strategy for Single {}

/// One replica of a data-parallel run (DDP): gradients averaged over the ranks before each step.
pub struct DataParallel(pub Replica);

impl Strategy for DataParallel {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn is_leader(&self) -> bool {
        self.0.is_leader()
    }
    /// Every rank draws the same permutation into global batches and takes its `bs` of each
    /// (rank 0 the first), so the ranks together see exactly the batches one process would.
    fn epoch_order(
        &self,
        dls: &DataLoaders,
        rng: &mut ChaCha8Rng,
        balanced: bool,
    ) -> Vec<Vec<usize>> {
        let (rank, bs) = (self.0.rank(), dls.cfg.bs);
        dls.train_order_by(rng, bs * self.0.world(), balanced)
            .into_iter()
            .map(|b| b[rank * bs..(rank + 1) * bs].to_vec())
            .collect()
    }
    /// One per (rank, phase, epoch), so ranks draw differently while the shared RNG, used only
    /// for the shuffle, stays the same on all of them (and resumes exactly).
    fn draw_seed(&self, epoch_seed: u64) -> Option<u64> {
        Some(epoch_seed ^ (self.0.rank() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    fn sync_grads(
        &self,
        opt: &Adam,
        loss: &Tensor,
        stop: bool,
    ) -> Result<Option<(Tensor, Tensor)>, DistError> {
        // The stop votes ride in the gradients' collective: no extra round trip per batch.
        let local = Tensor::stack(
            &[
                loss.detach().to_kind(Kind::Float),
                Tensor::from(stop as i32 as f32).to_device(loss.device()),
            ],
            0,
        );
        let summed = self.0.average_grads(&opt.grads(), &local)?;
        Ok(Some((summed.get(0) / self.0.world() as f64, summed.get(1))))
    }
    fn stop_now(
        &self,
        _asked: bool,
        votes: &mut Vec<Tensor>,
        read_now: bool,
        voted: &mut bool,
    ) -> bool {
        if read_now {
            *voted |= votes.drain(..).any(|v| v.double_value(&[]) > 0.0);
            *voted
        } else {
            false
        }
    }
    fn sum(&self, local: &[f64]) -> Result<Vec<f64>, DistError> {
        self.0.sum(local)
    }
    fn share_buffers(&self, buffers: &[Tensor]) -> Result<(), DistError> {
        // BatchNorm's running statistics saw only this rank's images: rank 0's become everyone's,
        // as DDP's broadcast_buffers does before each forward.
        self.0.broadcast_vars(buffers)
    }
    fn same_weights(&self, vars: &[Tensor]) -> Result<bool, DistError> {
        self.0.same_weights(vars)
    }
    fn record(&self, global_batch: usize) -> Option<Distributed> {
        Some(Distributed {
            world_size: self.0.world(),
            global_batch,
            dist_backend: self.0.group.backend,
        })
    }
}
