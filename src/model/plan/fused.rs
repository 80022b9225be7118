//! oneDNN's fused convolutions, for the inference plan: a convolution with its activation, or with
//! a residual add and a ReLU, computed by one kernel that applies them while the output is still
//! in registers — the fusion onnxruntime's CPU graph and PyTorch inductor's `freezing` make. Each
//! saves a full pass over an activation (read and write) after every convolution.
//!
//! The kernels are the `mkldnn::_convolution_pointwise[_binary]` ops of libtorch_cpu. tch has no
//! binding for them (they belong to the `mkldnn` operator library, not to ATen's functions, which
//! is all tch generates bindings for), but libtorch exports them through the stable C ABI it keeps
//! for AOTInductor (`torch/csrc/inductor/aoti_torch/c/shim_cpu.h`), so they are called here
//! directly, looked up at run time: a libtorch built without oneDNN (some ARM builds) simply has no
//! fusion, instead of failing to link.
//!
//! On CUDA the same two fusions are cuDNN's `cudnn_convolution_relu` and
//! `cudnn_convolution_add_relu` (ATen functions, so tch binds them), for the ReLU networks; other
//! activations run after the convolution there. Not yet run on a GPU in this project: any error
//! from them turns CUDA fusion off for the process and the layer runs unfused.
//!
//! Used only where the result is the unfused layers' up to float rounding and nothing needs their
//! gradients: 4-D, every tensor of one dtype (float32 on the CPU), none requiring grad. Anything
//! else returns `None` and the caller runs the eager layers. `FINETUNE_FUSE=0` turns fusion off (the
//! plan still folds), for comparisons.

use crate::data::layout::MemoryFormat;
use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

type Handle = *mut torch_sys::C_tensor;

/// `aoti_torch_cpu_mkldnn__convolution_pointwise`: X, W, B?, padding, stride, dilation (each a
/// pointer and a length), groups, attr, scalars (pointers to optional doubles), algorithm?, out.
type UnaryFn = unsafe extern "C" fn(
    Handle,
    Handle,
    *mut Handle,
    *const i64,
    i64,
    *const i64,
    i64,
    *const i64,
    i64,
    i64,
    *const c_char,
    *const *const f64,
    i64,
    *const *const c_char,
    *mut Handle,
) -> i32;

/// `aoti_torch_cpu_mkldnn__convolution_pointwise_binary`: X, other, W, B?, padding, stride,
/// dilation, groups, binary attr, alpha?, unary attr?, unary scalars, unary algorithm?, out.
type BinaryFn = unsafe extern "C" fn(
    Handle,
    Handle,
    Handle,
    *mut Handle,
    *const i64,
    i64,
    *const i64,
    i64,
    *const i64,
    i64,
    i64,
    *const c_char,
    *mut f64,
    *const *const c_char,
    *const *const f64,
    i64,
    *const *const c_char,
    *mut Handle,
) -> i32;

/// `aoti_torch_cpu_mkldnn__convolution_pointwise_binary_` (in place: `other = unary(conv(X) +
/// other)`): other, X, W, B?, then as [`BinaryFn`] from padding on; `out` is `other` again.
type BinaryInPlaceFn = BinaryFn;

struct Kernels {
    unary: UnaryFn,
    binary: BinaryFn,
    binary_in_place: BinaryInPlaceFn,
}

/// Set when a kernel refused its arguments: from then on every layer runs unfused (a kernel that
/// failed once would fail on every batch, each time logging libtorch's error).
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Set when a cuDNN fused convolution failed: CUDA layers run unfused from then on.
static CUDA_BROKEN: AtomicBool = AtomicBool::new(false);

/// Fused convolutions run so far, with an activation and with a residual add (tests prove the
/// plan reaches both).
static UNARY: AtomicUsize = AtomicUsize::new(0);
static BINARY: AtomicUsize = AtomicUsize::new(0);
static PACKED: AtomicUsize = AtomicUsize::new(0);

