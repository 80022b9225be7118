//! Overlapped input: the next batch is gathered, cropped, augmented and turned into the network's
//! input on a producer thread while the current one computes.
//!
//! The producer is the only user of the data RNG while an epoch runs and draws in exactly the
//! order the serial loop did (the shuffle before the epoch; then per batch its crop positions, then
//! its augmentation), so a seed gives the same batches, bit for bit.
//!
//! On the CPU the producer hands over the finished float input. On CUDA it hands over the u8 batch
//! in pinned (page-locked) host memory with the augmentation already drawn; the consumer copies it
//! with `non_blocking` (an asynchronous DMA on the current stream) and normalises and augments on
//! the GPU, so no step of the loop waits for the host.

use super::mix::{MixDraw, MixHandler, Mixed};
use crate::data::augment::{self, AugConfig, AugParams};
use crate::data::tensor::{normalize_as, normalize_float};
use crate::data::DataLoaders;
use crate::model::MemoryFormat;
use rand::Rng;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Batches waiting in the channel, besides the one being prepared and the one computing.
pub const QUEUED: usize = 1;

/// How a batch becomes the network's input.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub device: Device,
    pub format: MemoryFormat,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// A batch as the producer leaves it (see [`InputSpec::finish`]).
pub struct Prepared {
    x: Tensor,
    y: Tensor,
    /// Augmentation still to apply (on the device, on CUDA).
    aug: Option<AugParams>,
    /// The batch callback's draw (MixUp/CutMix), applied to the finished input (see
    /// [`InputSpec::finish_train`]).
    mix: Option<MixDraw>,
}

impl InputSpec {
    /// Producer side, for one training batch: gathers (and crops) `idx`, draws its augmentation
    /// with `augment`'s magnitudes, then the batch callback's draw (`cb`), and does on the host what
    /// belongs there.
    pub fn prepare_train<R: Rng>(
        &self,
        dls: &DataLoaders,
        idx: &[usize],
        rng: &mut R,
        augment: Option<&AugConfig>,
        cb: Option<&dyn MixHandler>,
    ) -> Prepared {
        let (xb, yb) = dls.train_batch(idx, rng);
        let aug = augment.map(|cfg| augment::draw(idx.len(), cfg, rng));
        let mix = cb.map(|c| c.draw(&xb, rng));
        self.prepare_mixed(xb, yb, aug, mix)
    }

    /// Producer side, for a training batch already gathered and its draws made.
    pub fn prepare_mixed(
        &self,
        xb: Tensor,
        yb: Tensor,
        aug: Option<AugParams>,
        mix: Option<MixDraw>,
    ) -> Prepared {
        Prepared {
            mix,
            ..self.prepare(xb, yb, aug)
        }
    }

    /// Producer side, for a batch already gathered (u8 NHWC images, labels).
    pub fn prepare(&self, xb: Tensor, yb: Tensor, aug: Option<AugParams>) -> Prepared {
        if self.device.is_cuda() {
            // Page-locked, so the host-to-device copy can run asynchronously.
            return Prepared {
                x: xb.pin_memory(self.device),
                y: yb.pin_memory(self.device),
                aug: aug.map(|a| a.pinned(self.device)),
                mix: None,
            };
        }
        Prepared {
            x: self.to_input(&xb, aug.as_ref()),
            y: yb,
            aug: None,
            mix: None,
        }
    }

    /// Consumer side of a training batch: [`Self::finish`], then the batch callback `cb` (the one
    /// that drew in [`Self::prepare_train`]) with its draw, and what the loss must weigh.
    pub fn finish_train(
        &self,
        mut p: Prepared,
        cb: Option<&dyn MixHandler>,
    ) -> (Tensor, Tensor, Option<Mixed>) {
        let draw = p.mix.take();
        let (x, y) = self.finish(p);
        match (cb, draw) {
            (Some(cb), Some(d)) => {
                let (x, m) = cb.before_batch(&x, &d);
                (x, y, Some(m))
            }
            _ => (x, y, None),
        }
    }

    /// Consumer side: the batch on the device, as the network's input, and its labels.
    pub fn finish(&self, p: Prepared) -> (Tensor, Tensor) {
        if !self.device.is_cuda() {
            return (p.x, p.y);
        }
        let x = p.x.to_device_(self.device, Kind::Uint8, true, false);
        // Class indices (i64) or multi-hot targets (f32), as they are.
        let y = p.y.to_device_(self.device, p.y.kind(), true, false);
        (self.to_input(&x, p.aug.as_ref()), y)
    }

