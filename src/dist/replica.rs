//! What keeps data-parallel replicas in step: rank 0's weights at the start, gradients averaged
//! after every backward (bucketed all-reduce, as DDP does, without DDP's overlap of communication
//! and backward: c10d's `Reducer` is the upgrade path), metrics summed, weights compared.

use super::{Backend, DistError, Group, ReduceOp};
use std::hash::Hasher;
use tch::{Device, Kind, Tensor};

/// DDP's default bucket size (`bucket_cap_mb=25`): big enough to amortise a collective's latency,
/// small enough that the concatenated copy stays cheap.
const BUCKET_BYTES: i64 = 25 << 20;

pub struct Replica {
    pub group: Group,
    /// Where small tensors for collectives live (NCCL reduces only CUDA tensors).
    device: Device,
}

impl Replica {
    pub fn new(group: Group, device: Device) -> Replica {
        let device = match group.backend {
            Backend::Nccl => device,
            Backend::Gloo => Device::Cpu,
        };
        Replica { group, device }
    }

    pub fn rank(&self) -> usize {
        self.group.rank
    }

    pub fn world(&self) -> usize {
        self.group.world
    }

    pub fn is_leader(&self) -> bool {
        self.group.rank == 0
    }

    /// Every rank's `vars` (parameters and BatchNorm statistics) become rank 0's, so the replicas
    /// start identical whatever each loaded or drew.
    pub fn broadcast_vars(&self, vars: &[Tensor]) -> Result<(), DistError> {
        tch::no_grad(|| {
            for bucket in buckets(vars, |_| true) {
                let flat = flatten(vars, &bucket, None);
                self.group.broadcast(std::slice::from_ref(&flat), 0)?;
                unflatten(&flat, vars, &bucket, 1.0);
            }
            Ok(())
        })
    }

    /// Averages `grads` (the trainable parameters' gradients, in the same order on every rank)
    /// across the ranks in place, and sums `extras` (the batch loss, a stop vote: a 1-D float
    /// tensor on the gradients' device) in the same collective; returns the summed extras.
    pub fn average_grads(&self, grads: &[Tensor], extras: &Tensor) -> Result<Tensor, DistError> {
        tch::no_grad(|| {
            let mut b = buckets(grads, |g| g.defined());
            if b.is_empty() {
                b.push(Vec::new());
            }
            let last = b.len() - 1;
            let scale = 1.0 / self.world() as f64;
            let n_extra = extras.numel() as i64;
            let mut summed = extras.shallow_clone();
            for (i, bucket) in b.iter().enumerate() {
                let ex = (i == last).then_some(extras);
                let flat = flatten(grads, bucket, ex);
                self.group
                    .all_reduce(std::slice::from_ref(&flat), ReduceOp::Sum)?;
                unflatten(&flat, grads, bucket, scale);
                if i == last {
                    let n = flat.size()[0];
                    summed = flat.narrow(0, n - n_extra, n_extra).to_kind(Kind::Float);
                }
            }
            Ok(summed)
        })
    }

