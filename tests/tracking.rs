//! Experiment tracking (docs/usage.md): `--tensorboard DIR`'s event files, read back with
//! TensorBoard's own reader (`tests/tracking/read_events.py`), hold every step's loss and learning
//! rate, every epoch's table row, the first batch and each epoch's confusion matrix as images, and
//! the run's settings as hparams; `--mlflow URI` logs the same to a real `mlflow server` (from
//! PyPI, on 127.0.0.1), queried through its REST API.

mod common;

use common::*;

#[test]
fn tensorboard_holds_the_runs_scalars_images_and_hparams() {
    let tmp = tempfile::tempdir().unwrap();
    let (tb, out) = (tmp.path().join("tb"), tmp.path().join("m"));
    let o = run(tiny_train(1)
        .args([
            "--arch",
            "resnet18",
            "--threads",
            "1",
            "--quiet",
            "--tensorboard",
        ])
        .arg(&tb)
        .arg("--out")
        .arg(&out)
        .arg(repo().join("assets/sample"))
        .env("FINETUNE_PROFILE", "1"));
    assert!(o.status.success(), "{}", o.stderr);
    // The profile's per-fit line: where the benchmark reads what tracking costs.
    for fit in ["frozen", "unfrozen"] {
        assert!(
            o.stderr
                .lines()
                .any(|l| l.starts_with(&format!("PROFILE {fit}: callbacks "))
                    && l.contains("after each batch")
                    && l.contains("after each epoch")),
            "{}",
            o.stderr
        );
    }
    let files: Vec<_> = std::fs::read_dir(&tb)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("events.out.tfevents."));
    let r = run(std::process::Command::new(python())
        .arg(repo().join("tests/tracking/read_events.py"))
        .arg(&tb));
    assert!(r.status.success(), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();

    // One loss and one learning rate per step, steps 1, 2, … through both fits.
    let loss = v["scalars"]["train/loss"].as_array().unwrap();
    let steps: Vec<u64> = loss.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        v["scalars"]["train/lr"].as_array().unwrap().len(),
        steps.len()
    );
    assert!(loss.iter().all(|p| p[1].as_f64().unwrap().is_finite()));

    // Each epoch's row as metrics.csv records it, at the epoch's last step.
    let rows = metrics_without_time(&out);
    let header: Vec<&str> = rows[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let valid = v["scalars"]["epoch/valid_loss"].as_array().unwrap();
    assert_eq!(valid.len(), rows.len() - 1, "one point per epoch");
    for (p, row) in valid.iter().zip(&rows[1..]) {
        let want: f64 = row
            .split(',')
            .nth(col("valid_loss"))
            .unwrap()
            .parse()
            .unwrap();
        let got = p[1].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    assert_eq!(valid.last().unwrap()[0].as_u64(), steps.last().copied());
    for t in ["epoch/train_loss", "epoch/error_rate", "epoch/accuracy"] {
        assert_eq!(
            v["scalars"][t].as_array().unwrap().len(),
            rows.len() - 1,
            "{t}"
        );
    }

    // The first batch (8 images of 32 px, in fastai's 2×4 grid) and a confusion matrix per epoch.
    let show = &v["images"]["show_batch"][0];
    assert!(
        show[1].as_u64().unwrap() > 4 * 32 && show[2].as_u64().unwrap() > 2 * 32,
        "{show}"
    );
    assert_eq!(
        v["images"]["confusion_matrix"].as_array().unwrap().len(),
        rows.len() - 1
    );

    let h = &v["hparams"];
    assert_eq!(h["arch"], "resnet18");
    assert_eq!(h["bs"], 8.0);
    assert_eq!(h["fine_tune.epochs"], 1.0);
    assert_eq!(h["fine_tune.base_lr"], 0.002);
    assert_eq!(h["augment"], false);
    assert_eq!(h["size"], "32x32");
}

/// A folder that cannot be made is refused before training, naming it.
#[test]
fn an_unwritable_tensorboard_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = refused(
        tiny_train(0)
            .args([
                "--arch",
                "resnet18",
                "--threads",
                "1",
                "--quiet",
                "--tensorboard",
            ])
            .arg(file.join("tb"))
            .arg("--out")
            .arg(tmp.path().join("m"))
            .arg(repo().join("assets/sample")),
        "cannot write TensorBoard events to",
    );
    assert!(e.contains("a-file"), "{e}");
}

