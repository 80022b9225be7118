//! Numeric precision a network computes in: fp32, or mixed precision through libtorch's autocast
//! (bf16 or fp16), as PyTorch's `torch.autocast(device_type, dtype)`.
//!
//! Under autocast the weights stay fp32 (the optimizer updates fp32 masters); matrix products and
//! convolutions cast their inputs to the lower precision, while reductions, softmax and losses stay
//! fp32 — libtorch's own per-op lists, so the same ops run in the same types as in PyTorch. The
//! network's logits are returned as fp32 either way, so losses, metrics and files do not change type.
//!
//! tch 0.24 binds only libtorch's deprecated CUDA-only switch (`at::autocast::set_enabled`), which
//! can neither pick bf16 nor enable autocast on the CPU, so [`Autocast`] calls libtorch's C++ API
//! (`at::autocast::set_autocast_enabled(DeviceType, bool)`, `set_autocast_dtype`, ...) by its
//! exported names. Both enums are `int8_t`-backed (`c10::DeviceType`, `c10::ScalarType`), which the
//! Itanium C++ ABI passes as plain integers; the functions only read and write thread-local state
//! and do not throw. No crate offers this.

use tch::{Device, Kind};

/// What a network computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// Autocast to bfloat16: fp32's range, so no loss scaling is needed.
    Bf16,
    /// Autocast to float16: its gradients underflow without loss scaling, which training adds
    /// (`train::GradScaler`).
    Fp16,
}

/// `--precision`: a precision, or `auto` (see [`PrecisionChoice::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    #[default]
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

impl PrecisionChoice {
    pub fn name(self) -> &'static str {
        match self {
            PrecisionChoice::Auto => "auto",
            PrecisionChoice::Fp32 => "fp32",
            PrecisionChoice::Bf16 => "bf16",
            PrecisionChoice::Fp16 => "fp16",
        }
    }

    /// `auto` is bf16 autocast on a GPU with bf16 tensor cores (compute capability 8.0 and later:
    /// A100, H100/H200, L4, RTX 30xx on), fp16 with loss scaling on older GPUs (V100, T4), and fp32
    /// on the CPU: CPUs without native bf16 (AVX512-BF16/AMX) run bf16 convolutions slower than
    /// fp32, and the CPU kernels' speed is where the measured tables of this project come from.
    pub fn resolve(self, device: Device) -> Precision {
        match self {
            PrecisionChoice::Fp32 => Precision::Fp32,
            PrecisionChoice::Bf16 => Precision::Bf16,
            PrecisionChoice::Fp16 => Precision::Fp16,
            PrecisionChoice::Auto => match device {
                Device::Cuda(i) => match cuda_compute_capability(i) {
                    Some((major, _)) if major < 8 => Precision::Fp16,
                    _ => Precision::Bf16,
                },
                _ => Precision::Fp32,
            },
        }
    }
}

