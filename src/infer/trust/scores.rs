//! The "unknown" scores of `bundle::Score`, computed from a batch's penultimate features `h`
//! `[N, 512]` and logits `z`, and the training statistics the distance scores measure against.
//! Higher always means "more like the training data" (distances are negated).

use crate::bundle::{FeatureStats, Score};
use crate::infer::features::Features;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

/// At most this many training images' pooled features are kept for the k-NN score (a seeded
/// sample beyond it), stored as fp16: 2048 × 2560 (mobilenet_v2) = 10 MiB in the bundle, one
/// `[N, 2048]` product per batch.
pub const BANK: usize = 2048;

/// The k-NN score's default neighbour (measured in docs/benchmarks.md "Knowing what it does not
/// know"; Sun et al. use k = 50 on CIFAR-10's 50,000 images, a larger k for a larger bank).
pub const DEFAULT_K: usize = 10;

/// Every score of a batch, one value per image.
pub fn score(kind: Score, f: &Features, stats: Option<&FeatureStats>, k: usize) -> Vec<f64> {
    let z = &f.logits;
    let s = match (kind, stats) {
        (Score::Msp, _) => z.softmax(-1, Kind::Float).max_dim(1, false).0,
        (Score::Energy, _) => z.logsumexp([1].as_slice(), false),
        (Score::Mahalanobis, Some(st)) => -mahalanobis_min(&f.hidden, st),
        (Score::Knn, Some(st)) => -knn_distance(&f.pooled, &st.bank, k),
        // No statistics (a bundle without ood.safetensors): nothing to measure against.
        (_, None) => Tensor::full([z.size()[0]], f64::NAN, (Kind::Float, z.device())),
    };
    Vec::<f64>::try_from(s.to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default()
}

/// `min_c (h − μ_c)ᵀ P (h − μ_c)`, expanded so no `[N, C, d]` tensor is formed.
fn mahalanobis_min(h: &Tensor, st: &FeatureStats) -> Tensor {
    let h = h.to_kind(Kind::Double);
    let p = st.precision.to_device(h.device()).to_kind(Kind::Double);
    let mu = st.means.to_device(h.device()).to_kind(Kind::Double);
    let hp = h.matmul(&p);
    let hh = (&hp * &h).sum_dim_intlist([1].as_slice(), false, Kind::Double);
    let cross = hp.matmul(&mu.transpose(0, 1));
    let mm = (mu.matmul(&p) * &mu).sum_dim_intlist([1].as_slice(), false, Kind::Double);
    let d = hh.unsqueeze(1) - cross * 2.0 + mm.unsqueeze(0);
    d.min_dim(1, false).0.to_kind(Kind::Float)
}

/// Rows scaled to unit length (a zero row stays zero).
pub fn normalize(h: &Tensor) -> Tensor {
    let n = h
        .norm_scalaropt_dim(2, [1].as_slice(), true)
        .clamp_min(1e-12);
    h / n
}

/// The Euclidean distance of each normalised row of `h` to its `k`-th nearest row of `bank`
/// (`k` clamped to the bank's size).
fn knn_distance(h: &Tensor, bank: &Tensor, k: usize) -> Tensor {
    let bank = bank.to_device(h.device()).to_kind(Kind::Float);
    let k = k.clamp(1, bank.size()[0] as usize) as i64;
    let sims = normalize(&h.to_kind(Kind::Float)).matmul(&bank.transpose(0, 1));
    let kth = sims.topk(k, 1, true, true).0.select(1, k - 1);
    (-(kth * 2.0) + 2.0).clamp_min(0.0).sqrt()
}

/// Fits the distance scores' statistics on training features with one class per row (`labels`;
/// `None` for a multi-label model, which gets one mean): Mahalanobis on the hidden features, the
/// k-NN bank from the pooled ones.
///
/// The covariance is the tied estimate of Lee et al., `1/N Σ (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`,
/// shrunk toward `tr(Σ)/d · I` by `d / (d + N)` so it stays invertible when there are fewer
/// images than dimensions (a few hundred photos, 512 features) and fades as data grows.
pub fn fit_stats(
    f: &Features,
    labels: Option<&[usize]>,
    classes: usize,
    seed: u64,
) -> FeatureStats {
    let h = f.hidden.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let (n, d) = (h.size()[0], h.size()[1]);
    let rows = if labels.is_some() { classes } else { 1 };
    let idx: Vec<i64> = match labels {
        Some(l) => l.iter().map(|&c| c as i64).collect(),
        None => vec![0; n as usize],
    };
    let idx_t = Tensor::from_slice(&idx);
    let sums =
        Tensor::zeros([rows as i64, d], (Kind::Double, tch::Device::Cpu)).index_add(0, &idx_t, &h);
    let counts = Tensor::zeros([rows as i64], (Kind::Double, tch::Device::Cpu)).index_add(
        0,
        &idx_t,
        &Tensor::ones([n], (Kind::Double, tch::Device::Cpu)),
    );
    let means = sums / counts.clamp_min(1.0).unsqueeze(1);
    let centred = &h - means.index_select(0, &idx_t);
    let cov = centred.transpose(0, 1).matmul(&centred) / (n.max(1) as f64);
    let alpha = d as f64 / (d + n) as f64;
    let scale = cov.trace().double_value(&[]) / d as f64;
    let eye = Tensor::eye(d, (Kind::Double, tch::Device::Cpu));
    let shrunk = cov * (1.0 - alpha) + eye * (alpha * scale.max(1e-12));
    let precision = Tensor::linalg_inv(&shrunk);
    let mut order: Vec<i64> = (0..n).collect();
    if order.len() > BANK {
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        order.truncate(BANK);
        order.sort_unstable();
    }
    let pooled = f.pooled.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    // Rounded to fp16 here as in the file, so the thresholds fitted now hold for the bundle.
    let bank = normalize(&pooled.index_select(0, &Tensor::from_slice(&order)))
        .to_kind(Kind::Half)
        .to_kind(Kind::Float);
    FeatureStats {
        means: means.to_kind(Kind::Float),
        precision: precision.to_kind(Kind::Float),
        bank,
    }
}

/// Whether a score makes an image unknown at `threshold`: below it, or not a number (nothing to
/// vouch for the image).
pub fn below(score: f64, threshold: f64) -> bool {
    !matches!(
        score.partial_cmp(&threshold),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    )
}

/// AUROC of telling `inside` (positives) from `outside` by score: the probability that a random
/// inside image scores above a random outside one, ties counting half (Mann–Whitney U).
pub fn auroc(inside: &[f64], outside: &[f64]) -> f64 {
    if inside.is_empty() || outside.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = inside
        .iter()
        .map(|&s| (s, true))
        .chain(outside.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += all[i..=j].iter().filter(|x| x.1).count() as f64 * avg;
        i = j + 1;
    }
    let (p, q) = (inside.len() as f64, outside.len() as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// The share of `outside` accepted at the threshold that accepts `tpr` of `inside`.
pub fn fpr_at_tpr(inside: &[f64], outside: &[f64], tpr: f64) -> f64 {
    let mut s = inside.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let t = crate::bundle::quantile(&s, 1.0 - tpr);
    outside.iter().filter(|&&x| x >= t).count() as f64 / outside.len().max(1) as f64
}

/// Ascending `scores` thinned to at most 1001 evenly spaced order statistics (all of them when
/// fewer), enough to read any threshold to 0.1 %.
pub fn quantiles(scores: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = scores.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.len() <= 1001 {
        return s;
    }
    (0..=1000)
        .map(|i| crate::bundle::quantile(&s, i as f64 / 1000.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_and_fpr() {
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        assert_eq!(auroc(&[0.0, 1.0], &[2.0, 3.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        let inside: Vec<f64> = (0..100).map(f64::from).collect();
        // The threshold keeping 95 % of 0..99 is 4.95: 5..99 accepted.
        assert_eq!(fpr_at_tpr(&inside, &[4.0, 5.0, 50.0, -1.0], 0.95), 0.5);
    }

    /// Mahalanobis against the direct formula, k-NN against a sort.
    #[test]
    fn distances_match_their_definitions() {
        tch::manual_seed(0);
        let feats = |n: i64| {
            let r = || Tensor::randn([n, 6], (Kind::Float, tch::Device::Cpu));
            Features {
                pooled: r(),
                hidden: r(),
                logits: r(),
            }
        };
        let train = feats(40);
        let labels: Vec<usize> = (0..40).map(|i| i % 3).collect();
        let st = fit_stats(&train, Some(&labels), 3, 0);
        let f = feats(5);
        let x = &f.hidden;
        let got = score(Score::Mahalanobis, &f, Some(&st), 1);
        for i in 0..5 {
            let mut best = f64::INFINITY;
            for c in 0..3 {
                let diff = (x.get(i) - st.means.get(c)).to_kind(Kind::Double);
                let p = st.precision.to_kind(Kind::Double);
                let v = diff.matmul(&p).dot(&diff).double_value(&[]);
                best = best.min(v);
            }
            assert!((got[i as usize] + best).abs() < 1e-6 * best.abs().max(1.0));
        }
        let got = score(Score::Knn, &f, Some(&st), 3);
        let xn = normalize(&f.pooled);
        for i in 0..5 {
            // √(2 − 2·cos): the Euclidean distance of unit vectors (the bank's rows are unit
            // length to fp16's rounding, which this form ignores as the score does).
            let mut d: Vec<f64> = (0..40)
                .map(|j| {
                    let c = xn.get(i).dot(&st.bank.get(j)).double_value(&[]);
                    (2.0 - 2.0 * c).max(0.0).sqrt()
                })
                .collect();
            d.sort_by(|a, b| a.total_cmp(b));
            assert!(
                (got[i as usize] + d[2]).abs() < 1e-5,
                "{} vs {}",
                got[i as usize],
                d[2]
            );
        }
    }
}
