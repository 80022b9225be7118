//! Compute device selection (`--device auto|cpu|cuda|cuda:N`).

use tch::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`; use auto, cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("device `{0}` requested but CUDA is not available (libtorch without CUDA, or no GPU/driver)")]
    NoCuda(String),
    #[error("device `{asked}` requested but only {count} CUDA device(s) are visible")]
    NoSuchGpu { asked: String, count: usize },
}

pub fn parse_device(s: &str) -> Result<Device, DeviceError> {
    if s != "cpu" {
        load_cuda();
    }
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let idx = match s {
                "cuda" | "gpu" => 0,
                _ => s
                    .strip_prefix("cuda:")
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| DeviceError::Unknown(s.to_string()))?,
            };
            if !tch::Cuda::is_available() {
                return Err(DeviceError::NoCuda(s.to_string()));
            }
            let count = tch::Cuda::device_count() as usize;
            if idx >= count {
                return Err(DeviceError::NoSuchGpu {
                    asked: s.to_string(),
                    count,
                });
            }
            Ok(Device::Cuda(idx))
        }
    }
}

/// [`parse_device`], then the process set up for it: on CUDA, cuDNN's benchmark mode (every batch
/// of a run has the same shape, so timing the candidate convolution algorithms once, on the first
/// batch, and keeping the fastest pays back within a few batches; fastai turns it on too).
pub fn select(s: &str) -> Result<Device, DeviceError> {
    let device = parse_device(s)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}

/// Loads libtorch's CUDA half when this machine has an NVIDIA driver; does nothing otherwise.
///
/// Nothing in our code calls libtorch_cuda's symbols (its kernels register themselves with the
/// dispatcher when the library loads), so the linker would drop it and CUDA would never appear.
/// Linking it unconditionally (`--no-as-needed`) made every run on a CPU-only machine load it too:
/// 0.19 s and 230 MB of resident memory before `main`, measured here (libtorch_cpu itself: 0.37 s) —
/// a third of a cached training run's start-up. So it is loaded here, on the first device choice
/// other than `cpu`, and only when the driver library (`libcuda.so.1`) is there to use it. The
/// name is found through the binary's rpath, like the libraries linked at build time.
pub fn load_cuda() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: dlopen with NUL-terminated names; the handles are kept for the process's life.
        unsafe {
            let driver = libc::dlopen(
                c"libcuda.so.1".as_ptr(),
                libc::RTLD_LAZY | libc::RTLD_GLOBAL,
            );
            if driver.is_null() {
                return;
            }
        }
        load_torch_cuda();
    });
}

/// Loads libtorch_cuda (when this libtorch has one); whether it is now in the process.
pub fn load_torch_cuda() -> bool {
    // SAFETY: as in `load_cuda`.
    unsafe {
        !libc::dlopen(
            c"libtorch_cuda.so".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL,
        )
        .is_null()
    }
}

pub fn describe(d: Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// What `finetune --version` reports of the compute libraries this process runs on.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The libtorch version compiled against (torch-sys insists it is the one linked).
    pub libtorch: &'static str,
    /// The libtorch_cpu the loader actually chose: the first thing to check when two torch
    /// installs compete.
    pub libtorch_path: Option<std::path::PathBuf>,
    /// CUDA devices usable, or why none is.
    pub cuda: Result<usize, &'static str>,
}

/// Probes the runtime: loads libtorch_cuda when an NVIDIA driver is present, as a CUDA run would
/// (and only then, like every other command).
pub fn runtime() -> Runtime {
    // SAFETY: dlopen of a NUL-terminated name; the handle is kept, as `load_cuda` keeps it.
    let driver = unsafe {
        !libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_GLOBAL,
        )
        .is_null()
    };
    let cuda = if !driver {
        Err("no NVIDIA driver found")
    } else if !load_torch_cuda() {
        Err("this libtorch has no CUDA")
    } else {
        load_cuda();
        if tch::Cuda::is_available() {
            Ok(tch::Cuda::device_count().max(0) as usize)
        } else {
            Err("the driver sees no usable GPU")
        }
    };
    Runtime {
        libtorch: option_env!("FINETUNE_LIBTORCH_VERSION").unwrap_or("unknown"),
        libtorch_path: loaded_library("libtorch_cpu.so"),
        cuda,
    }
}

/// The path of a shared library mapped into this process (Linux's /proc/self/maps).
fn loaded_library(name: &str) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next() == Some(name))
        .map(std::path::PathBuf::from)
}