    /// u8 NHWC (on any device) → normalised float input in `format`, augmented when `aug` is given,
    /// on the batch's own device.
    pub fn to_input(&self, xb: &Tensor, aug: Option<&AugParams>) -> Tensor {
        let dev = xb.device();
        match aug {
            None => normalize_as(xb, dev, self.mean, self.std, self.format),
            Some(p) => {
                let raw = xb.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
                // grid_sample writes contiguous NCHW; one reorder after it when channels-last.
                self.format.apply(&normalize_float(
                    &augment::apply(&raw, p),
                    self.mean,
                    self.std,
                ))
            }
        }
    }
}

/// Time spent in one part of the loop, for `FINETUNE_PROFILE`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Overlap {
    /// Producer thread: preparing batches (overlapped with the consumer's compute).
    pub produce: Duration,
    /// Consumer: waiting for a batch the producer had not finished (not overlapped).
    pub wait: Duration,
}

/// Runs `produce(i)` for `i` in `0..n` on a helper thread, at most [`QUEUED`] + 1 batches ahead,
/// and gives each result to `consume(i, item)` on this thread, in order. `consume` returns false to
/// stop early (the producer then stops at its next hand-over). Returns how many items were consumed.
///
/// The helper keeps libtorch's thread settings: `set_num_threads` there would also clear oneDNN's
/// process-wide cache of compiled convolution kernels, which the training thread then rebuilds.
pub fn overlapped<T, P, C>(n: usize, mut produce: P, mut consume: C) -> (usize, Overlap)
where
    T: Send,
    P: FnMut(usize) -> T + Send,
    C: FnMut(usize, T) -> bool,
{
    let mut times = Overlap::default();
    if n == 0 {
        return (0, times);
    }
    let mut done = 0;
    let produce_time = std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<T>(QUEUED);
        let produce = &mut produce;
        let producer = std::thread::Builder::new()
            .name("batch-producer".into())
            .spawn_scoped(s, move || {
                let mut spent = Duration::ZERO;
                for i in 0..n {
                    let t = Instant::now();
                    let item = produce(i);
                    spent += t.elapsed();
                    if tx.send(item).is_err() {
                        break;
                    }
                }
                spent
            });
        let producer = match producer {
            Ok(p) => p,
            // No thread to be had: produce in line, as the serial loop did.
            Err(_) => return None,
        };
        for i in 0..n {
            let t = Instant::now();
            let Ok(item) = rx.recv() else { break };
            times.wait += t.elapsed();
            done += 1;
            if !consume(i, item) {
                break;
            }
        }
        drop(rx);
        Some(
            producer
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    });
    match produce_time {
        Some(p) => times.produce = p,
        None => {
            for i in 0..n {
                let t = Instant::now();
                let item = produce(i);
                times.produce += t.elapsed();
                done += 1;
                if !consume(i, item) {
                    break;
                }
            }
        }
    }
    (done, times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn items_arrive_in_order_and_the_producer_stays_close() {
        let made = AtomicUsize::new(0);
        let mut seen = Vec::new();
        let (n, _) = overlapped(
            10,
            |i| {
                made.fetch_add(1, Ordering::SeqCst);
                i * 10
            },
            |i, v| {
                // Never more than the queue + one in hand + one being made ahead of the consumer.
                assert!(made.load(Ordering::SeqCst) <= i + QUEUED + 2);
                seen.push(v);
                true
            },
        );
        assert_eq!(n, 10);
        assert_eq!(seen, (0..10).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn stopping_early_ends_the_producer() {
        let made = AtomicUsize::new(0);
        let (n, _) = overlapped(
            1000,
            |i| {
                made.fetch_add(1, Ordering::SeqCst);
                i
            },
            |i, _| i < 2,
        );
        assert_eq!(n, 3);
        assert!(made.load(Ordering::SeqCst) <= 3 + QUEUED + 1);
    }

    #[test]
    fn a_sequential_rng_gives_the_same_items_overlapped() {
        use rand::SeedableRng;
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let serial: Vec<u64> = (0..50).map(|_| a.gen()).collect();
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut got = Vec::new();
        overlapped(
            50,
            |_| b.gen::<u64>(),
            |_, v| {
                got.push(v);
                true
            },
        );
        assert_eq!(got, serial);
        assert_eq!(
            a.gen::<u64>(),
            b.gen::<u64>(),
            "the rng ends where the serial loop left it"
        );
    }
}
