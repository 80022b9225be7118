//! The inference plan: forward passes of a network whose weights no longer change (a loaded
//! bundle in predict, evaluate, serve, clean, interpret and the Python package) run with every
//! BatchNorm folded into the convolution before it — onnxruntime's first graph optimisation, done
//! once per layer and kept. Training and its validation never enter the plan: their BatchNorm
//! statistics and weights change between passes.
//!
//! The plan is entered per call, on the calling thread ([`folded`]), rather than switched on a
//! network, because the layers that fold are deep inside every family: a thread-local flag
//! reaches them all without every composite layer forwarding a visitor.

pub mod fused;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use tch::{nn, Kind, Tensor};

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// How many forward passes ran in the plan (tests prove predict, serve and Python use it).
static PASSES: AtomicUsize = AtomicUsize::new(0);

/// `FINETUNE_PLAN=0` runs inference unfolded, to compare the two (bench/predict_bench.py).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FINETUNE_PLAN").as_deref() != Ok("0"))
}

/// Runs `f` (eval-mode forward passes of an inference network) in the plan.
pub fn folded<R>(f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    PASSES.fetch_add(1, Ordering::Relaxed);
    let before = ACTIVE.with(|a| a.replace(true));
    // Restored even if `f` panics, so a caught panic cannot leave training in the plan.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// Whether this thread's forward passes are in the plan.
pub fn active() -> bool {
    ACTIVE.with(|a| a.get())
}

/// Forward passes run in the plan so far, in this process.
pub fn passes() -> usize {
    PASSES.load(Ordering::Relaxed)
}

/// Bumped whenever weights are written into a network, so no layer keeps weights folded from the
/// ones before.
static WEIGHTS: AtomicU64 = AtomicU64::new(0);

/// Weights were loaded into a network (a checkpoint, a bundle, a copy): every layer folds again
/// at its next pass in the plan. Process-wide, because the fold caches sit in the layers and a
/// load writes through the variable store: refolding a few layers needlessly is cheap, serving
/// a fold of the old weights is wrong.
pub fn weights_changed() {
    WEIGHTS.fetch_add(1, Ordering::Release);
}

/// A convolution's weights in the plan: BatchNorm folded in, and on the CPU the folded weight
/// also packed once into the layout oneDNN's kernel reads (`None` where it is not).
#[derive(Debug)]
pub struct Planned {
    pub w: Tensor,
    pub b: Tensor,
    pub packed: Option<Tensor>,
}

impl Planned {
    /// What the fused kernel is given: the packed weight if there is one. The eager fallback
    /// always takes `w` (a packed tensor is opaque to every other op).
    pub fn kernel_weight(&self) -> &Tensor {
        self.packed.as_ref().unwrap_or(&self.w)
    }

    pub fn shallow_clone(&self) -> Planned {
        Planned {
            w: self.w.shallow_clone(),
            b: self.b.shallow_clone(),
            packed: self.packed.as_ref().map(|t| t.shallow_clone()),
        }
    }
}

/// One layer's planned weights: made at its first pass in the plan, packed for that input's
/// size, and kept until weights load again ([`weights_changed`]). An input of another size (a
/// last, smaller batch) gets the same weights, which oneDNN reorders for it as it does unpacked
/// ones.
#[derive(Debug, Default)]
pub struct FoldCache(Mutex<Option<(u64, Planned)>>);

impl FoldCache {
    pub fn get_or_make(&self, make: impl FnOnce() -> Planned) -> Planned {
        let now = WEIGHTS.load(Ordering::Acquire);
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((made, p)) if *made == now => p.shallow_clone(),
            _ => {
                let p = make();
                *slot = Some((now, p.shallow_clone()));
                p
            }
        }
    }
}

/// A BatchNorm (epsilon `eps`) folded into the bias-free convolution weight `ws` before it, with
/// its eval statistics, in float32: `W·s` and `β − μ·s` with `s = γ/√(σ² + ε)` per output
/// channel, so `conv(x, W·s) + β − μ·s` is `bn(conv(x, W))` up to rounding. The weight keeps the
/// convolution's memory format.
pub fn fold_bn(ws: &Tensor, bn: &nn::BatchNorm, eps: f64) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let var = bn.running_var.to_kind(Kind::Float);
        let mut scale = (var + eps).rsqrt();
        if let Some(g) = &bn.ws {
            scale *= g.to_kind(Kind::Float);
        }
        let shift = match &bn.bs {
            Some(b) => b.to_kind(Kind::Float) - bn.running_mean.to_kind(Kind::Float) * &scale,
            None => -(bn.running_mean.to_kind(Kind::Float) * &scale),
        };
        let w = (ws.to_kind(Kind::Float) * scale.view([-1, 1, 1, 1])).to_kind(ws.kind());
        let w = if ws.is_contiguous() {
            w.contiguous()
        } else {
            w
        };
        (w, shift.to_kind(ws.kind()))
    })
}

/// The folded weight `ws` packed for oneDNN's kernel on inputs like `x` after the uneven "SAME"
/// padding `pad` (see [`fused::pack`]); only for channels-last inputs: a packed weight makes
/// oneDNN run channels-last, which would switch an NCHW network's layout under it.
pub fn pack(x: &Tensor, ws: &Tensor, g: fused::Geometry, pad: Option<[i64; 4]>) -> Option<Tensor> {
    if !crate::data::layout::MemoryFormat::Nhwc.holds(x) {
        return None;
    }
    let mut size = x.size();
    if let (Some([l, r, t, b]), 4) = (pad, size.len()) {
        size[2] += t + b;
        size[3] += l + r;
    }
    fused::pack(ws, g, &size)
}