fn kernels() -> Option<&'static Kernels> {
    static K: OnceLock<Option<Kernels>> = OnceLock::new();
    if BROKEN.load(Ordering::Relaxed) {
        return None;
    }
    K.get_or_init(|| {
        if fuse_off() {
            return None;
        }
        let name: &CStr = if cfg!(target_os = "macos") {
            c"libtorch_cpu.dylib"
        } else {
            c"libtorch_cpu.so"
        };
        // SAFETY: dlopen with RTLD_NOLOAD only finds the libtorch_cpu this process already has
        // loaded (it is linked); dlsym'd symbols have the C signatures above (shim_cpu.h).
        unsafe {
            let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            if lib.is_null() {
                return None;
            }
            let unary = libc::dlsym(
                lib,
                c"aoti_torch_cpu_mkldnn__convolution_pointwise".as_ptr(),
            );
            let binary = libc::dlsym(
                lib,
                c"aoti_torch_cpu_mkldnn__convolution_pointwise_binary".as_ptr(),
            );
            let binary_in_place = libc::dlsym(
                lib,
                c"aoti_torch_cpu_mkldnn__convolution_pointwise_binary_".as_ptr(),
            );
            if unary.is_null() || binary.is_null() || binary_in_place.is_null() {
                return None;
            }
            Some(Kernels {
                unary: std::mem::transmute::<*mut libc::c_void, UnaryFn>(unary),
                binary: std::mem::transmute::<*mut libc::c_void, BinaryFn>(binary),
                binary_in_place: std::mem::transmute::<*mut libc::c_void, BinaryInPlaceFn>(
                    binary_in_place,
                ),
            })
        }
    })
    .as_ref()
}

/// Fused convolutions run so far in this process: `(with an activation, with a residual add)`.
pub fn calls() -> (usize, usize) {
    (
        UNARY.load(Ordering::Relaxed),
        BINARY.load(Ordering::Relaxed),
    )
}

/// Whether this process has the fused kernels (libtorch with oneDNN, `FINETUNE_FUSE` not `0`).
pub fn available() -> bool {
    kernels().is_some()
}

/// The activation a convolution applies to its output, as oneDNN post-ops (PyTorch's names:
/// `hardtanh` is a clamp, `swish` is SiLU).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Post {
    None,
    Relu,
    Clamp(f64, f64),
    Silu,
    Hardswish,
}

impl Post {
    fn attr(self) -> (&'static CStr, Vec<f64>) {
        match self {
            Post::None => (c"none", Vec::new()),
            Post::Relu => (c"relu", Vec::new()),
            Post::Clamp(lo, hi) => (c"hardtanh", vec![lo, hi]),
            Post::Silu => (c"swish", Vec::new()),
            Post::Hardswish => (c"hardswish", Vec::new()),
        }
    }
}

/// A convolution's geometry (square stride, `[h, w]` padding, groups; no dilation in the zoo).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub stride: i64,
    pub padding: [i64; 2],
    pub groups: i64,
}

fn eligible(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float && !t.requires_grad())
        && ts[0].dim() == 4
}

fn fuse_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| std::env::var("FINETUNE_FUSE").as_deref() == Ok("0"))
}

/// cuDNN's fused kernels take ReLU networks in one floating dtype throughout (an autocast pass
/// feeds half-precision activations to float32 weights: those run unfused, under autocast).
fn cuda_eligible(ts: &[&Tensor]) -> bool {
    !fuse_off()
        && !CUDA_BROKEN.load(Ordering::Relaxed)
        && ts[0].dim() == 4
        && ts.iter().all(|t| {
            t.device().is_cuda()
                && t.kind() == ts[0].kind()
                && matches!(t.kind(), Kind::Float | Kind::Half | Kind::BFloat16)
                && !t.requires_grad()
        })
}