    /// Element-wise sums of `vals` over the ranks (in f64: counts and loss sums stay exact).
    pub fn sum(&self, vals: &[f64]) -> Result<Vec<f64>, DistError> {
        let t = Tensor::from_slice(vals).to_device(self.device);
        self.group
            .all_reduce(std::slice::from_ref(&t), ReduceOp::Sum)?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu)).unwrap_or_default())
    }

    /// Refuses to go on when the ranks were started differently: each `(what, value)` is this
    /// rank's description of one setting; the first that differs from rank 0's is named, with the
    /// ranks that differ and this rank's value.
    pub fn check_same(&self, fields: &[(&str, String)]) -> Result<(), DistError> {
        let (w, k) = (self.world(), fields.len());
        let mut mine = vec![0i64; w * k];
        for (j, (_, v)) in fields.iter().enumerate() {
            // Below 2^52 so the f64 sum of one non-zero entry is exact.
            mine[self.rank() * k + j] = (hash_bytes(v.as_bytes()) >> 12) as i64;
        }
        let t = Tensor::from_slice(&mine).to_device(self.device);
        self.group
            .all_reduce(std::slice::from_ref(&t), ReduceOp::Sum)?;
        let all = Vec::<i64>::try_from(t.to_device(Device::Cpu)).unwrap_or_default();
        for (j, (what, v)) in fields.iter().enumerate() {
            let differ: Vec<String> = (1..w)
                .filter(|&r| all[r * k + j] != all[j])
                .map(|r| r.to_string())
                .collect();
            if !differ.is_empty() {
                return Err(DistError::Mismatch {
                    what: what.to_string(),
                    detail: format!(
                        "rank(s) {} differ from rank 0 (rank {} has {v})",
                        differ.join(", "),
                        self.rank()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether every rank holds the same `vars`, bit for bit.
    pub fn same_weights(&self, vars: &[Tensor]) -> Result<bool, DistError> {
        let h = weights_hash(vars);
        match self.check_same(&[("weights", format!("{h:016x}"))]) {
            Ok(()) => Ok(true),
            Err(DistError::Mismatch { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A hash of the tensors' bytes, in order (the cross-rank weight check).
pub fn weights_hash(vars: &[Tensor]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in vars {
        let c = v.detach().to_device(Device::Cpu).contiguous();
        let n = c.numel();
        let mut buf = vec![0u8; n * c.kind().elt_size_in_bytes()];
        c.copy_data_u8(&mut buf, n);
        h.write(&buf);
    }
    h.finish()
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(b);
    h.finish()
}

/// Indices of `ts` (those `keep` accepts) in consecutive groups of one dtype, each at most
/// [`BUCKET_BYTES`] unless one tensor alone is bigger.
fn buckets(ts: &[Tensor], keep: impl Fn(&Tensor) -> bool) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let (mut bytes, mut kind) = (0i64, None);
    for (i, t) in ts.iter().enumerate() {
        if !keep(t) {
            continue;
        }
        let b = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let fits = kind == Some(t.kind()) && bytes + b <= BUCKET_BYTES;
        if !fits || out.is_empty() {
            out.push(Vec::new());
            bytes = 0;
            kind = Some(t.kind());
        }
        if let Some(v) = out.last_mut() {
            v.push(i);
        }
        bytes += b;
    }
    out
}

/// One contiguous buffer of the bucket's tensors, then `extras` (in the bucket's dtype).
fn flatten(ts: &[Tensor], bucket: &[usize], extras: Option<&Tensor>) -> Tensor {
    let mut parts: Vec<Tensor> = bucket.iter().map(|&i| ts[i].reshape([-1])).collect();
    let (kind, device) = match (bucket.first(), extras) {
        (Some(&i), _) => (ts[i].kind(), ts[i].device()),
        (None, Some(e)) => (e.kind(), e.device()),
        (None, None) => (Kind::Float, Device::Cpu),
    };
    if let Some(e) = extras {
        parts.push(e.reshape([-1]).to_kind(kind).to_device(device));
    }
    if parts.is_empty() {
        return Tensor::zeros([0], (kind, device));
    }
    Tensor::cat(&parts, 0)
}

/// Copies the reduced buffer back into the bucket's tensors, times `scale`.
fn unflatten(flat: &Tensor, ts: &[Tensor], bucket: &[usize], scale: f64) {
    let mut off = 0i64;
    for &i in bucket {
        let t = &ts[i];
        let n = t.numel() as i64;
        let mut dst = t.shallow_clone();
        let src = flat.narrow(0, off, n).view(t.size().as_slice());
        if scale == 1.0 {
            dst.copy_(&src);
        } else {
            dst.copy_(&(src * scale));
        }
        off += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_order_split_by_size_and_skip_the_undefined() {
        let big = Tensor::zeros([(BUCKET_BYTES / 4) - 10], (Kind::Float, Device::Cpu));
        let small = Tensor::zeros([20], (Kind::Float, Device::Cpu));
        let ts = vec![small.shallow_clone(), big, small.shallow_clone(), small];
        assert_eq!(buckets(&ts, |_| true), vec![vec![0], vec![1], vec![2, 3]]);
        assert_eq!(buckets(&ts, |t| t.size()[0] == 20), vec![vec![0, 2, 3]]);
    }

    #[test]
    fn flatten_then_unflatten_gives_the_tensors_back_scaled() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0]);
        let ts = vec![a.copy(), b.copy()];
        let flat = flatten(&ts, &[0, 1], Some(&Tensor::from_slice(&[7.0f32])));
        assert_eq!(
            Vec::<f32>::try_from(&flat).unwrap(),
            [1., 2., 3., 4., 5., 6., 7.]
        );
        unflatten(&flat, &ts, &[0, 1], 0.5);
        assert_eq!(
            Vec::<f32>::try_from(ts[0].reshape([-1])).unwrap(),
            [0.5, 1., 1.5, 2.]
        );
        assert_eq!(Vec::<f32>::try_from(&ts[1]).unwrap(), [2.5, 3.]);
    }

    #[test]
    fn the_weights_hash_sees_one_bit() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]);
        let b = Tensor::from_slice(&[1.0f32, f32::from_bits(2.0f32.to_bits() + 1)]);
        assert_ne!(weights_hash(&[a.copy()]), weights_hash(&[b]));
        assert_eq!(weights_hash(&[a.copy()]), weights_hash(&[a]));
    }
}
