//! fastai's `Adam` (optimizer.py): decoupled weight decay, β1 = the scheduled momentum, β2 0.99,
//! eps 1e-5 outside the square root, debiasing with the *current* β1.
//!
//! Hand-written because tch's optimizers are libtorch's AdamW, which puts eps differently, cannot
//! change β1 per step, and has no per-parameter "no weight decay" flag.

use tch::Tensor;

/// One parameter under optimisation, with fastai's per-parameter state.
#[derive(Debug)]
pub struct ParamState {
    pub name: String,
    pub tensor: Tensor,
    pub group: usize,
    /// False for BatchNorm parameters and biases (fastai `wd_bn_bias=False`).
    pub do_wd: bool,
    /// BatchNorm parameters train even in frozen groups (fastai `train_bn=True`).
    pub is_bn: bool,
    grad_avg: Option<Tensor>,
    sqr_avg: Option<Tensor>,
    step: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub wd: f64,
    pub sqr_mom: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            wd: 0.01,
            sqr_mom: 0.99,
            eps: 1e-5,
        }
    }
}

#[derive(Debug)]
pub struct Adam {
    pub params: Vec<ParamState>,
    pub cfg: AdamConfig,
}

impl Adam {
    /// `params`: (name, tensor, group, do_wd, is_bn).
    pub fn new(params: Vec<(String, Tensor, usize, bool, bool)>, cfg: AdamConfig) -> Self {
        let params = params
            .into_iter()
            .map(|(name, tensor, group, do_wd, is_bn)| ParamState {
                name,
                tensor,
                group,
                do_wd,
                is_bn,
                grad_avg: None,
                sqr_avg: None,
                step: 0,
            })
            .collect();
        Adam { params, cfg }
    }

    /// Forgets the moments (fastai `clear_state`, done by `freeze`/`unfreeze`).
    pub fn clear_state(&mut self) {
        for p in &mut self.params {
            p.grad_avg = None;
            p.sqr_avg = None;
            p.step = 0;
        }
    }

    /// The gradients the next step would apply (trainable parameters with one).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .filter(|p| p.tensor.requires_grad())
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Freezes every group before `n` (their non-BN parameters stop receiving gradients);
    /// `n = 0` unfreezes everything. Clears the optimizer state, as fastai's `freeze_to`.
    pub fn freeze_to(&mut self, n: usize) {
        for p in &mut self.params {
            let trainable = p.group >= n || p.is_bn;
            let _ = p.tensor.set_requires_grad(trainable);
        }
        self.clear_state();
    }

    /// Deep, contiguous CPU copies of the moments (`grad_avg.<name>`, `sqr_avg.<name>`) and the step counts of
    /// every parameter that has taken a step, for a checkpoint.
    pub fn state(
        &self,
    ) -> (
        Vec<(String, Tensor)>,
        std::collections::BTreeMap<String, u64>,
    ) {
        let mut tensors = Vec::new();
        let mut steps = std::collections::BTreeMap::new();
        for p in &self.params {
            let (Some(ga), Some(sa)) = (&p.grad_avg, &p.sqr_avg) else {
                continue;
            };
            tensors.push((
                format!("grad_avg.{}", p.name),
                super::checkpoint::cpu_copy(ga),
            ));
            tensors.push((
                format!("sqr_avg.{}", p.name),
                super::checkpoint::cpu_copy(sa),
            ));
            steps.insert(p.name.clone(), p.step);
        }
        (tensors, steps)
    }

