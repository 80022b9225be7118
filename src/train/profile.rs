//! `FINETUNE_PROFILE=1`: where each epoch's time goes, measured around the parts of the loop.

use std::time::{Duration, Instant};
use tch::Device;

/// Where an epoch's time went, summed over its batches; printed after every epoch when the
/// environment variable `FINETUNE_PROFILE` is set. On CUDA the device is synchronised around each
/// part when profiling (only then), so the parts are real GPU times.
#[derive(Debug, Default, Clone, Copy)]
pub struct PhaseTimes {
    pub batches: usize,
    /// Producer thread preparing batches (gather, crop, augmentation, u8 → float), overlapped.
    pub prepare: Duration,
    /// Training loop waiting for the producer (the part of `prepare` not hidden).
    pub wait: Duration,
    pub forward: Duration,
    pub backward: Duration,
    pub step: Duration,
    /// Data-parallel: averaging gradients across the ranks (between backward and step).
    pub sync: Duration,
    /// Reading losses back to the host.
    pub read: Duration,
    pub validate: Duration,
    /// In the batch callbacks (tracking's per-step scalars), part of `read`.
    pub callbacks: Duration,
}

impl PhaseTimes {
    pub fn line(&self, phase: &str, epoch: usize, total: f64) -> String {
        let s = |d: Duration| d.as_secs_f64();
        format!(
            "PROFILE {phase} epoch {epoch}: {} batches, total {total:.2}s = wait for batch {:.2}s + forward {:.2}s + backward {:.2}s + optimizer step {:.2}s + gradient all-reduce {:.2}s + loss reads {:.2}s (batch callbacks {:.3}s) + validation {:.2}s (+ {:.2}s other); batch preparation {:.2}s on the producer thread",
            self.batches,
            s(self.wait),
            s(self.forward),
            s(self.backward),
            s(self.step),
            s(self.sync),
            s(self.read),
            s(self.callbacks),
            s(self.validate),
            (total
                - s(self.wait)
                - s(self.forward)
                - s(self.backward)
                - s(self.step)
                - s(self.sync)
                - s(self.read)
                - s(self.validate))
            .max(0.0),
            s(self.prepare),
        )
    }
}

/// Times one part of the loop when profiling (synchronising CUDA first, so the work is counted
/// where it runs).
pub(crate) struct Timer {
    on: bool,
    device: Device,
    t: Instant,
}

impl Timer {
    pub(crate) fn start(on: bool, device: Device) -> Self {
        let t = Timer {
            on,
            device,
            t: Instant::now(),
        };
        t.sync();
        Timer {
            t: Instant::now(),
            ..t
        }
    }
    fn sync(&self) {
        if let (true, Device::Cuda(i)) = (self.on, self.device) {
            tch::Cuda::synchronize(i as i64);
        }
    }
    /// Adds the time since the last lap to `into`.
    pub(crate) fn lap(&mut self, into: &mut Duration) {
        if self.on {
            self.sync();
            let now = Instant::now();
            *into += now - self.t;
            self.t = now;
        }
    }
}
