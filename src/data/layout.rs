//! The layout of a batch in memory: NCHW (contiguous) or NHWC ("channels-last", PyTorch's
//! `torch.channels_last`: the logical shape stays `[N, C, H, W]`, the strides are those of an
//! `[N, H, W, C]` array).
//!
//! It lives with the data because the decoded images already are NHWC: a u8 `[N, H, W, 3]` batch
//! permuted to `[N, 3, H, W]` *is* a channels-last tensor, so producing a network's input in either
//! layout is a data step; which layout a network runs in is chosen in `model::memory_format`.

use tch::Tensor;

/// The layout a network runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryFormat {
    Nchw,
    Nhwc,
}

impl MemoryFormat {
    pub fn name(self) -> &'static str {
        match self {
            MemoryFormat::Nchw => "nchw",
            MemoryFormat::Nhwc => "nhwc",
        }
    }

    /// `x` (4-D) in this layout: itself, without a copy, when it already is; anything else unchanged.
    pub fn apply(self, x: &Tensor) -> Tensor {
        if x.dim() != 4 {
            return x.shallow_clone();
        }
        match self {
            MemoryFormat::Nchw => x.contiguous(),
            // contiguous() of the NHWC view is a no-op when `x` already is channels-last.
            MemoryFormat::Nhwc => x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
        }
    }

    /// Whether `x`'s strides are this layout's (for a 4-D tensor).
    pub fn holds(self, x: &Tensor) -> bool {
        if x.dim() != 4 {
            return false;
        }
        match self {
            MemoryFormat::Nchw => x.is_contiguous(),
            MemoryFormat::Nhwc => x.permute([0, 2, 3, 1]).is_contiguous(),
        }
    }
}

impl std::fmt::Display for MemoryFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn nhwc_is_a_view_of_the_u8_batch_and_nchw_a_copy() {
        let u8 = Tensor::arange(2 * 5 * 4 * 3, (Kind::Uint8, Device::Cpu)).view([2, 5, 4, 3]);
        let x = u8.permute([0, 3, 1, 2]);
        assert!(MemoryFormat::Nhwc.holds(&x) && !MemoryFormat::Nchw.holds(&x));
        let cl = MemoryFormat::Nhwc.apply(&x);
        assert_eq!(
            cl.data_ptr(),
            u8.data_ptr(),
            "already channels-last: no copy"
        );
        let c = MemoryFormat::Nchw.apply(&x);
        assert!(MemoryFormat::Nchw.holds(&c) && !MemoryFormat::Nhwc.holds(&c));
        assert_ne!(c.data_ptr(), u8.data_ptr());
        assert!(c.equal(&x) && cl.equal(&x), "same values either way");
        let back = MemoryFormat::Nhwc.apply(&c);
        assert!(MemoryFormat::Nhwc.holds(&back) && back.equal(&x));
    }
}
