//! What `train --resume` needs to continue a run exactly where its last completed epoch ended:
//! the schedule position (phase, epochs done), every epoch row so far, the smoothed loss, the data
//! RNG (shuffle order, crops, augmentation), and the optimizer's moments and step counts, next to
//! the weights of that moment. Dropout draws from libtorch's generator, which is reseeded at every
//! epoch from (seed, phase, epoch), so it needs no saved state.

use super::report::EpochRow;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Device, Tensor};

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

/// Libtorch's generator seed for one epoch, so dropout masks depend only on (seed, phase, epoch)
/// and a resumed run draws the same ones.
pub fn epoch_seed(seed: u64, phase: &str, epoch: usize) -> i64 {
    let mut h: u64 = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in phase.bytes().chain((epoch as u64).to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
    }
    (h >> 1) as i64
}

/// A deep, contiguous (NCHW for 4-D) copy on the CPU: what checkpoints and files hold.
pub(crate) fn cpu_copy(t: &Tensor) -> Tensor {
    let out = Tensor::empty(t.size(), (t.kind(), Device::Cpu));
    tch::no_grad(|| out.shallow_clone().copy_(t));
    out
}
