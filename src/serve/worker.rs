//! The batching workers: each of a model's worker threads owns a copy of the network, runs one
//! forward pass over a batch of what was queued (up to `max_batch`) and answers each request
//! through its oneshot channel. The gathering waits for more (at most `max_delay` after the first
//! item) only while requests are on their way — their body arriving or their images decoding: a
//! request that finds nothing else coming runs at once, and a busy server still fills its batches
//! (what queued during the last pass).
//!
//! One thread per model gathers the batches; it hands each to the free worker with the lowest
//! index, so with several workers a request arriving during a forward pass starts at once on
//! another, and a lone client keeps landing on the same (cache-warm) worker. On a CPU each
//! worker's passes use its share of the cores: measured on 2 cores (`docs/serving.md`), one image
//! on one thread takes less time than on two, whose OpenMP hand-offs cost more than they save at
//! that size.

use super::metrics::Metrics;
use crate::bundle::Bundle;
use crate::infer::predict::{answers, answers_of, Answer};
use crate::infer::tta::{self, Tta};
use image::RgbImage;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a request hands the worker for one image.
pub enum Input {
    /// Decoded, resized and cropped: normalised in the batch like `finetune predict` does.
    Image(RgbImage),
    /// Already normalised `3 × H × W` floats at the model's input size (KServe v2 `FP32`).
    Tensor(Vec<f32>),
    /// Decoded and resized but not yet cropped, for test-time augmentation (`?tta=1`) with fastai's
    /// defaults: the same probabilities as `finetune predict --tta`.
    Tta(RgbImage),
    /// Like `Image`, for its embedding (the head's input, as `finetune embed`) instead of an
    /// answer.
    Embed(RgbImage),
    /// Like `Image`, for its Grad-CAM overlay (`?cam=1`): the class asked for, or the predicted.
    Cam(RgbImage, Option<usize>),
}

/// What the worker sends back for one input.
#[derive(Debug, Clone)]
pub enum Output {
    Answer(Answer),
    Embedding(Vec<f32>),
    /// The overlay as PNG bytes and the class it explains, or why there is none.
    Cam(Result<(Vec<u8>, usize), String>),
}

/// One image and where its answer goes.
pub struct Job {
    pub input: Input,
    pub reply: oneshot::Sender<Output>,
}

/// What travels to the worker: an image, or word that the last request on its way has been
/// queued (or failed), so a worker waiting for it stops waiting. Without the wake-up a worker
/// that took a request's image before the request dropped its [`Arriving`] would wait out the
/// whole batching delay for nothing (seen in CI: a lone request held for the delay).
enum Msg {
    Job(Job),
    Wake,
}

/// Counters of one model's workers, shown in the model card and /metrics.
#[derive(Default)]
pub struct WorkerStats {
    /// Forward passes run by each worker.
    pub worker_batches: Vec<AtomicU64>,
    pub queued: AtomicUsize,
    /// Requests for this model on their way (see [`Arriving`]).
    pub arriving: AtomicUsize,
    pub images: AtomicU64,
    pub largest_batch: AtomicUsize,
    /// A [`Msg::Wake`] is in the channel: at most one at a time, so wake-ups never fill it.
    wake_pending: AtomicBool,
}

impl WorkerStats {
    /// Forward passes run, by all the workers.
    pub fn batches(&self) -> u64 {
        self.worker_batches
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

/// The sending side of a model's queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Msg>,
    cap: usize,
    pub stats: Arc<WorkerStats>,
}

/// A request on its way to the worker — its body being read, its images decoded — from the
/// moment its route is known until its images are queued (or it fails): what makes a batch worth
/// waiting for. Dropping it ends the count, and the last one wakes the worker.
pub struct Arriving(Queue);

impl Drop for Arriving {
    fn drop(&mut self) {
        let stats = &self.0.stats;
        if stats.arriving.fetch_sub(1, Ordering::SeqCst) == 1
            && !stats.wake_pending.swap(true, Ordering::SeqCst)
        {
            // The channel holds `cap` images and one wake-up; a worker gone needs no waking.
            let _ = self.0.tx.try_send(Msg::Wake);
        }
    }
}

/// The queue is full: the caller should retry later.
#[derive(Debug)]
pub struct Full;

impl Queue {
    /// Counts a request as on its way until the returned guard is dropped.
    pub fn arriving(&self) -> Arriving {
        self.stats.arriving.fetch_add(1, Ordering::SeqCst);
        Arriving(self.clone())
    }

    /// Queues one image; refused when `--queue` images already wait for a forward pass (those in a
    /// batch still being gathered count as waiting).
    pub fn submit(&self, job: Job) -> Result<(), Full> {
        if self.stats.queued.fetch_add(1, Ordering::SeqCst) >= self.cap {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Full);
        }
        match self.tx.try_send(Msg::Job(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                Err(Full)
            }
        }
    }
}

pub struct BatchSettings {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub queue: usize,
}

