//! The inference facade between HTTP and the batching worker, as in text-embeddings-inference: the
//! routes hand it encoded images or ready tensors and get probabilities back, or an [`InferError`]
//! that says which part failed. It knows nothing of HTTP.

use super::worker::{Arriving, Input, Job, Output};
use super::Model;
use crate::data::decode::decode_bytes;
use crate::data::transform::presize;
use crate::infer::predict::preprocess;
use crate::infer::predict::Answer;
use axum::body::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("the model's queue is full; retry later")]
    QueueFull,
    #[error("the inference worker stopped")]
    WorkerGone,
    /// The decoder's reason (the file-style message when several images were sent).
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    Internal(String),
    /// The model cannot do what was asked (a heatmap of a vision transformer).
    #[error("{0}")]
    Unsupported(String),
}

/// What a request asks of each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Answer,
    /// The answer after test-time augmentation (fastai's defaults).
    Tta,
    Embedding,
    /// The Grad-CAM overlay of a class (the predicted one when `None`).
    Cam(Option<usize>),
}

/// Decodes on the blocking pool, queues each image to the model's worker, waits for the answers;
/// with `tta`, the worker runs test-time augmentation (fastai's defaults) on them. `way` (from
/// [`super::worker::Queue::arriving`], taken when the request came in) ends once they are queued.
pub async fn images(
    m: &Model,
    images: Vec<Bytes>,
    tta: bool,
    way: Arriving,
) -> Result<Vec<Answer>, InferError> {
    let want = if tta { Want::Tta } else { Want::Answer };
    let out = run(m, images, want, way).await?;
    Ok(out
        .into_iter()
        .map(|o| match o {
            Output::Answer(a) => a,
            _ => Answer::default(),
        })
        .collect())
}

/// The Grad-CAM overlay (PNG) of one encoded image for `class` (the predicted one when `None`),
/// and the class it explains.
pub async fn cam(
    m: &Model,
    image: Bytes,
    class: Option<usize>,
    way: Arriving,
) -> Result<(Vec<u8>, usize), InferError> {
    match run(m, vec![image], Want::Cam(class), way)
        .await?
        .into_iter()
        .next()
    {
        Some(Output::Cam(r)) => r.map_err(InferError::Unsupported),
        _ => Err(InferError::Internal("the worker gave no heatmap".into())),
    }
}

/// The embeddings of encoded images (the head's input, as `finetune embed`).
pub async fn embeddings(
    m: &Model,
    images: Vec<Bytes>,
    way: Arriving,
) -> Result<Vec<Vec<f32>>, InferError> {
    let out = run(m, images, Want::Embedding, way).await?;
    Ok(out
        .into_iter()
        .map(|o| match o {
            Output::Embedding(e) => e,
            _ => Vec::new(),
        })
        .collect())
}

async fn run(
    m: &Model,
    images: Vec<Bytes>,
    want: Want,
    way: Arriving,
) -> Result<Vec<Output>, InferError> {
    let info = m.info.clone();
    let several = images.len() > 1;
    let prepared = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let name = format!("image {}", i + 1);
                decode_bytes(std::path::Path::new(&name), b)
                    .map(|img| match want {
                        Want::Tta => {
                            Input::Tta(presize(&img, info.resize, info.size, info.pad_mode))
                        }
                        Want::Answer => Input::Image(preprocess(&img, &info)),
                        Want::Embedding => Input::Embed(preprocess(&img, &info)),
                        Want::Cam(c) => Input::Cam(preprocess(&img, &info), c),
                    })
                    .map_err(|e| if several { e.to_string() } else { e.reason() })
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| InferError::Internal(e.to_string()))?
    .map_err(InferError::Decode)?;
    queue(m, prepared, way).await
}

/// Queues ready inputs (KServe v2's `FP32` tensors) and waits for their answers, in order.
pub async fn inputs(
    m: &Model,
    inputs: Vec<Input>,
    way: Arriving,
) -> Result<Vec<Answer>, InferError> {
    Ok(queue(m, inputs, way)
        .await?
        .into_iter()
        .map(|o| match o {
            Output::Answer(a) => a,
            _ => Answer::default(),
        })
        .collect())
}

/// Queues each input to the model's worker and waits for the outputs, in order. The request
/// stops being on its way once all are queued: the worker never sees neither.
async fn queue(m: &Model, inputs: Vec<Input>, way: Arriving) -> Result<Vec<Output>, InferError> {
    let mut waits = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.queue
            .submit(Job { input, reply: tx })
            .map_err(|_| InferError::QueueFull)?;
        waits.push(rx);
    }
    drop(way);
    let mut out = Vec::with_capacity(waits.len());
    for rx in waits {
        out.push(rx.await.map_err(|_| InferError::WorkerGone)?);
    }
    Ok(out)
}
