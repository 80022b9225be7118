//! What `train --resume` needs to continue a run exactly where its last completed epoch ended:
//! the schedule position (phase, epochs done), every epoch row so far, the smoothed loss, the data
//! RNG (shuffle order, crops, augmentation), and the optimizer's moments and step counts, next to
//! the weights of that moment. (Dropout draws from libtorch's generator, reseeded at every epoch
//! from (seed, phase, epoch): no saved state.)

use super::EpochRow;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::Tensor;

/// Everything but the tensors, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The fit this state is in (`frozen` or `unfrozen`) and how many of its epochs are done.
    pub phase: String,
    pub epochs_done: usize,
    pub rows: Vec<EpochRow>,
    pub smooth_val: f64,
    pub smooth_count: i32,
    pub rng: RngState,
    /// Adam's step count per parameter (only parameters that have taken a step).
    pub steps: BTreeMap<String, u64>,
    /// fp16 training's loss scale and clean-step count (absent otherwise, and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<(f64, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<TrackerState>,
}

/// Where `--save-best` / `--early-stop` stand in the current fit. With `--save-best` the best
/// epoch's weights travel in the checkpoint's tensors as `best.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TrackerState {
    /// The best monitored value so far and its epoch (`None` before the first complete epoch).
    pub best: Option<(f64, usize)>,
    /// Epochs since the last improvement.
    pub wait: usize,
    /// Early stopping ended this fit.
    pub stopped: bool,
}

/// ChaCha8's full state: seed, stream and position (a u128, kept as a string for JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Option<ChaCha8Rng> {
        use rand::SeedableRng;
        let mut r = ChaCha8Rng::from_seed(self.seed);
        r.set_stream(self.stream);
        r.set_word_pos(self.word_pos.parse().ok()?);
        Some(r)
    }
}

/// A resumable moment: the JSON state and the tensors (`model.<name>` for every network variable,
/// `grad_avg.<name>` and `sqr_avg.<name>` for Adam's moments), deep copies on the CPU.
#[derive(Debug)]
pub struct Checkpoint {
    pub state: TrainState,
    pub tensors: Vec<(String, Tensor)>,
}

impl Clone for Checkpoint {
    fn clone(&self) -> Self {
        Checkpoint {
            state: self.state.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|(k, t)| (k.clone(), t.copy()))
                .collect(),
        }
    }
}
