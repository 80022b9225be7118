//! Which images each process of a data-parallel run trains on, the way PyTorch's
//! `torch.utils.data.DistributedSampler` decides: every rank draws the same seeded permutation of
//! the whole set for the epoch, pads it by repeating from its start to a multiple of `world` (or, with
//! `drop_last`, cuts it to one), and rank `r` takes every `world`-th index starting at `r`.
//!
//! Equal lengths matter more than exact coverage: in data-parallel training every rank must run the
//! same number of steps, or the collectives of the longer ranks wait forever. The permutation is
//! ChaCha8 seeded with `seed + epoch` (PyTorch uses its own generator with the same seed rule, so
//! the orders differ from PyTorch's; without shuffling they are identical, which a test checks
//! against `DistributedSampler` itself).

use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("world size must be at least 1")]
    EmptyWorld,
    #[error("rank {rank} is outside the world of {world} processes (ranks 0..{world})")]
    RankOutside { rank: usize, world: usize },
}

/// One rank's share of a data set (PyTorch's `DistributedSampler(num_replicas=world, rank=rank,
/// shuffle, seed, drop_last)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankSplit {
    pub rank: usize,
    pub world: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
}

impl RankSplit {
    /// Shuffled, padded (PyTorch's defaults), seed 0.
    pub fn new(rank: usize, world: usize) -> Result<Self, SplitError> {
        if world == 0 {
            return Err(SplitError::EmptyWorld);
        }
        if rank >= world {
            return Err(SplitError::RankOutside { rank, world });
        }
        Ok(RankSplit {
            rank,
            world,
            seed: 0,
            shuffle: true,
            drop_last: false,
        })
    }

    pub fn seed(self, seed: u64) -> Self {
        RankSplit { seed, ..self }
    }

    pub fn shuffle(self, shuffle: bool) -> Self {
        RankSplit { shuffle, ..self }
    }

    pub fn drop_last(self, drop_last: bool) -> Self {
        RankSplit { drop_last, ..self }
    }

    /// Images per rank per epoch, the same on every rank.
    pub fn len(&self, n: usize) -> usize {
        if self.drop_last {
            n / self.world
        } else {
            n.div_ceil(self.world)
        }
    }

    pub fn is_empty(&self, n: usize) -> bool {
        self.len(n) == 0
    }

    /// The whole epoch's order before it is dealt out: the same on every rank.
    pub fn epoch_order(&self, n: usize, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        if self.shuffle {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch));
            idx.shuffle(&mut rng);
        }
        let total = self.len(n) * self.world;
        if total <= n {
            idx.truncate(total);
        } else if n > 0 {
            // Padding may be longer than the set itself (n < world): repeat it whole as needed.
            let pad: Vec<usize> = idx.iter().copied().cycle().take(total - n).collect();
            idx.extend(pad);
        }
        idx
    }

    /// This rank's indices into the data set for `epoch`, in the order to visit them.
    pub fn indices(&self, n: usize, epoch: u64) -> Vec<usize> {
        self.epoch_order(n, epoch)
            .into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_impossible_ranks() {
        assert_eq!(RankSplit::new(0, 0), Err(SplitError::EmptyWorld));
        assert!(RankSplit::new(2, 2).is_err());
    }

    #[test]
    fn tiny_sets_are_padded_from_the_start() {
        let s = RankSplit::new(0, 4).unwrap().shuffle(false);
        assert_eq!(s.epoch_order(3, 0), vec![0, 1, 2, 0]);
        assert_eq!(s.epoch_order(1, 0), vec![0, 0, 0, 0]);
        assert!(s.epoch_order(0, 0).is_empty());
        assert_eq!(s.drop_last(true).epoch_order(3, 0), Vec::<usize>::new());
    }
}