fn cuda_finish(r: Result<Tensor, tch::TchError>, counter: &AtomicUsize) -> Option<Tensor> {
    match r {
        Ok(t) => {
            counter.fetch_add(1, Ordering::Relaxed);
            Some(t)
        }
        Err(e) => {
            CUDA_BROKEN.store(true, Ordering::Relaxed);
            eprintln!("warning: cuDNN's fused convolution failed ({e}); continuing unfused");
            None
        }
    }
}

/// Takes ownership of a tensor a kernel returned, or marks fusion broken on failure.
fn finish(rc: i32, out: Handle, counter: &AtomicUsize, args: &[&Tensor]) -> Option<Tensor> {
    if rc != 0 || out.is_null() {
        BROKEN.store(true, Ordering::Relaxed);
        let shapes: Vec<String> = args
            .iter()
            .map(|t| match t.is_mkldnn() {
                // A packed weight has no strides (asking libtorch for them is an error).
                true => format!("{:?}/packed", t.size()),
                false => format!("{:?}/{:?}", t.size(), t.stride()),
            })
            .collect();
        eprintln!(
            "warning: oneDNN's fused convolution failed on {} (libtorch logged why); continuing unfused",
            shapes.join(", ")
        );
        return None;
    }
    counter.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the shim returns a new heap `at::Tensor` (new_tensor_handle), which tch frees with
    // `delete`, as its own tensors.
    Some(unsafe { Tensor::from_ptr(out) })
}

/// `w`, a convolution's weight in the inference plan, reordered once into the blocked layout
/// oneDNN's kernel reads for channels-last inputs of `input` size; otherwise every call reorders
/// it again: 1 % of mobilenet_v2's time at batches of 64, but 39 % of oneDNN's at batches of one
/// (`ONEDNN_VERBOSE`), where `serve` with one client runs. onnxruntime pre-packs its weights the
/// same way, PyTorch inductor's `freezing` too. The result is an opaque oneDNN tensor that only
/// [`conv`] and [`conv_add`] take. `None` where there are no kernels or packing fails: the plain
/// weight works, only slower.
pub fn pack(w: &Tensor, g: Geometry, input: &[i64]) -> Option<Tensor> {
    kernels()?;
    if !eligible(&[w]) || input.len() != 4 || pack_off() {
        return None;
    }
    // The reorder op takes a oneDNN tensor, not a strided one.
    let packed = w.contiguous().f_to_mkldnn(Kind::Float).and_then(|m| {
        m.f_mkldnn_reorder_conv2d_weight(g.padding, [g.stride; 2], [1, 1], g.groups, Some(input))
    });
    match packed {
        Ok(p) => {
            PACKED.fetch_add(1, Ordering::Relaxed);
            Some(p)
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            eprintln!(
                "warning: oneDNN could not pack a weight of shape {:?} ({first}); it runs unpacked",
                w.size()
            );
            None
        }
    }
}

/// `FINETUNE_PACK=0` leaves the plan's weights unpacked, to measure what packing brings.
fn pack_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| std::env::var("FINETUNE_PACK").as_deref() == Ok("0"))
}

/// Weights packed so far in this process (tests prove the plan packs).
pub fn packed() -> usize {
    PACKED.load(Ordering::Relaxed)
}

/// `post(conv(x, w) + b)` in one kernel; `None` where fusion does not apply (see the module).
pub fn conv(x: &Tensor, w: &Tensor, b: &Tensor, g: Geometry, post: Post) -> Option<Tensor> {
    if x.device().is_cuda() {
        if post != Post::Relu || !cuda_eligible(&[x, w, b]) {
            return None;
        }
        let r = x.f_cudnn_convolution_relu(w, Some(b), [g.stride; 2], g.padding, [1, 1], g.groups);
        return cuda_finish(r, &UNARY);
    }
    let k = kernels()?;
    if !eligible(&[x, w, b]) {
        return None;
    }
    let (attr, scalars) = post.attr();
    let scalar_ptrs: Vec<*const f64> = scalars.iter().map(|s| s as *const f64).collect();
    let stride = [g.stride; 2];
    let dilation = [1i64; 2];
    let mut bias = b.as_ptr() as Handle;
    let mut out: Handle = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call (tensors borrowed, arrays on this frame); the
    // kernel does not keep them.
    let rc = unsafe {
        (k.unary)(
            x.as_ptr() as Handle,
            w.as_ptr() as Handle,
            &mut bias,
            g.padding.as_ptr(),
            2,
            stride.as_ptr(),
            2,
            dilation.as_ptr(),
            2,
            g.groups,
            attr.as_ptr(),
            scalar_ptrs.as_ptr(),
            scalar_ptrs.len() as i64,
            std::ptr::null(),
            &mut out,
        )
    };
    finish(rc, out, &UNARY, &[x, w, b])
}

