//! Temperature scaling (Guo et al., 2017): one `T > 0` dividing every logit, fitted by minimising
//! the validation set's negative log-likelihood, and the expected calibration error it is judged by.
//! Dividing by `T` never reorders an image's logits, so no predicted class changes (nor a
//! multi-label decision at the default threshold 0.5: `sigmoid(z / T) > 0.5` iff `z > 0`).

/// Equal-width confidence bins of the expected calibration error (Guo et al. use 15).
pub const ECE_BINS: usize = 15;

/// What a set of logits is judged against: one class per image, or a set of labels per image.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    Single(&'a [usize]),
    Multi(&'a [Vec<bool>]),
}

fn log_softmax_at(z: &[f32], beta: f64, y: usize) -> f64 {
    let m = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(beta * v as f64));
    let lse = m + z
        .iter()
        .map(|&v| (beta * v as f64 - m).exp())
        .sum::<f64>()
        .ln();
    beta * z[y] as f64 - lse
}

/// `log sigmoid(x)`, stable for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// The mean negative log-likelihood of `logits / T` (cross-entropy, or binary cross-entropy per
/// label for a multi-label model).
pub fn nll(logits: &[Vec<f32>], targets: Targets, temperature: f64) -> f64 {
    let beta = 1.0 / temperature;
    let n = logits.len().max(1) as f64;
    match targets {
        Targets::Single(y) => {
            -logits
                .iter()
                .zip(y)
                .map(|(z, &y)| log_softmax_at(z, beta, y))
                .sum::<f64>()
                / n
        }
        Targets::Multi(t) => {
            let mut sum = 0.0;
            let mut count = 0usize;
            for (z, t) in logits.iter().zip(t) {
                for (&v, &pos) in z.iter().zip(t) {
                    let x = beta * v as f64;
                    sum -= if pos { log_sigmoid(x) } else { log_sigmoid(-x) };
                    count += 1;
                }
            }
            sum / count.max(1) as f64
        }
    }
}

/// The temperature minimising [`nll`]. The NLL is convex in `1 / T` (a log-sum-exp of a linear
/// function minus a linear one), so a golden-section search on `1 / T ∈ [1/20, 20]` finds its
/// minimum to ~1e-9 without L-BFGS's line-search state; no optimisation crate needed for one
/// scalar.
///
/// A validation set answered entirely right ([`separable`]) has no minimum: its NLL keeps falling
/// as `T → 0`, and the fit would only find the search's bound (`T = 0.05`, which prints every
/// answer at 1.00, wrong ones on new photos included). Nothing then says the model is under- or
/// over-confident, so `T` stays 1.
pub fn fit_temperature(logits: &[Vec<f32>], targets: Targets) -> f64 {
    if logits.is_empty() || separable(logits, targets) {
        return 1.0;
    }
    let f = |beta: f64| nll(logits, targets, 1.0 / beta);
    let (mut a, mut b) = (0.05f64, 20.0f64);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    1.0 / ((a + b) / 2.0)
}

/// Every image's answer is right with a margin: its target's logit is the strict maximum (for a
/// multi-label model, every label's logit is on its side of 0).
pub fn separable(logits: &[Vec<f32>], targets: Targets) -> bool {
    match targets {
        Targets::Single(y) => logits.iter().zip(y).all(|(z, &y)| {
            z.iter()
                .enumerate()
                .all(|(i, &v)| i == y || v < z.get(y).copied().unwrap_or(f32::NEG_INFINITY))
        }),
        Targets::Multi(t) => logits.iter().zip(t).all(|(z, t)| {
            z.iter()
                .zip(t)
                .all(|(&v, &pos)| (v > 0.0) == pos && v != 0.0)
        }),
    }
}