/// Starts one worker thread per bundle (copies of one model) and the thread that gathers their
/// batches from the model's queue; all end when every [`Queue`] clone is dropped.
pub fn spawn(
    name: &str,
    bundles: Vec<Bundle>,
    settings: &BatchSettings,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Queue, Vec<std::thread::JoinHandle<()>>)> {
    let cap = settings.queue.max(1);
    // One slot more than the images it may hold, for the one wake-up (see `Msg`).
    let (tx, rx) = std::sync::mpsc::sync_channel(cap + 1);
    let n = bundles.len();
    let stats = Arc::new(WorkerStats {
        worker_batches: (0..n).map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    let gather = Gather {
        max_batch: settings.max_batch.max(1),
        max_delay: settings.max_delay,
    };
    let free = Arc::new(Free {
        state: Mutex::new(vec![WorkerState::Free; n]),
        changed: Condvar::new(),
    });
    let mut handles = Vec::with_capacity(n + 1);
    let mut to_workers = Vec::with_capacity(n);
    for (i, bundle) in bundles.into_iter().enumerate() {
        let (btx, brx) = std::sync::mpsc::channel();
        to_workers.push(btx);
        let (free, st, metrics) = (free.clone(), stats.clone(), metrics.clone());
        let thread = if n == 1 {
            format!("infer-{name}")
        } else {
            format!("infer-{name}-{i}")
        };
        handles.push(
            std::thread::Builder::new()
                .name(thread)
                .spawn(move || run(i, bundle, brx, &free, st, metrics))?,
        );
    }
    let st = stats.clone();
    handles.push(
        std::thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || dispatch(rx, to_workers, &free, gather, &st))?,
    );
    Ok((Queue { tx, cap, stats }, handles))
}

/// How a batch is gathered.
#[derive(Clone, Copy)]
struct Gather {
    max_batch: usize,
    max_delay: Duration,
}

/// Which workers are free to take a batch.
struct Free {
    state: Mutex<Vec<WorkerState>>,
    changed: Condvar,
}

#[derive(Clone, Copy, PartialEq)]
enum WorkerState {
    Free,
    Busy,
    /// Its thread ended (a panic in a forward pass): it takes no more batches.
    Gone,
}

impl Free {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WorkerState>> {
        // Every change is one assignment: a panic elsewhere leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a worker is free; false when every worker is gone.
    fn wait_any(&self) -> bool {
        let mut f = self.lock();
        loop {
            if f.contains(&WorkerState::Free) {
                return true;
            }
            if f.iter().all(|&x| x == WorkerState::Gone) {
                return false;
            }
            f = self.changed.wait(f).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The free worker with the lowest index, now busy: a lone request after another lands on
    /// the same worker, whose weights are still in the caches (two workers taking turns measured
    /// a millisecond slower per image on 2 cores).
    fn take(&self) -> Option<usize> {
        let mut f = self.lock();
        let i = f.iter().position(|&x| x == WorkerState::Free)?;
        f[i] = WorkerState::Busy;
        Some(i)
    }

    fn set(&self, i: usize, to: WorkerState) {
        if let Some(x) = self.lock().get_mut(i) {
            *x = to;
        }
        self.changed.notify_one();
    }
}

/// Marks its worker gone when the worker's thread ends, however it ends, so the gathering thread
/// never waits for it (and ends when no worker is left: the model's requests then get 503).
struct Leaving<'a>(&'a Free, usize);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.set(self.1, WorkerState::Gone);
    }
}

/// The gathering thread: once a worker is free, gathers the next batch (so the batch holds what
/// queued while every worker computed) and hands it to the lowest free worker.
fn dispatch(
    rx: Receiver<Msg>,
    workers: Vec<std::sync::mpsc::Sender<Vec<Job>>>,
    free: &Free,
    gather: Gather,
    stats: &WorkerStats,
) {
    while free.wait_any() {
        let Some(jobs) = next_batch(&rx, gather, stats) else {
            return;
        };
        stats.queued.fetch_sub(jobs.len(), Ordering::SeqCst);
        // The lowest worker free now, not when the wait began. Only a worker gone since (a panic)
        // leaves none, or refuses the batch: its requests then see their answer dropped (500).
        if let Some(i) = free.take() {
            let _ = workers[i].send(jobs);
        }
    }
}

/// A worker: runs each batch it is given and answers its requests.
fn run(
    me: usize,
    bundle: Bundle,
    batches: Receiver<Vec<Job>>,
    free: &Free,
    stats: Arc<WorkerStats>,
    metrics: Arc<Metrics>,
) {
    let _guard = tch::no_grad_guard();
    let _leaving = Leaving(free, me);
    while let Ok(jobs) = batches.recv() {
        let outputs = forward(&bundle, &jobs);
        if let Some(b) = stats.worker_batches.get(me) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        stats.images.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats.largest_batch.fetch_max(jobs.len(), Ordering::Relaxed);
        metrics.observe_batch(jobs.len());
        let mut outputs = outputs.into_iter();
        for j in jobs {
            // A request whose client went away has dropped its receiver; nothing to do.
            if let Some(o) = outputs.next() {
                let _ = j.reply.send(o);
            }
        }
        free.set(me, WorkerState::Free);
    }
}

/// Waits for the first image, then gathers the batch: what is already queued, and what arrives
/// before the delay while requests are still on their way. `None` when the server is gone.
fn next_batch(rx: &Receiver<Msg>, gather: Gather, stats: &WorkerStats) -> Option<Vec<Job>> {
    // Clears the pending flag before the caller looks at `arriving` again: a request that ends
    // after this sends a fresh wake-up, one that ended before is seen in the count.
    let woken = || stats.wake_pending.store(false, Ordering::SeqCst);
    let first = loop {
        match rx.recv().ok()? {
            Msg::Job(j) => break j,
            Msg::Wake => woken(),
        }
    };
    let mut jobs = vec![first];
    let deadline = Instant::now() + gather.max_delay;
    while jobs.len() < gather.max_batch {
        // Take what is already queued without waiting, then wait until the deadline.
        match rx.try_recv() {
            Ok(Msg::Job(j)) => {
                jobs.push(j);
                continue;
            }
            Ok(Msg::Wake) => {
                woken();
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        // Nothing queued and nothing on its way: waiting could only add latency.
        if stats.arriving.load(Ordering::SeqCst) == 0 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(Msg::Job(j)) => jobs.push(j),
            // Loops back to see whether anything came with it or is still on its way.
            Ok(Msg::Wake) => woken(),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

/// One forward pass over the images, one over the tensors, the TTA passes over the images that
/// asked for them and one over those asking for embeddings (requests rarely mix them); outputs
/// in job order.
fn forward(bundle: &Bundle, jobs: &[Job]) -> Vec<Output> {
    let pick = |f: fn(&Input) -> Option<&RgbImage>| -> Vec<&RgbImage> {
        jobs.iter().filter_map(|j| f(&j.input)).collect()
    };
    let images = pick(|i| match i {
        Input::Image(x) => Some(x),
        _ => None,
    });
    let tta_images = pick(|i| match i {
        Input::Tta(x) => Some(x),
        _ => None,
    });
    let embed_images = pick(|i| match i {
        Input::Embed(x) => Some(x),
        _ => None,
    });
    let cam_jobs: Vec<(&RgbImage, Option<usize>)> = jobs
        .iter()
        .filter_map(|j| match &j.input {
            Input::Cam(x, c) => Some((x, *c)),
            _ => None,
        })
        .collect();
    let tensors: Vec<&[f32]> = jobs
        .iter()
        .filter_map(|j| match &j.input {
            Input::Tensor(t) => Some(t.as_slice()),
            _ => None,
        })
        .collect();
    let mut from_images = answers(bundle, &images).into_iter();
    let mut from_tta = tta::answers(bundle, &tta_images, &Tta::default()).into_iter();
    let mut from_embed = if embed_images.is_empty() {
        Vec::new().into_iter()
    } else {
        let f = crate::infer::forward::features(bundle, &embed_images);
        crate::infer::trust::fit::rows(&f.pooled).into_iter()
    };
    let mut from_tensors = if tensors.is_empty() {
        Vec::new().into_iter()
    } else {
        let (h, w) = (bundle.info.size.h as i64, bundle.info.size.w as i64);
        let flat: Vec<f32> = tensors.concat();
        let x = tch::Tensor::from_slice(&flat).view([tensors.len() as i64, 3, h, w]);
        answers_of(bundle, &x).into_iter()
    };
    let mut from_cam = cam_overlays(bundle, &cam_jobs).into_iter();
    jobs.iter()
        .map(|j| match j.input {
            Input::Image(_) => Output::Answer(from_images.next().unwrap_or_default()),
            Input::Tensor(_) => Output::Answer(from_tensors.next().unwrap_or_default()),
            Input::Tta(_) => Output::Answer(from_tta.next().unwrap_or_default()),
            Input::Embed(_) => Output::Embedding(from_embed.next().unwrap_or_default()),
            Input::Cam(..) => Output::Cam(
                from_cam
                    .next()
                    .unwrap_or_else(|| Err("no heatmap was made".into())),
            ),
        })
        .collect()
}

/// The Grad-CAM overlays of `?cam=1` requests, one pass (the worker's thread runs without
/// gradients; `cam` turns them on for the head alone).
fn cam_overlays(
    bundle: &Bundle,
    jobs: &[(&RgbImage, Option<usize>)],
) -> Vec<Result<(Vec<u8>, usize), String>> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let images: Vec<&RgbImage> = jobs.iter().map(|j| j.0).collect();
    let classes: Vec<Option<usize>> = jobs.iter().map(|j| j.1).collect();
    match crate::infer::cam::cams(bundle, &images, &classes) {
        Ok(cams) => cams
            .iter()
            .zip(&images)
            .map(|(c, img)| Ok((c.overlay_png(img), c.class)))
            .collect(),
        Err(e) => jobs.iter().map(|_| Err(e.to_string())).collect(),
    }
}
