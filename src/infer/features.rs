//! The features one inference pass reads besides the answer, shared by the forward pass that
//! makes them and the scores that read them.

/// What one pass reads besides the answer, one row per image (see
/// `model::head::FastaiHead::features`).
#[derive(Debug)]
pub struct Features {
    /// The head's input, the concat-pooled body features `[N, 2·nf]`: the embedding, and what the
    /// k-NN score compares.
    pub pooled: tch::Tensor,
    /// The hidden features the last Linear reads `[N, 512]` (Mahalanobis).
    pub hidden: tch::Tensor,
    /// Raw logits `[N, classes]`, before any temperature.
    pub logits: tch::Tensor,
}

impl Features {
    pub fn to_cpu(&self) -> Features {
        let c = |t: &tch::Tensor| t.to_device(tch::Device::Cpu);
        Features {
            pooled: c(&self.pooled),
            hidden: c(&self.hidden),
            logits: c(&self.logits),
        }
    }

    /// Row `i` alone (as a batch of one).
    pub fn row(&self, i: i64) -> Features {
        let r = |t: &tch::Tensor| t.narrow(0, i, 1);
        Features {
            pooled: r(&self.pooled),
            hidden: r(&self.hidden),
            logits: r(&self.logits),
        }
    }

    /// Rows stacked back into one batch.
    pub fn cat(rows: &[Features], widths: [i64; 3]) -> Features {
        let cat = |f: fn(&Features) -> &tch::Tensor, w: i64| {
            if rows.is_empty() {
                tch::Tensor::zeros([0, w], (tch::Kind::Float, tch::Device::Cpu))
            } else {
                tch::Tensor::cat(&rows.iter().map(f).collect::<Vec<_>>(), 0)
            }
        };
        Features {
            pooled: cat(|r| &r.pooled, widths[0]),
            hidden: cat(|r| &r.hidden, widths[1]),
            logits: cat(|r| &r.logits, widths[2]),
        }
    }

    pub fn len(&self) -> usize {
        self.logits.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