/// Per confidence bin (equal widths; bin m holds ((m−1)/M, m/M], 0 goes to the first): how many
/// predictions, the sum of their confidences and how many were right. Single-label: the
/// confidence is the top probability and "right" whether its class is the target. Multi-label:
/// every label's probability is one prediction, "right" when the label is present (the
/// reliability of each probability as a frequency).
fn bins(probs: &[Vec<f32>], targets: Targets) -> [(usize, f64, f64); ECE_BINS] {
    let mut out = [(0usize, 0f64, 0f64); ECE_BINS];
    let mut add = |p: f64, correct: bool| {
        let m = ((p * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        out[m].0 += 1;
        out[m].1 += p;
        out[m].2 += correct as u8 as f64;
    };
    match targets {
        Targets::Single(y) => {
            for (p, &y) in probs.iter().zip(y) {
                let (top, &pt) = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap_or((0, &0.0));
                add(pt as f64, top == y);
            }
        }
        Targets::Multi(t) => {
            for (p, t) in probs.iter().zip(t) {
                for (&p, &pos) in p.iter().zip(t) {
                    add(p as f64, pos);
                }
            }
        }
    }
    out
}

/// Expected calibration error over [`ECE_BINS`] equal-width bins: `Σ_m |B_m|/n · |acc(B_m) −
/// conf(B_m)|`, with confidence and correctness as `bins` defines them.
pub fn ece(probs: &[Vec<f32>], targets: Targets) -> f64 {
    let b = bins(probs, targets);
    let n: usize = b.iter().map(|x| x.0).sum();
    if n == 0 {
        return 0.0;
    }
    b.iter()
        .filter(|x| x.0 > 0)
        .map(|&(_, conf, hit)| (hit - conf).abs() / n as f64)
        .sum()
}

/// The reliability diagram's bars: per bin, (images, mean confidence, accuracy).
pub fn reliability(probs: &[Vec<f32>], labels: &[usize]) -> Vec<(usize, f64, f64)> {
    bins(probs, Targets::Single(labels))
        .iter()
        .map(|&(n, conf, hit)| match n {
            0 => (0, 0.0, 0.0),
            _ => (n, conf / n as f64, hit / n as f64),
        })
        .collect()
}

/// Softmax (or sigmoids) of `logits / T`, in f32 like the network's own.
pub fn probabilities(logits: &[Vec<f32>], temperature: f64, multi: bool) -> Vec<Vec<f32>> {
    let beta = 1.0 / temperature;
    logits
        .iter()
        .map(|z| {
            if multi {
                return z
                    .iter()
                    .map(|&v| (1.0 / (1.0 + (-(beta * v as f64)).exp())) as f32)
                    .collect();
            }
            let m = z
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(beta * v as f64));
            let e: Vec<f64> = z.iter().map(|&v| (beta * v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| (v / s) as f32).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over-confident logits (a sharp softmax that is right 70 % of the time) want T > 1, and the
    /// fitted T is the NLL's minimum: nudging it either way raises the NLL.
    #[test]
    fn temperature_minimises_nll_and_softens_overconfidence() {
        let mut logits = Vec::new();
        let mut y = Vec::new();
        for i in 0..100 {
            logits.push(vec![8.0, 0.0, 0.0]);
            y.push(if i % 10 < 7 { 0 } else { 1 + i % 2 });
        }
        let t = fit_temperature(&logits, Targets::Single(&y));
        assert!(t > 1.5, "T = {t}");
        let at = nll(&logits, Targets::Single(&y), t);
        for dt in [0.99, 1.01] {
            assert!(nll(&logits, Targets::Single(&y), t * dt) > at);
        }
        // softmax(8/T, 0, 0) at the optimum gives the class its frequency, 0.7.
        let p = probabilities(&logits[..1], t, false);
        assert!((p[0][0] - 0.7).abs() < 1e-3, "{p:?}");
        assert!(ece(&probabilities(&logits, t, false), Targets::Single(&y)) < 1e-3);
    }

    /// All right: the NLL falls all the way to the bound, so no temperature is fitted; one wrong
    /// answer gives the NLL a minimum inside the bounds again.
    #[test]
    fn a_validation_set_without_errors_keeps_t_at_one() {
        let mut logits: Vec<Vec<f32>> = (0..20).map(|i| vec![3.0 + (i % 3) as f32, 0.0]).collect();
        let mut y = vec![0; 20];
        assert!(separable(&logits, Targets::Single(&y)));
        assert_eq!(fit_temperature(&logits, Targets::Single(&y)), 1.0);
        let multi: Vec<Vec<bool>> = logits.iter().map(|_| vec![true, false]).collect();
        let pos: Vec<Vec<f32>> = logits.iter().map(|z| vec![z[0], -1.0]).collect();
        assert_eq!(fit_temperature(&pos, Targets::Multi(&multi)), 1.0);
        logits.push(vec![4.0, 0.0]);
        y.push(1);
        assert!(!separable(&logits, Targets::Single(&y)));
        let t = fit_temperature(&logits, Targets::Single(&y));
        assert!(t > 0.06 && t < 19.0 && t != 1.0, "T = {t}");
    }

    #[test]
    fn ece_of_a_perfectly_calibrated_and_a_wrong_model() {
        // Confidence 0.8, right 8 times in 10: calibrated.
        let probs: Vec<Vec<f32>> = (0..10).map(|_| vec![0.8, 0.2]).collect();
        let y: Vec<usize> = (0..10).map(|i| usize::from(i >= 8)).collect();
        assert!(ece(&probs, Targets::Single(&y)) < 1e-6);
        // Always wrong at 0.8: off by 0.8.
        let y = vec![1; 10];
        assert!((ece(&probs, Targets::Single(&y)) - 0.8).abs() < 1e-6);
    }

    #[test]
    fn multi_label_nll_is_binary_cross_entropy() {
        let logits = vec![vec![0.0f32, 2.0]];
        let t = vec![vec![true, false]];
        let want = (2f64.ln() + (1.0 + 2f64.exp()).ln()) / 2.0;
        assert!((nll(&logits, Targets::Multi(&t), 1.0) - want).abs() < 1e-12);
    }
}