impl PrecisionChoice {
    pub const NAMES: &'static [&'static str] = &["auto", "fp32", "bf16", "fp16"];
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            "fp32" => Ok(PrecisionChoice::Fp32),
            "bf16" => Ok(PrecisionChoice::Bf16),
            "fp16" => Ok(PrecisionChoice::Fp16),
            _ => Err(format!(
                "unknown precision `{s}`; use auto, fp32, bf16 or fp16"
            )),
        }
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The autocast type, `None` for fp32.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod ffi {
    // libtorch's C++ autocast state (see the module comment for why these are called by name).
    extern "C" {
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device: i8) -> i8;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

/// `c10::DeviceType` values.
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType` values.
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

/// Autocast on for one device type while this guard lives (on this thread: libtorch keeps the
/// state thread-local), as PyTorch's `with torch.autocast(...)`: the previous state comes back on
/// drop, and the outermost guard clears the cache of casted weights, so a weight updated by the
/// optimizer is cast afresh in the next forward.
pub struct Autocast {
    device: i8,
    was_enabled: bool,
    was_dtype: i8,
}

impl Autocast {
    /// `None` (nothing to do) for fp32 and for devices autocast does not cover.
    pub fn enter(device: Device, precision: Precision) -> Option<Autocast> {
        let kind = precision.autocast_kind()?;
        let device = match device {
            Device::Cpu => DEVICE_CPU,
            Device::Cuda(_) => DEVICE_CUDA,
            _ => return None,
        };
        let dtype = if kind == Kind::Half {
            SCALAR_HALF
        } else {
            SCALAR_BFLOAT16
        };
        // SAFETY: libtorch's thread-local autocast setters, with valid enum values (see above).
        unsafe {
            let guard = Autocast {
                device,
                was_enabled: ffi::is_autocast_enabled(device),
                was_dtype: ffi::get_autocast_dtype(device),
            };
            ffi::set_autocast_enabled(device, true);
            ffi::set_autocast_dtype(device, dtype);
            ffi::increment_nesting();
            Some(guard)
        }
    }

    /// Whether autocast is on for `device` on this thread.
    pub fn is_enabled(device: Device) -> bool {
        let d = if device.is_cuda() {
            DEVICE_CUDA
        } else {
            DEVICE_CPU
        };
        // SAFETY: a thread-local read.
        unsafe { ffi::is_autocast_enabled(d) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        unsafe {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_autocast_enabled(self.device, self.was_enabled);
            ffi::set_autocast_dtype(self.device, self.was_dtype);
        }
    }
}

/// The compute capability of CUDA device `index`, from the CUDA runtime that libtorch has already
/// loaded (`cudaDeviceGetAttribute`, a stable C API; tch has no binding for it). `None` when the
/// runtime or the query is not there.
fn cuda_compute_capability(index: usize) -> Option<(i32, i32)> {
    type GetAttribute = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    // cudaDevAttrComputeCapabilityMajor / Minor.
    const MAJOR: i32 = 75;
    const MINOR: i32 = 76;
    for name in [
        c"libcudart.so.13",
        c"libcudart.so.12",
        c"libcudart.so.11.0",
        c"libcudart.so",
    ] {
        // SAFETY: dlopen/dlsym with NUL-terminated names; the symbol has the C signature above.
        unsafe {
            let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            let lib = if lib.is_null() {
                libc::dlopen(name.as_ptr(), libc::RTLD_NOW)
            } else {
                lib
            };
            if lib.is_null() {
                continue;
            }
            let sym = libc::dlsym(lib, c"cudaDeviceGetAttribute".as_ptr());
            if sym.is_null() {
                continue;
            }
            let get: GetAttribute = std::mem::transmute(sym);
            let (mut major, mut minor) = (0, 0);
            if get(&mut major, MAJOR, index as i32) == 0
                && get(&mut minor, MINOR, index as i32) == 0
            {
                return Some((major, minor));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    fn conv() -> (Tensor, Tensor) {
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        (x, w)
    }

    #[test]
    fn autocast_runs_convolutions_in_the_chosen_type_and_restores_the_state() {
        let (x, w) = conv();
        let plain = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(plain.kind(), Kind::Float);
        for (p, kind) in [
            (Precision::Bf16, Kind::BFloat16),
            (Precision::Fp16, Kind::Half),
        ] {
            assert!(!Autocast::is_enabled(Device::Cpu));
            let y = {
                let _g = Autocast::enter(Device::Cpu, p).expect("autocast on the CPU");
                assert!(Autocast::is_enabled(Device::Cpu));
                // Nested guards leave the outer one in force when they end.
                {
                    let _inner = Autocast::enter(Device::Cpu, p);
                }
                assert!(Autocast::is_enabled(Device::Cpu));
                let y = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
                // Losses are on libtorch's fp32 list: they cast back up.
                let loss = y.mse_loss(&y.zeros_like(), tch::Reduction::Mean);
                assert_eq!(loss.kind(), Kind::Float, "{p}");
                y
            };
            assert_eq!(y.kind(), kind, "{p}");
            assert!(!Autocast::is_enabled(Device::Cpu), "{p} left autocast on");
            // The same numbers as the fp32 convolution, to the lower type's precision.
            let err = (y.to_kind(Kind::Float) - &plain)
                .abs()
                .max()
                .double_value(&[]);
            let scale = plain.abs().max().double_value(&[]);
            assert!(err > 0.0 && err < 0.02 * scale, "{p}: {err} of {scale}");
            let after = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
            assert!(after.equal(&plain));
        }
        assert!(Autocast::enter(Device::Cpu, Precision::Fp32).is_none());
    }

    #[test]
    fn auto_is_fp32_on_the_cpu() {
        assert_eq!(PrecisionChoice::Auto.resolve(Device::Cpu), Precision::Fp32);
        assert_eq!(PrecisionChoice::Bf16.resolve(Device::Cpu), Precision::Bf16);
        assert_eq!(PrecisionChoice::Fp16.resolve(Device::Cpu), Precision::Fp16);
    }
}