/// `mlflow server` on a free port of 127.0.0.1 with a SQLite store in `dir`, its whole process
/// group killed on drop (it starts workers). Its background job runners are off (they would take
/// a core for nothing here), and so is its telemetry.
struct MlflowServer {
    child: std::process::Child,
    url: String,
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        // SAFETY: killpg on the group this test started; no memory is involved.
        unsafe {
            libc::killpg(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn mlflow_server(dir: &std::path::Path) -> MlflowServer {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(python().with_file_name("mlflow"))
        .args([
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            "1",
        ])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(dir.join("artifacts"))
        .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        // Nothing leaves this machine.
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start mlflow server (scripts/setup-venv.sh installs it)");
    let s = MlflowServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_for(120, "mlflow server to answer /health", || {
        ureq::get(&format!("{}/health", s.url)).call().is_ok()
    });
    s
}

fn get_json(url: &str) -> serde_json::Value {
    let r = ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    serde_json::from_str(&r.into_string().unwrap()).unwrap()
}

#[test]
fn mlflow_server_holds_the_runs_params_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let server = mlflow_server(tmp.path());
    let out = tmp.path().join("m");
    let o = run(tiny_train(1)
        .args([
            "--arch",
            "resnet18",
            "--threads",
            "1",
            "--quiet",
            "--mlflow",
            &server.url,
        ])
        .arg("--out")
        .arg(&out)
        .arg(repo().join("assets/sample")));
    assert!(o.status.success(), "{}", o.stderr);
    let id = o
        .stderr
        .split("mlflow: logging run ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in {}", o.stderr))
        .to_string();
    let api = format!("{}/api/2.0/mlflow", server.url);
    let r = &get_json(&format!("{api}/runs/get?run_id={id}"))["run"];
    assert_eq!(r["info"]["status"], "FINISHED");
    assert_eq!(r["info"]["run_name"], "m");
    let kv = |list: &serde_json::Value, k: &str| -> Option<String> {
        list.as_array()?
            .iter()
            .find(|p| p["key"] == k)
            .and_then(|p| p["value"].as_str().map(str::to_string))
    };
    let params = &r["data"]["params"];
    assert_eq!(kv(params, "arch").as_deref(), Some("resnet18"));
    assert_eq!(kv(params, "bs").as_deref(), Some("8"));
    assert_eq!(kv(params, "fine_tune.epochs").as_deref(), Some("1"));
    let bundle = kv(&r["data"]["tags"], "finetune.bundle").unwrap();
    assert_eq!(std::path::Path::new(&bundle), out.as_path());

    // Every step's loss, and each epoch's valid loss as metrics.csv records it.
    let history = |key: &str| -> Vec<(u64, f64)> {
        get_json(&format!(
            "{api}/metrics/get-history?run_id={id}&metric_key={key}"
        ))["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["step"].as_u64().unwrap(), m["value"].as_f64().unwrap()))
            .collect()
    };
    let mut steps: Vec<u64> = history("train/loss").iter().map(|p| p.0).collect();
    steps.sort();
    assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
    assert_eq!(history("train/lr").len(), steps.len());
    let rows = metrics_without_time(&out);
    let mut valid = history("epoch/valid_loss");
    valid.sort_by_key(|p| p.0);
    assert_eq!(valid.len(), rows.len() - 1);
    for ((_, got), row) in valid.iter().zip(&rows[1..]) {
        let want: f64 = row.split(',').nth(3).unwrap().parse().unwrap();
        // metrics.csv keeps 6 decimals.
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}

/// A tracking server that is not there stops the run before training, with the fix.
#[test]
fn an_absent_mlflow_server_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let e = refused(
        tiny_train(0)
            .args([
                "--arch",
                "resnet18",
                "--threads",
                "1",
                "--quiet",
                "--mlflow",
                &url,
            ])
            .arg("--out")
            .arg(tmp.path().join("m"))
            .arg(repo().join("assets/sample")),
        &format!("MLflow at {url}"),
    );
    assert!(e.contains("mlflow server"), "{e}");
    assert!(!tmp.path().join("m").exists(), "nothing trained");
}
