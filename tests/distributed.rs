//! Data-parallel training on c10d (Gloo on the CPU), launched as users launch it: by the venv's
//! torchrun, or by the variables any launcher sets. Every rank runs one CPU thread.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this build and venv can run the tests (a skip, recorded, otherwise).
fn ready() -> bool {
    if !finetune::dist::AVAILABLE {
        skip(
            "finetune was built without distributed training (no Gloo headers)",
            "apt-get install libgloo-dev, then rebuild",
        );
        return false;
    }
    if !torchrun().is_file() {
        skip(
            "the venv has no torchrun",
            "make setup (installs torch into .venv)",
        );
        return false;
    }
    true
}

fn torchrun() -> PathBuf {
    python().with_file_name("torchrun")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sample as train/ and valid/ folders: 160 training and 42 validation photos (42 split
/// over two ranks in batches of 4 leaves a last batch of one on each).
fn data(dir: &Path) -> PathBuf {
    let d = dir.join("data");
    for (from, to) in [("train", "train"), ("test", "valid")] {
        for class in std::fs::read_dir(repo().join("assets/sample").join(from)).unwrap() {
            let class = class.unwrap().path();
            let dst = d.join(to).join(class.file_name().unwrap());
            std::fs::create_dir_all(&dst).unwrap();
            for f in std::fs::read_dir(&class).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    d
}

/// `finetune train` arguments shared by every run here, with `--out out` (the data folder follows).
fn train_args(bs: usize, epochs: usize, out: &str) -> Vec<String> {
    [
        "train",
        "--random-init",
        "--size",
        "32",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
        "--arch",
        "resnet18",
        "--bs",
        &bs.to_string(),
        "--epochs",
        &epochs.to_string(),
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// torchrun with one thread per rank and the tests' image cache; launcher arguments follow.
fn torchrun_base() -> Command {
    let mut c = Command::new(torchrun());
    c.arg("--no-python").env("OMP_NUM_THREADS", "1").env(
        "FINETUNE_IMAGE_CACHE",
        repo().join("target/test-image-cache"),
    );
    c
}

/// `nproc` ranks on this machine.
fn torchrun_cmd(nproc: usize) -> Command {
    let mut c = torchrun_base();
    c.args(["--standalone", "--nproc-per-node", &nproc.to_string()]);
    c
}

fn info(bundle: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("model.json")).unwrap()).unwrap()
}

/// The last epoch row's accuracy in metrics.csv.
fn last_accuracy(bundle: &Path) -> f64 {
    let csv = std::fs::read_to_string(bundle.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "accuracy").unwrap();
    let last = csv.lines().last().unwrap();
    last.split(',').nth(col).unwrap().parse().unwrap()
}

fn evaluate_accuracy(bundle: &Path, folder: &Path) -> f64 {
    let o = run(bin().arg("evaluate").arg(bundle).arg(folder).args([
        "--json",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]));
    assert!(o.status.success(), "evaluate: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    v["accuracy"].as_f64().unwrap()
}

/// Two ranks with `--bs 4` train what one process with `--bs 8` trains: the same global batches,
/// the same schedule; the epoch table is the whole validation set's; one bundle, written by rank 0.
#[test]
fn two_ranks_train_like_one_process_and_write_one_bundle() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let args = train_args(4, 2, "two");
    let o = run(torchrun_cmd(2)
        .arg(env!("CARGO_BIN_EXE_finetune"))
        .args(&args)
        .arg(&d)
        .current_dir(&work));
    assert!(o.status.success(), "torchrun: {}\n{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains("distributed: 2 processes (gloo), --bs 4 per process, global batch 8"),
        "{}",
        o.stderr
    );
    // Only rank 0 wrote, and only the bundle.
    let made: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(made, ["two"], "rank 1 wrote something");
    let two = work.join("two");
    let t = &info(&two)["training"];
    assert_eq!(t["world_size"], 2);
    assert_eq!(t["global_batch"], 8);
    assert_eq!(t["dist_backend"], "gloo");
    assert_eq!(t["bs"], 4);
    assert_eq!(
        metrics_without_time(&two).len(),
        1 + 1 + 2,
        "header, frozen, 2 unfrozen"
    );
    // The table's accuracy is the whole valid set's, not rank 0's half.
    assert_eq!(
        last_accuracy(&two),
        evaluate_accuracy(&two, &d.join("valid")),
        "the reduced accuracy differs from evaluate's on the whole valid/ folder"
    );

    // One process, the same global batch.
    let args = train_args(8, 2, "one");
    let o = run(bin().args(&args).arg(&d).current_dir(&work));
    assert!(o.status.success(), "{}", o.stderr);
    let one = work.join("one");
    assert!(info(&one)["training"].get("world_size").is_none());
    // Random init at 32 px: accuracy is noise here, so the comparison is of what both compute
    // the same: the number of steps and the schedule (hypers are the bundle's), and a valid loss
    // of the same size (BatchNorm sees 4 images per rank instead of 8: not bit-equal).
    let (a, b) = (metrics_without_time(&one), metrics_without_time(&two));
    assert_eq!(a.len(), b.len());
    let loss = |row: &str| -> f64 { row.split(',').nth(3).unwrap().parse().unwrap() };
    for (ra, rb) in a.iter().zip(&b).skip(1) {
        let (la, lb) = (loss(ra), loss(rb));
        assert!(
            (la - lb).abs() < 0.5 * la.max(lb),
            "valid loss of one process {la} and of two ranks {lb} are not alike"
        );
    }
}

/// `--balanced` and `--class-weights auto` under torchrun: every rank draws the same balanced
/// global batches and takes its own share of each (rank 0 the first `--bs`), so two
/// ranks of `--bs 4` train what one process of `--bs 8` trains (the replicas stay one model: the
/// run checks their weights after every epoch), and the bundle records both options once; only
/// rank 0 writes `--tensorboard`'s events.
#[test]
fn balanced_sampling_and_class_weights_shard_by_rank() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let extra = ["--balanced", "--class-weights", "auto"];
    let o = run(torchrun_cmd(2)
        .arg(env!("CARGO_BIN_EXE_finetune"))
        .args(train_args(4, 1, "two"))
        .args(extra)
        .args(["--tensorboard", "tb"])
        .arg(&d)
        .current_dir(&work));
    assert!(o.status.success(), "torchrun: {}\n{}", o.stdout, o.stderr);
    // TensorBoard is rank 0's alone: one event file.
    assert_eq!(std::fs::read_dir(work.join("tb")).unwrap().count(), 1);
    let t = &info(&work.join("two"))["training"];
    assert_eq!(
        (t["balanced"].clone(), t["class_weights"].clone()),
        (true.into(), "auto".into())
    );
    assert_eq!(t["world_size"], 2);
    let o = run(bin()
        .args(train_args(8, 1, "one"))
        .args(extra)
        .arg(&d)
        .current_dir(&work));
    assert!(o.status.success(), "{}", o.stderr);
    // As in the plain two-rank test: the same steps and schedule, a valid loss of the same size
    // (BatchNorm sees 4 images per rank instead of 8, so not bit-equal).
    let (a, b) = (
        metrics_without_time(&work.join("one")),
        metrics_without_time(&work.join("two")),
    );
    assert_eq!(a.len(), b.len());
    let loss = |row: &str| -> f64 { row.split(',').nth(3).unwrap().parse().unwrap() };
    for (ra, rb) in a.iter().zip(&b).skip(1) {
        let (la, lb) = (loss(ra), loss(rb));
        assert!(
            (la - lb).abs() < 0.5 * la.max(lb),
            "one process {la}, two ranks {lb}"
        );
    }
}

/// The tight check, without BatchNorm's batch statistics and dropout (eval-mode forward of
/// pretrained mobilenet_v2, so logits and gradients have their real sizes). Two ranks that each take
/// half a batch and average gradients (1) apply the whole batch's gradient, to the rounding of
/// kernels run on 4 images instead of 8, and (2) after three Adam steps hold exactly the weights of
/// one process doing the same arithmetic (each half's gradient, averaged). The weights are not
/// compared with whole-batch steps: Adam divides each gradient element by its own size, so
/// rounding-level differences in tiny elements become differences of a step (1e-3) after two steps.
#[test]
fn averaged_gradients_equal_the_whole_batchs() {
    if !ready() {
        return;
    }
    let Some(w) = mobilenet_weights() else {
        skip("no mobilenet_v2 weights", NEEDS_SHARED);
        return;
    };
    use finetune::dist::{Backend, Group, Launch, Replica};
    use finetune::model::{load_checkpoint, Arch, Network, Portion};
    use finetune::train::optimizer::Adam;
    use finetune::train::AdamConfig;
    use tch::{Device, Kind, Tensor};
    tch::set_num_threads(1);
    let make = || {
        tch::manual_seed(3);
        let net = Network::classifier(Arch::MobilenetV2, 4, Device::Cpu);
        load_checkpoint(&net, &w, Portion::Body).unwrap();
        let opt = Adam::new(
            finetune::train::learner::opt_params(&net),
            AdamConfig::default(),
        );
        (net, opt)
    };
    tch::manual_seed(9);
    let x = Tensor::randn([8, 3, 64, 64], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 3, 2, 1, 0]);
    let half = |i: i64| (x.narrow(0, i * 4, 4), y.narrow(0, i * 4, 4));
    // The gradients of `net` on (x, y), left in place and returned.
    let grads = |net: &Network, opt: &mut Adam, x: &Tensor, y: &Tensor| {
        let loss = tch::nn::ModuleT::forward_t(net, x, false).cross_entropy_for_logits(y);
        opt.zero_grad();
        loss.backward();
        opt.grads().iter().map(|g| g.copy()).collect::<Vec<_>>()
    };
    let lrs = [1e-3, 1e-3, 1e-3];
    // One process: the whole batch's first gradient, and three steps on averaged half gradients.
    let (one, mut opt) = make();
    let whole = grads(&one, &mut opt, &x, &y);
    for _ in 0..3 {
        let (a, b) = (half(0), half(1));
        let ga = grads(&one, &mut opt, &a.0, &a.1);
        let gb = grads(&one, &mut opt, &b.0, &b.1);
        tch::no_grad(|| {
            for ((mut g, ga), gb) in opt.grads().into_iter().zip(&ga).zip(&gb) {
                g.copy_(&((ga + gb) * 0.5));
            }
        });
        opt.step(&lrs, 0.9);
    }
    let port = free_port();
    // Made here, one after the other: libtorch's generator is the process's, shared by threads.
    let replicas: Vec<_> = (0..2).map(|_| make()).collect();
    let ranks: Vec<_> = replicas
        .into_iter()
        .enumerate()
        .map(|(rank, (net, mut opt))| {
            let (x, y) = half(rank as i64);
            std::thread::spawn(move || {
                let launch = Launch {
                    rank,
                    local_rank: rank,
                    world: 2,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    agent_store: false,
                    restart: 0,
                };
                let g = Group::join(&launch, Backend::Gloo, Duration::from_secs(60)).unwrap();
                let r = Replica::new(g, Device::Cpu);
                let mut first = Vec::new();
                for s in 0..3 {
                    grads(&net, &mut opt, &x, &y);
                    let _ = r
                        .average_grads(
                            &opt.grads(),
                            &Tensor::zeros([1], (Kind::Float, Device::Cpu)),
                        )
                        .unwrap();
                    if s == 0 {
                        first = opt.grads().iter().map(|g| g.copy()).collect();
                    }
                    opt.step(&lrs, 0.9);
                }
                r.group.barrier().unwrap();
                let vars: Vec<(String, Tensor)> = net
                    .vs
                    .variables()
                    .into_iter()
                    .map(|(k, v)| (k, v.copy()))
                    .collect();
                (first, vars)
            })
        })
        .collect();
    let got: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    let mut worst_grad = 0f64;
    for (i, g) in whole.iter().enumerate() {
        let scale = g.abs().max().double_value(&[]).max(1e-12);
        for (first, _) in &got {
            worst_grad = worst_grad.max(max_abs_diff(&first[i], g) / scale);
        }
    }
    assert!(
        worst_grad < 1e-5,
        "the averaged gradient differs from the whole batch's by {worst_grad} of its size"
    );
    let want = one.vs.variables();
    let mut worst = 0f64;
    for (k, v) in &got[0].1 {
        let other = &got[1].1.iter().find(|(n, _)| n == k).unwrap().1;
        assert!(v.equal(other), "{k}: the ranks differ");
        worst = worst.max(max_abs_diff(v, &want[k]));
    }
    assert!(
        worst <= 1e-7,
        "two ranks' weights differ from one process's by {worst}"
    );
    eprintln!(
        "first gradient within {worst_grad:.1e} of the whole batch's; weights within {worst:.1e}"
    );
}

fn spawn_rank(
    rank: usize,
    port: u16,
    args: &[String],
    data: &Path,
    cwd: &Path,
) -> std::process::Child {
    bin()
        .args(args)
        .arg(data)
        .current_dir(cwd)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` up to `limit`; its output.
fn finish(mut child: std::process::Child, limit: Duration) -> Output {
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let o = child.wait_with_output().unwrap();
            return Output {
                status: o.status,
                stdout: String::from_utf8_lossy(&o.stdout).into(),
                stderr: String::from_utf8_lossy(&o.stderr).into(),
            };
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A rank killed mid-run ends the other with an error naming it, long before the timeout.
#[test]
fn a_killed_rank_stops_the_other_naming_it() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let port = free_port();
    let mut args = train_args(4, 200, "k");
    args.extend(["--dist-timeout".into(), "120".into()]);
    let r0 = spawn_rank(0, port, &args, &d, tmp.path());
    let mut r1 = KillOnDrop(spawn_rank(1, port, &args, &d, tmp.path()));
    // The first epoch's checkpoint: both ranks are well into training.
    wait_for(300, "the first checkpoint", || {
        tmp.path().join("k/model.json").exists()
    });
    r1.0.kill().unwrap();
    let t = Instant::now();
    // Well before --dist-timeout (120 s): the lost rank's sockets close, and the next collective
    // fails at once; a rank 0 that waited out the timeout fails here.
    let o = finish(r0, Duration::from_secs(60));
    let stopped = t.elapsed();
    assert!(!o.status.success(), "rank 0 went on alone");
    assert!(
        stopped < Duration::from_secs(30),
        "rank 0 stopped {stopped:?} after rank 1 died: it waited for the timeout instead of failing at once"
    );
    assert!(
        o.stderr.contains("rank 1") && o.stderr.contains("died"),
        "rank 0's error does not name the lost rank: {}",
        o.stderr
    );
    eprintln!(
        "rank 0 stopped {:.1}s after rank 1 was killed",
        stopped.as_secs_f64()
    );
    // What was saved stays a resumable bundle.
    assert!(info(&tmp.path().join("k"))["training"]["interrupted"] == true);
}

/// One rank started with another seed is refused at start, by every rank, naming the seed.
#[test]
fn a_rank_with_another_seed_is_refused() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let port = free_port();
    let args = train_args(4, 1, "s");
    let mut other = args.clone();
    other.extend(["--seed".into(), "7".into()]);
    let r0 = spawn_rank(0, port, &args, &d, tmp.path());
    let r1 = spawn_rank(1, port, &other, &d, tmp.path());
    for o in [
        finish(r0, Duration::from_secs(120)),
        finish(r1, Duration::from_secs(120)),
    ] {
        assert!(!o.status.success());
        assert!(
            o.stderr.contains("the ranks disagree on the seed"),
            "{}",
            o.stderr
        );
    }
    assert!(
        !tmp.path().join("s").exists(),
        "a refused run wrote a bundle"
    );
}

/// torchrun --max-restarts 1: a worker killed after the first epoch, the group restarted, the
/// run continues from the checkpoint and ends with the bundle of an uninterrupted run.
#[test]
fn a_restarted_group_resumes_to_the_uninterrupted_result() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let run_to = |out: &str, kill: bool| {
        let args = train_args(4, 3, out);
        let child = torchrun_cmd(2)
            .args(["--max-restarts", "1", "--monitor-interval", "0.2"])
            .arg(env!("CARGO_BIN_EXE_finetune"))
            .args(&args)
            .arg(&d)
            .current_dir(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if kill {
            let bundle = tmp.path().join(out);
            wait_for(300, "the first checkpoint", || {
                bundle.join("model.json").exists()
            });
            let worker = workers_of(child.id());
            assert_eq!(worker.len(), 2, "two workers under torchrun");
            // SAFETY: signalling a child process of ours.
            unsafe { libc::kill(worker[1] as i32, libc::SIGKILL) };
        }
        let o = finish(child, Duration::from_secs(600));
        assert!(o.status.success(), "torchrun: {}", o.stderr);
        o
    };
    let o = run_to("restarted", true);
    assert!(
        o.stderr.contains("continuing") && o.stderr.contains("from its checkpoint"),
        "no resume after the restart: {}",
        o.stderr
    );
    run_to("straight", false);
    let (a, b) = (tmp.path().join("restarted"), tmp.path().join("straight"));
    assert_eq!(metrics_without_time(&a), metrics_without_time(&b));
    let wa = tch::Tensor::read_safetensors(a.join("model.safetensors")).unwrap();
    let wb: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(b.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(wa.len(), wb.len());
    for (k, t) in &wa {
        assert!(t.equal(&wb[k]), "{k} differs from the uninterrupted run's");
    }
}

/// The worker processes torchrun started (its children's children or children).
fn workers_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let bin = env!("CARGO_BIN_EXE_finetune");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(format!("/proc/{p}/exe")) else {
            continue;
        };
        if exe != Path::new(bin) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            found.push(p);
        }
    }
    found.sort();
    found
}

/// Two "nodes" on one machine: two torchrun invocations meeting through a c10d rendezvous.
#[test]
fn two_nodes_meet_through_a_c10d_rendezvous() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = data(tmp.path());
    let port = free_port();
    let args = train_args(4, 1, "n");
    let node = |_: usize| {
        torchrun_base()
            .args(["--nnodes", "2", "--nproc-per-node", "1"])
            .args(["--rdzv-backend", "c10d", "--rdzv-id", "finetune-test"])
            .arg(format!("--rdzv-endpoint=127.0.0.1:{port}"))
            .arg(env!("CARGO_BIN_EXE_finetune"))
            .args(&args)
            .arg(&d)
            .current_dir(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (node(0), node(1));
    for o in [
        finish(a, Duration::from_secs(300)),
        finish(b, Duration::from_secs(300)),
    ] {
        assert!(o.status.success(), "{}", o.stderr);
    }
    assert_eq!(info(&tmp.path().join("n"))["training"]["world_size"], 2);
}