    /// Restores what [`Self::state`] saved; a parameter absent from `steps` starts fresh.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: &std::collections::BTreeMap<String, u64>,
    ) -> Result<(), String> {
        for p in &mut self.params {
            let Some(&step) = steps.get(&p.name) else {
                p.grad_avg = None;
                p.sqr_avg = None;
                p.step = 0;
                continue;
            };
            let get = |k: String| {
                let t = tensors
                    .get(&k)
                    .ok_or_else(|| format!("optimizer state lacks {k}"))?;
                if t.size() != p.tensor.size() {
                    return Err(format!(
                        "optimizer state {k} has shape {:?}, the parameter {:?}",
                        t.size(),
                        p.tensor.size()
                    ));
                }
                // In the parameter's own layout (channels-last weights get channels-last moments).
                let mut m = p.tensor.detach().empty_like();
                m.copy_(t);
                Ok(m)
            };
            p.grad_avg = Some(get(format!("grad_avg.{}", p.name))?);
            p.sqr_avg = Some(get(format!("sqr_avg.{}", p.name))?);
            p.step = step;
        }
        Ok(())
    }

    /// One step with per-group learning rates `lrs` and momentum (β1) `mom`.
    pub fn step(&mut self, lrs: &[f64], mom: f64) {
        let AdamConfig { wd, sqr_mom, eps } = self.cfg;
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() || !p.tensor.requires_grad() {
                    continue;
                }
                let lr = lrs[p.group.min(lrs.len() - 1)];
                if p.do_wd && wd != 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                }
                // The same operations, in the same order, as
                //   ga = ga·mom + g·(1−mom);  sa = sa·sqr_mom + g·g·(1−sqr_mom)
                //   p −= ga / (sqrt(sa / debias2) + eps) · (lr / debias1)
                // but every intermediate goes through one scratch tensor instead of eight fresh
                // parameter-sized temporaries (bit-identical results).
                let mut tmp = g.empty_like();
                let ga = p.grad_avg.get_or_insert_with(|| g.zeros_like());
                let _ = ga.g_mul_scalar_(mom);
                let _ = g.mul_scalar_out(&tmp, 1.0 - mom);
                let _ = ga.g_add_(&tmp);
                let sa = p.sqr_avg.get_or_insert_with(|| g.zeros_like());
                let _ = sa.g_mul_scalar_(sqr_mom);
                let _ = g.mul_out(&tmp, &g);
                let _ = tmp.g_mul_scalar_(1.0 - sqr_mom);
                let _ = sa.g_add_(&tmp);
                p.step += 1;
                let debias1 = 1.0 - mom.powi(p.step as i32);
                let debias2 = 1.0 - sqr_mom.powi(p.step as i32);
                tmp.copy_(sa);
                let _ = tmp.g_div_scalar_(debias2);
                let _ = tmp.sqrt_();
                let _ = tmp.g_add_scalar_(eps);
                let _ = ga.div_out(&tmp, &tmp);
                let _ = tmp.g_mul_scalar_(lr / debias1);
                let _ = p.tensor.g_sub_(&tmp);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The in-place step computes exactly what the out-of-place formula does, bit for bit, in both
    /// memory formats of a convolution weight.
    #[test]
    fn in_place_step_equals_the_formula_bitwise() {
        for channels_last in [false, true] {
            tch::manual_seed(1);
            let mut w = Tensor::randn([8, 3, 3, 3], (Kind::Float, Device::Cpu));
            if channels_last {
                w = w.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            }
            let p = w.copy().set_requires_grad(true);
            let cfg = AdamConfig::default();
            let mut opt = Adam::new(vec![("w".into(), p.shallow_clone(), 0, true, false)], cfg);
            let (mut want, mut ga, mut sa) = (w.copy(), w.zeros_like(), w.zeros_like());
            for (step, (lr, mom)) in [(1e-2, 0.95), (5e-3, 0.9), (1e-3, 0.85)].iter().enumerate() {
                let g = Tensor::randn([8, 3, 3, 3], (Kind::Float, Device::Cpu));
                opt.zero_grad();
                (&p * &g).sum(Kind::Float).backward();
                opt.step(&[*lr], *mom);
                // The formula as it was written before the scratch tensor.
                want = &want * (1.0 - lr * cfg.wd);
                ga = &ga * *mom + &g * (1.0 - mom);
                sa = &sa * cfg.sqr_mom + &g * &g * (1.0 - cfg.sqr_mom);
                let n = step as i32 + 1;
                let denom = (&sa / (1.0 - cfg.sqr_mom.powi(n))).sqrt() + cfg.eps;
                want = &want - &ga / denom * (lr / (1.0 - mom.powi(n)));
                assert!(
                    p.detach().equal(&want),
                    "step {n}, channels-last {channels_last}"
                );
            }
        }
    }
}
