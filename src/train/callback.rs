//! The events of the training loop (fastai's callback events) that code outside the loop hooks
//! into; the loop and the recipe's own callbacks are `super::fit`, the callbacks that change a
//! training batch and its loss (MixUp, CutMix) `super::mix::MixHandler`.

use super::profile::PhaseTimes;
use super::report::Report;
use super::smooth_loss::SmoothLoss;

/// fastai's events around an epoch and a fit. Callbacks act through the learner they get;
/// their state lives there too, so a checkpoint holds it.
///
/// Generic over the learner `L` only so that this file need not import the learner, which holds
/// its callbacks (`Callback<Learner>` everywhere).
pub trait Callback<L> {
    /// A training batch's step was taken and its loss read back (on a GPU a few batches late, as
    /// losses are read in groups). No learner: the loop holds it mid-epoch.
    fn after_batch(&mut self, _batch: &BatchEnd) {}
    /// An epoch ended; its row is the last of `learn.rows`.
    fn after_epoch(&mut self, _learn: &mut L, _end: &EpochEnd, _report: &mut dyn Report) {}
    /// A fit ended without interruption (early stopping included).
    fn after_fit(&mut self, _learn: &mut L, _phase: &str, _report: &mut dyn Report) {}
}

/// What an epoch's callbacks learn about it.
#[derive(Debug, Clone)]
pub struct EpochEnd {
    pub phase: String,
    pub epoch: usize,
    /// Every batch ran (not stopped part-way): the trackers and checkpoints act only then.
    pub complete: bool,
    /// The smoothed training loss as the epoch ended (a checkpoint resumes it).
    pub smooth: SmoothLoss,
    /// Where the time went (`FINETUNE_PROFILE`).
    pub times: PhaseTimes,
    pub seconds: f64,
}

/// What a batch's callbacks learn about it.
#[derive(Debug, Clone)]
pub struct BatchEnd<'a> {
    pub phase: &'a str,
    pub epoch: usize,
    /// The batch's index in its epoch.
    pub batch: usize,
    /// Steps taken in this training run so far, this one included (both fits of `fine_tune`).
    pub step: usize,
    /// This batch's loss (the global batch's, data-parallel), and the smoothed loss after it.
    pub loss: f64,
    pub smooth: f64,
    /// The learning rate of the last parameter group (the head's) at this step.
    pub lr: f64,
}
