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

pub fn describe(d: Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
