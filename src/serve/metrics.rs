//! Prometheus text metrics: requests by route and status, latency, batch sizes, queue depth.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(buckets) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batches: Histogram,
    /// (when, images) of recent forward passes, for the images/s gauge.
    recent: std::collections::VecDeque<(std::time::Instant, usize)>,
}

/// The window the images/s gauge averages over.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

impl Inner {
    fn forget_old(&mut self, now: std::time::Instant) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g.requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        g.latency
            .entry(route.to_string())
            .or_default()
            .observe(&LATENCY_BUCKETS, seconds);
    }

    pub fn observe_batch(&self, size: usize) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.batches.observe(&BATCH_BUCKETS, size as f64);
        let now = std::time::Instant::now();
        g.recent.push_back((now, size));
        g.forget_old(now);
    }

    /// The Prometheus text exposition; `models` is (model, queued images, images answered).
    pub fn render(&self, models: &[(String, usize, u64)]) -> String {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.forget_old(std::time::Instant::now());
        let mut out = String::new();
        out.push_str("# HELP finetune_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE finetune_requests_total counter\n");
        for ((m, r, s), n) in &g.requests {
            let _ = writeln!(
                out,
                "finetune_requests_total{{method=\"{m}\",route=\"{}\",status=\"{s}\"}} {n}",
                escape(r)
            );
        }
        out.push_str("# HELP finetune_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE finetune_request_duration_seconds histogram\n");
        for (r, h) in &g.latency {
            h.render(
                &mut out,
                "finetune_request_duration_seconds",
                &format!("route=\"{}\"", escape(r)),
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP finetune_batch_size Images per forward pass.\n");
        out.push_str("# TYPE finetune_batch_size histogram\n");
        g.batches
            .render(&mut out, "finetune_batch_size", "", &BATCH_BUCKETS);
        out.push_str("# HELP finetune_queue_depth Images waiting for a forward pass.\n");
        out.push_str("# TYPE finetune_queue_depth gauge\n");
        for (m, q, _) in models {
            let _ = writeln!(out, "finetune_queue_depth{{model=\"{}\"}} {q}", escape(m));
        }
        out.push_str(
            "# HELP finetune_images_total Images classified (rate() of it is images/s).\n",
        );
        out.push_str("# TYPE finetune_images_total counter\n");
        for (m, _, n) in models {
            let _ = writeln!(out, "finetune_images_total{{model=\"{}\"}} {n}", escape(m));
        }
        let images: usize = g.recent.iter().map(|(_, n)| n).sum();
        out.push_str(
            "# HELP finetune_images_per_second Images classified per second over the last 10 s.\n",
        );
        out.push_str("# TYPE finetune_images_per_second gauge\n");
        let _ = writeln!(
            out,
            "finetune_images_per_second {}",
            images as f64 / RATE_WINDOW.as_secs_f64()
        );
        out.push_str(
            "# HELP finetune_inference_plan_passes_total Forward passes run in the inference plan (BatchNorm folded into the convolutions).\n",
        );
        out.push_str("# TYPE finetune_inference_plan_passes_total counter\n");
        let _ = writeln!(
            out,
            "finetune_inference_plan_passes_total {}",
            crate::model::plan::passes()
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