/// `conv(x, w) + b + residual`, then a ReLU if `relu`, in one kernel (a residual block's last
/// convolution). oneDNN fuses it for ungrouped convolutions on channels-last tensors; elsewhere
/// `None`, and the caller adds.
///
/// On the CPU the sum is written into `residual`'s memory, which is returned (oneDNN's in-place
/// `sum` post-op). The out-of-place kernel first copies the residual into a new output — 18 % of
/// each such convolution's time in mobilenet_v2, bit-identical results (measured) — and every
/// caller passes a residual nothing reads afterwards: a block's input or its projection, an
/// activation made by the same forward pass and dropped after the block.
pub fn conv_add(
    x: &Tensor,
    residual: &Tensor,
    w: &Tensor,
    b: &Tensor,
    g: Geometry,
    relu: bool,
) -> Option<Tensor> {
    if x.device().is_cuda() {
        if !relu || !cuda_eligible(&[x, residual, w, b]) {
            return None;
        }
        let r = x.f_cudnn_convolution_add_relu(
            w,
            residual,
            1.0,
            Some(b),
            [g.stride; 2],
            g.padding,
            [1, 1],
            g.groups,
        );
        return cuda_finish(r, &BINARY);
    }
    let k = kernels()?;
    // oneDNN cannot describe the residual of a 1×1 output (libtorch: "could not create a memory"),
    // as deep blocks at small input sizes have (resnet18 at 32 px).
    let one_pixel = residual.size().get(2..4) == Some(&[1, 1][..]);
    if !eligible(&[x, residual, w, b]) || g.groups != 1 || !MemoryFormat::Nhwc.holds(x) || one_pixel
    {
        return None;
    }
    // Writing into the residual while reading it as the convolution's input would be wrong: the
    // copying kernel then (no block of the zoo does this).
    let in_place = MemoryFormat::Nhwc.holds(residual) && x.data_ptr() != residual.data_ptr();
    let (kernel, first, second) = match in_place {
        true => (k.binary_in_place, residual, x),
        false => (k.binary, x, residual),
    };
    let stride = [g.stride; 2];
    let dilation = [1i64; 2];
    let mut bias = b.as_ptr() as Handle;
    let mut out: Handle = std::ptr::null_mut();
    let relu_attr = c"relu".as_ptr();
    let unary: *const *const c_char = if relu { &relu_attr } else { std::ptr::null() };
    // SAFETY: as in `conv`; both kernels take (tensor, tensor, W, B?, ...), the in-place one with
    // `other` first.
    let rc = unsafe {
        kernel(
            first.as_ptr() as Handle,
            second.as_ptr() as Handle,
            w.as_ptr() as Handle,
            &mut bias,
            g.padding.as_ptr(),
            2,
            stride.as_ptr(),
            2,
            dilation.as_ptr(),
            2,
            1,
            c"add".as_ptr(),
            std::ptr::null_mut(),
            unary,
            std::ptr::null(),
            0,
            std::ptr::null(),
            &mut out,
        )
    };
    finish(rc, out, &BINARY, &[x, residual, w, b])
}

#[cfg(test)]
#[path = "fused_tests.rs"]
mod tests;
