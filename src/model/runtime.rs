//! Where and how a network computes: the device, the memory format and the precision, chosen by the
//! user (`--device`, `--memory-format`, `--precision`, or the Python arguments) and passed to
//! whatever builds a network, instead of process-wide settings that a second caller in the same
//! process (a Python session that trains in bf16 and then loads a model) would inherit.

use super::{FormatChoice, PrecisionChoice};
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    pub device: Device,
    pub memory_format: FormatChoice,
    pub precision: PrecisionChoice,
}

/// A device with the measured defaults: `auto` memory format and precision.
impl From<Device> for Runtime {
    fn from(device: Device) -> Self {
        Runtime {
            device,
            memory_format: FormatChoice::Auto,
            precision: PrecisionChoice::Auto,
        }
    }
}
