//! `--mlflow URI`: the run logged to an MLflow tracking server through its REST API (2.0): the
//! settings as parameters, per step the loss and learning rate and per epoch the table's columns
//! as metrics, the bundle's path as a tag (an artifact reference: the files stay where `--out`
//! put them), the run ended FINISHED, or KILLED when interrupted.
//!
//! Metrics are buffered and sent once an epoch in `log-batch` requests (at most 1000 each, the
//! API's limit), so tracking costs a request an epoch, not one a step. A server that stops
//! answering is warned about once; training goes on.

use super::callback::{BatchEnd, Callback, EpochEnd};
pub use super::error::MlflowError;
use super::learner::Learner;
use super::report::Report;
use serde_json::{json, Value};
use std::time::Duration;

/// One metric point, as the API takes it.
struct Point {
    key: String,
    value: f64,
    step: usize,
    timestamp: u64,
}

pub struct Mlflow {
    uri: String,
    run_id: String,
    agent: ureq::Agent,
    pending: Vec<Point>,
    step: usize,
    /// A request failed: warned about once, nothing more is sent.
    dead: bool,
    interrupted: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The API's answers are small JSON objects; more is not an MLflow server.
const MAX_ANSWER: u64 = 1 << 20;

impl Mlflow {
    fn post(&self, path: &str, body: &Value) -> Result<Value, MlflowError> {
        let err = |msg: String| MlflowError {
            uri: self.uri.clone(),
            msg,
        };
        let url = format!("{}/api/2.0/mlflow/{path}", self.uri);
        // ureq is built without its json feature: the body is serialised here.
        let r = match self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(err(format!(
                    "{path} answered {code}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
            Err(e) => return Err(err(format!("{path}: {e}"))),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(r.into_reader(), MAX_ANSWER),
            &mut text,
        )
        .map_err(|e| err(format!("{path}: {e}")))?;
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text).map_err(|e| err(format!("{path} did not answer JSON: {e}")))
    }

    /// Creates the run (in `MLFLOW_EXPERIMENT_NAME`'s experiment, made if missing, else the
    /// Default one) and logs its parameters and tags.
    pub fn start(
        uri: &str,
        run_name: &str,
        params: &[(String, String)],
        tags: &[(&str, String)],
    ) -> Result<Mlflow, MlflowError> {
        let mut m = Mlflow {
            uri: uri.trim_end_matches('/').to_string(),
            run_id: String::new(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(15))
                .build(),
            pending: Vec::new(),
            step: 0,
            dead: false,
            interrupted: false,
        };
        let experiment = match std::env::var("MLFLOW_EXPERIMENT_NAME") {
            Ok(name) if !name.is_empty() => m.experiment(&name)?,
            _ => "0".to_string(),
        };
        let tag_list: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let run = m.post(
            "runs/create",
            &json!({"experiment_id": experiment, "run_name": run_name, "start_time": now_ms(), "tags": tag_list}),
        )?;
        m.run_id = run["run"]["info"]["run_id"]
            .as_str()
            .ok_or_else(|| MlflowError {
                uri: m.uri.clone(),
                msg: format!("runs/create gave no run id: {run}"),
            })?
            .to_string();
        // The API takes at most 100 parameters a request, values up to 6000 characters.
        for chunk in params.chunks(100) {
            let p: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v.chars().take(6000).collect::<String>()}))
                .collect();
            m.post("runs/log-batch", &json!({"run_id": m.run_id, "params": p}))?;
        }
        Ok(m)
    }

    fn experiment(&self, name: &str) -> Result<String, MlflowError> {
        let url = format!("{}/api/2.0/mlflow/experiments/get-by-name", self.uri);
        if let Ok(r) = self.agent.get(&url).query("experiment_name", name).call() {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(
                &mut std::io::Read::take(r.into_reader(), MAX_ANSWER),
                &mut text,
            );
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(id) = v["experiment"]["experiment_id"].as_str() {
                return Ok(id.to_string());
            }
        }
        let v = self.post("experiments/create", &json!({"name": name}))?;
        Ok(v["experiment_id"].as_str().unwrap_or("0").to_string())
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn flush(&mut self, report: Option<&mut dyn Report>) {
        if self.dead {
            self.pending.clear();
            return;
        }
        let points = std::mem::take(&mut self.pending);
        for chunk in points.chunks(1000) {
            let metrics: Vec<Value> = chunk
                .iter()
                .map(|p| json!({"key": p.key, "value": p.value, "timestamp": p.timestamp, "step": p.step}))
                .collect();
            if let Err(e) = self.post(
                "runs/log-batch",
                &json!({"run_id": self.run_id, "metrics": metrics}),
            ) {
                self.dead = true;
                let msg = format!("warning: {e}; MLflow logging stops, training goes on");
                match report {
                    Some(r) => r.message(&msg),
                    None => eprintln!("{msg}"),
                }
                return;
            }
        }
    }

    fn point(&mut self, key: &str, value: f64, step: usize) {
        if value.is_finite() {
            self.pending.push(Point {
                key: key.to_string(),
                value,
                step,
                timestamp: now_ms(),
            });
        }
    }
}

impl Callback<Learner> for Mlflow {
    fn after_batch(&mut self, b: &BatchEnd) {
        self.step = b.step;
        self.point("train/loss", b.loss, b.step);
        self.point("train/lr", b.lr, b.step);
    }

    fn after_epoch(&mut self, learn: &mut Learner, _end: &EpochEnd, report: &mut dyn Report) {
        if let Some(row) = learn.rows.last().cloned() {
            let step = self.step;
            self.point("epoch/train_loss", row.train_loss, step);
            self.point("epoch/valid_loss", row.valid_loss, step);
            self.point("epoch/error_rate", row.error_rate, step);
            self.point("epoch/accuracy", row.accuracy, step);
            if let Some(f1) = row.f1 {
                self.point("epoch/f1", f1, step);
            }
        }
        self.interrupted = learn.interrupted;
        self.flush(Some(report));
    }
}

impl Drop for Mlflow {
    /// The run ends when training does (the learner drops its callbacks then).
    fn drop(&mut self) {
        self.flush(None);
        if self.dead || self.run_id.is_empty() {
            return;
        }
        let status = if self.interrupted {
            "KILLED"
        } else {
            "FINISHED"
        };
        let _ = self.post(
            "runs/update",
            &json!({"run_id": self.run_id, "status": status, "end_time": now_ms()}),
        );
    }
}

/// Adds the MLflow callback to a run about to start (rank 0 only: the caller checks); returns the
/// run's id.
pub fn attach(session: &mut super::run::Session, uri: &str) -> Result<String, MlflowError> {
    let plan = &session.plan;
    let params: Vec<(String, String)> = super::tensorboard::hparams_of(plan)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                super::tensorboard::HParam::Number(x) => x.to_string(),
                super::tensorboard::HParam::Text(s) => s,
                super::tensorboard::HParam::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect();
    let out = std::path::absolute(&plan.out).unwrap_or_else(|_| plan.out.clone());
    let name = plan
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "finetune".into());
    let tags = [
        ("mlflow.source.name", "finetune".to_string()),
        ("finetune.version", env!("CARGO_PKG_VERSION").to_string()),
        ("finetune.bundle", out.display().to_string()),
        ("finetune.arch", plan.arch.to_string()),
    ];
    let m = Mlflow::start(uri, &name, &params, &tags)?;
    let id = m.run_id().to_string();
    session.learn.add_callback(m);
    Ok(id)
}
