//! `finetune serve`: an HTTP server over one or more model bundles, with dynamic batching, in
//! text-embeddings-inference's layers: `listen` (connections) → `http` (routes, one file per job) →
//! `infer` (the facade) → `worker` (one batching thread per model, owning the network).

pub mod facade;
mod http;
pub mod listen;
pub mod metrics;
pub mod worker;

use crate::bundle::{self, BundleError, ModelInfo};
use metrics::Metrics;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use worker::{BatchSettings, Queue};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 20 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("two models are named {0:?}; model names are the bundle folder names and must differ")]
    DuplicateName(String),
    #[error("{0} has no usable folder name to serve it under")]
    NoName(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("--cors {0:?} is not an origin like https://example.com (or *)")]
    BadOrigin(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Options {
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    pub max_batch_delay: Duration,
    pub queue: usize,
    /// Where and how the models compute.
    pub runtime: crate::model::Runtime,
    pub token: Option<String>,
    /// Origin allowed to call the API from a browser (`*` for any); no CORS headers without it.
    pub cors: Option<String>,
    /// How long a request body may take to arrive before the answer is 408.
    pub body_timeout: Duration,
    /// How long a client may take to send a request's headers before its connection is closed
    /// (also how long an idle keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Answer with the raw softmax instead of the calibrated probabilities (`--raw-probs`).
    pub raw_probs: bool,
    /// The "unknown" acceptance share for every model: `None` keeps each bundle's own,
    /// `Some(None)` turns the answer off (`--unknown off`).
    pub accept: Option<Option<f64>>,
    /// Forward passes each model runs at once (a copy of its network each); `None`: two on a CPU
    /// with two cores or more, each on half of libtorch's threads, one on a GPU.
    pub workers: Option<usize>,
}

/// How many workers each model gets, and on a CPU the threads each pass uses: libtorch's thread
/// count is process-wide, so it is divided once, here, before any pass runs.
fn workers(opts: &Options) -> usize {
    let cpu = opts.runtime.device == tch::Device::Cpu;
    let threads = tch::get_num_threads().max(1) as usize;
    let n = match opts.workers {
        Some(n) => n.max(1),
        None if cpu && threads >= 2 => 2,
        None => 1,
    };
    if cpu && n > 1 {
        tch::set_num_threads((threads / n).max(1) as i32);
    }
    n
}

/// One served model: its card data and its worker's queue.
pub struct Model {
    pub name: String,
    pub info: Arc<ModelInfo>,
    /// The final row of metrics.csv, column → value.
    pub final_metrics: Option<BTreeMap<String, String>>,
    /// What `evaluate --save` stored in the bundle, if anything.
    pub evaluation: Option<serde_json::Value>,
    /// The confusion matrix `evaluate --save` drew, shown on the page.
    pub confusion_svg: Option<String>,
    pub queue: Queue,
    /// Whether its probabilities are calibrated, and the "unknown" acceptance share in use.
    pub calibrated: bool,
    pub accept: Option<f64>,
}

pub struct AppState {
    pub models: BTreeMap<String, Model>,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    pub body_timeout: Duration,
}

/// Loads every bundle (once per worker), starts each model's workers, binds, calls `on_listening`
/// with the bound address, and serves until SIGINT/SIGTERM; in-flight requests finish before it
/// returns.
pub fn run(
    dirs: &[PathBuf],
    opts: Options,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::default());
    let settings = BatchSettings {
        max_batch: opts.max_batch,
        max_delay: opts.max_batch_delay,
        queue: opts.queue,
    };
    let n_workers = workers(&opts);
    let mut models = BTreeMap::new();
    let mut handles = Vec::new();
    for dir in dirs {
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.clone())
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| ServeError::NoName(dir.clone()))?;
        if models.contains_key(&name) {
            return Err(ServeError::DuplicateName(name));
        }
        let mut bundles = Vec::with_capacity(n_workers);
        for _ in 0..n_workers {
            let mut b = bundle::load(dir, opts.runtime)?;
            b.calibrated = !opts.raw_probs;
            if let Some(a) = opts.accept {
                b.set_accept(a);
            }
            bundles.push(b);
        }
        let b = &bundles[0];
        let (calibrated, accept) = (b.calibrated && b.info.calibration.is_some(), b.accept);
        let info = b.info.clone();
        let (queue, hs) = worker::spawn(&name, bundles, &settings, metrics.clone())?;
        handles.extend(hs);
        models.insert(
            name.clone(),
            Model {
                name,
                info: Arc::new(info),
                final_metrics: bundle::read_final_metrics(dir),
                evaluation: bundle::read_evaluation(dir),
                confusion_svg: bundle::read_confusion_svg(dir),
                queue,
                calibrated,
                accept,
            },
        );
    }
    let state = Arc::new(AppState {
        models,
        metrics,
        token: opts.token.clone().filter(|t| !t.is_empty()),
        body_timeout: opts.body_timeout,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = format!("{}:{}", opts.host, opts.port);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        on_listening(listener.local_addr()?);
        let app = http::router(state);
        let app = match &opts.cors {
            Some(origin) => app.layer(http::cors(origin)?),
            None => app,
        };
        listen::serve(listener, app, opts.header_timeout, shutdown_signal()).await;
        Ok::<(), ServeError>(())
    })?;
    // The router (and every queue sender) is dropped: the workers finish their last batch and end.
    drop(rt);
    for w in handles {
        let _ = w.join();
    }
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in flight");
}
