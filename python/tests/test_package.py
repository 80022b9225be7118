"""The Python package against the command line: same predictions, same metrics, same messages."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finetune
from conftest import REPO, SAMPLE, bad_files, cli, cli_error, cli_predict, finetune_bin

TOL = 1e-6


def assert_same(a, b):
    assert [lab for lab, _ in a] == [lab for lab, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) <= TOL, (a, b)


def test_torch_and_extension_share_one_libtorch():
    import torch

    maps = open("/proc/self/maps").read().splitlines()
    libs = {line.split()[-1] for line in maps if line.endswith("libtorch_cpu.so")}
    assert len(libs) == 1, libs
    assert libs.pop().startswith(torch.__path__[0])


def test_train_returns_the_bundles_metrics(bundle):
    out, metrics = bundle
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(metrics["history"]) == len(rows) == 2
    for got, want in zip(metrics["history"], rows):
        assert got["phase"] == want["phase"] and got["epoch"] == int(want["epoch"])
        for k in ("train_loss", "valid_loss", "error_rate", "accuracy"):
            assert abs(got[k] - float(want[k])) <= 1e-6, (k, got, want)
    last = rows[-1]
    for k in ("train_loss", "valid_loss", "error_rate", "accuracy"):
        assert abs(metrics[k] - float(last[k])) <= 1e-6
    info = json.loads((out / "model.json").read_text())
    assert metrics["classes"] == info["classes"] == ["hat", "pants", "shoes", "t-shirt"]
    assert metrics["model"] == str(out) and not metrics["interrupted"]
    assert info["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-12)


def test_model_describes_its_bundle(bundle):
    out, _ = bundle
    m = finetune.load(str(out), device="cpu")
    assert m.classes == ["hat", "pants", "shoes", "t-shirt"]
    assert m.info == json.loads((out / "model.json").read_text())
    assert m.info["arch"] == "resnet18" and m.path == out
    assert m.device == "cpu" and "resnet18" in repr(m)


def test_predict_equals_the_cli(bundle, photos):
    out, _ = bundle
    m = finetune.load(out, device="cpu")
    want, skipped = cli_predict(out, photos, 3)
    assert not skipped
    before = finetune.inference_plan_passes()
    got = m.predict(photos, top_k=3)
    # The prediction ran in the inference plan (BatchNorm folded), as the CLI's does.
    assert finetune.inference_plan_passes() > before
    assert len(got) == len(photos)
    for p, g in zip(photos, got):
        assert len(g) == 3
        assert_same(g, want[str(p)])
    # top_k is clamped to the number of classes, as in the CLI.
    assert [len(r) for r in m.predict(photos[:2], top_k=99)] == [4, 4]
    assert sum(s for _, s in m.predict(photos[:1], top_k=4)[0]) == pytest.approx(1.0, abs=1e-5)


def test_predict_arrays_and_encoded_equal_predict(bundle, photos, tmp_path):
    m = finetune.load(bundle[0], device="cpu")
    want = m.predict(photos, top_k=2)
    # finetune's own decoder: identical pixels, identical scores.
    pixels = [finetune.read_image(p) for p in photos]
    assert pixels[0].dtype == np.uint8 and pixels[0].shape[2] == 3
    for g, w in zip(m.predict_arrays(pixels, top_k=2), want):
        assert_same(g, w)
    # One (N, H, W, 3) array of same-sized images.
    same = [p for p in pixels if p.shape == pixels[0].shape]
    batch = m.predict_arrays(np.stack(same), top_k=2)
    assert batch == m.predict_arrays(same, top_k=2)
    # PNG decodes the same everywhere, so PIL's pixels give predict's scores too.
    pngs = []
    for i, p in enumerate(photos[:3]):
        q = tmp_path / f"{i}.png"
        Image.open(p).convert("RGB").save(q)
        pngs.append(q)
    for g, w in zip(m.predict_arrays([np.asarray(Image.open(q)) for q in pngs]), m.predict(pngs)):
        assert_same(g, w)
    # Encoded bytes, as Ray passes them.
    for g, w in zip(m.predict_encoded([p.read_bytes() for p in photos], top_k=2), want):
        assert_same(g, w)


def test_bad_images_raise_the_clis_message(bundle, photos, tmp_path):
    out, _ = bundle
    m = finetune.load(out, device="cpu")
    bad = bad_files(tmp_path)
    _, skipped = cli_predict(out, [photos[0], *bad], 1)
    assert len(skipped) == 3
    for b in bad:
        with pytest.raises(finetune.FinetuneError) as e:
            m.predict([photos[0], b])
        assert str(e.value) == f"{b}: {skipped[str(b)]}"
    got = m.predict([photos[0], *bad], return_exceptions=True)
    assert isinstance(got[0], list)
    assert [str(e) for e in got[1:]] == [f"{b}: {skipped[str(b)]}" for b in bad]
    enc = m.predict_encoded([b.read_bytes() for b in bad], names=[str(b) for b in bad], return_exceptions=True)
    assert [str(e) for e in enc] == [f"{b}: {skipped[str(b)]}" for b in bad]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m.predict([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="shape"):
        m.predict_arrays([np.zeros((8, 8), np.uint8)])
    with pytest.raises(TypeError):
        m.predict_arrays([np.zeros((8, 8, 3), np.float32)])


def test_load_errors_are_the_clis(bundle, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        finetune.load(missing)
    assert str(e.value) == cli_error("predict", missing, SAMPLE / "test")
    old = tmp_path / "old"
    old.mkdir()
    info = json.loads((bundle[0] / "model.json").read_text())
    info["format_version"] = 0
    (old / "model.json").write_text(json.dumps(info))
    with pytest.raises(finetune.FinetuneError) as e:
        finetune.load(old)
    assert "format version 0" in str(e.value)
    assert str(e.value) == cli_error("predict", old, SAMPLE / "test")
    with pytest.raises(ValueError, match="unknown device"):
        finetune.load(bundle[0], device="tpu")


def test_train_errors_are_the_clis(bundle, tmp_path):
    out, _ = bundle
    with pytest.raises(finetune.FinetuneError) as e:
        finetune.train(SAMPLE / "train", out=out, random_init=True, size=32)
    assert str(e.value) == cli_error("train", "--random-init", "--out", out, SAMPLE / "train")
    with pytest.raises(FileNotFoundError) as e:
        finetune.train(tmp_path / "nothing", out=tmp_path / "m", random_init=True)
    assert str(e.value) == cli_error("train", "--random-init", "--out", tmp_path / "m", tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown architecture"):
        finetune.train(SAMPLE / "train", arch="vgg", out=tmp_path / "m")
    with pytest.raises(ValueError, match="unknown precision `fp8`; use auto, fp32, bf16 or fp16"):
        finetune.train(SAMPLE / "train", precision="fp8", out=tmp_path / "m")
    assert issubclass(finetune.FinetuneError, Exception)


def test_the_file_cap_and_settings_are_per_call_and_checked_as_the_cli_does(bundle, photos, tmp_path):
    """`max_file_mb` belongs to one loaded model (another keeps the default), and refuses a file with
    the CLI's message; train's settings are checked by the same library calls as the CLI's flags."""
    out, _ = bundle
    small = finetune.load(out, device="cpu", max_file_mb=0)
    with pytest.raises(finetune.FinetuneError, match=r"more than the 1-byte cap \(raise it with --max-file-mb\)"):
        small.predict([photos[0]])
    assert isinstance(finetune.load(out, device="cpu").predict([photos[0]])[0], list)
    assert isinstance(small.predict_encoded([Path(photos[0]).read_bytes()])[0], list), "bytes in memory have no file cap"
    with pytest.raises(ValueError) as e:
        finetune.train(SAMPLE / "train", bs=0, out=tmp_path / "m")
    assert str(e.value) == cli_error("train", "--bs", "0", "--out", tmp_path / "m", SAMPLE / "train")
    with pytest.raises(ValueError, match="exclude each other"):
        finetune.train(SAMPLE / "train", weights=tmp_path / "w.pth", random_init=True, out=tmp_path / "m")
    with pytest.raises(ValueError, match="resize `fit`: choose one of squish, crop, pad"):
        finetune.train(SAMPLE / "train", resize="fit", out=tmp_path / "m")


def test_class_weights_and_balanced_are_the_clis(tmp_path):
    """`class_weights=` ("auto", a CSV path or a dict) and `balanced=` train as the CLI's
    `--class-weights` and `--balanced`: the same bundle record and the same metrics for the same
    seed, and bad weights refused with the CLI's message."""
    common = dict(arch="resnet18", random_init=True, size=32, bs=16, epochs=1, device="cpu", quiet=True,
                  unknown="off")
    got = finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "py"), class_weights="auto", balanced=True,
                         **common)
    cli("train", SAMPLE / "train", "--out", tmp_path / "cli", "--arch", "resnet18", "--random-init", "--size", 32,
        "--bs", 16, "--epochs", 1, "--device", "cpu", "--quiet", "--unknown", "off", "--class-weights", "auto",
        "--balanced")
    info = json.loads((tmp_path / "py" / "model.json").read_text())["training"]
    assert info["class_weights"] == "auto" and info["balanced"] is True
    with open(tmp_path / "cli" / "metrics.csv") as f:
        want = list(csv.DictReader(f))
    for g, w in zip(got["history"], want):
        for k in ("train_loss", "valid_loss", "error_rate"):
            assert abs(g[k] - float(w[k])) <= 1e-6, (k, g, w)
    classes = sorted(p.name for p in (SAMPLE / "train").iterdir())
    weights = {c: 1.0 + i for i, c in enumerate(classes)}
    finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "dict"), class_weights=weights, **common)
    info = json.loads((tmp_path / "dict" / "model.json").read_text())["training"]
    assert info["class_weights"] == {"given": weights}
    with pytest.raises(ValueError, match="no weight for the class"):
        finetune.train(SAMPLE / "train", class_weights={classes[0]: 1.0}, out=tmp_path / "m", **common)
    with pytest.raises(ValueError, match="must be a number above 0"):
        finetune.train(SAMPLE / "train", class_weights={c: 0.0 for c in classes}, out=tmp_path / "m", **common)


def test_mixup_cutmix_and_label_smoothing_are_the_clis(tmp_path):
    """`mixup=`, `cutmix=` and `label_smoothing=` train as the CLI's flags do: the same bundle record
    and the same metrics for the same seed, and the same messages for bad values."""
    common = dict(arch="resnet18", random_init=True, size=32, bs=16, epochs=1, device="cpu", quiet=True)
    got = finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "py"), mixup=0.4, label_smoothing=0.1, **common)
    cli("train", SAMPLE / "train", "--out", tmp_path / "cli", "--arch", "resnet18", "--random-init", "--size", 32,
        "--bs", 16, "--epochs", 1, "--device", "cpu", "--quiet", "--mixup", 0.4, "--label-smoothing", 0.1)
    info = json.loads((tmp_path / "py" / "model.json").read_text())["training"]
    assert info["mix"] == {"kind": "mixup", "alpha": 0.4} and info["label_smoothing"] == 0.1
    with open(tmp_path / "cli" / "metrics.csv") as f:
        want = list(csv.DictReader(f))
    for g, w in zip(got["history"], want):
        for k in ("train_loss", "valid_loss", "error_rate"):
            assert abs(g[k] - float(w[k])) <= 1e-6, (k, g, w)
    with pytest.raises(ValueError, match="exclude each other"):
        finetune.train(SAMPLE / "train", mixup=0.4, cutmix=1.0, out=tmp_path / "m")
    with pytest.raises(ValueError) as e:
        finetune.train(SAMPLE / "train", cutmix=0.0, out=tmp_path / "m")
    assert str(e.value) == cli_error("train", "--cutmix", "0", "--out", tmp_path / "m", SAMPLE / "train")
    with pytest.raises(ValueError, match="--label-smoothing must be at least 0 and below 1"):
        finetune.train(SAMPLE / "train", label_smoothing=1.5, out=tmp_path / "m")
    # augment= takes the CLI's magnitudes as a dict.
    finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "aug"), augment={"max_warp": 0.1, "max_rotate": 5},
                   **common)
    aug = json.loads((tmp_path / "aug" / "model.json").read_text())["training"]
    assert aug["augment"] and aug["aug"]["max_warp"] == 0.1 and aug["aug"]["max_rotate"] == 5.0
    with pytest.raises(ValueError, match="--max-warp must be between 0 and 0.3"):
        finetune.train(SAMPLE / "train", augment={"max_warp": 0.5}, out=tmp_path / "m")
    with pytest.raises(ValueError, match="unknown key `warp`"):
        finetune.train(SAMPLE / "train", augment={"warp": 0.5}, out=tmp_path / "m")


@pytest.mark.skipif(not finetune.DISTRIBUTED, reason="finetune was built without distributed training "
                    "(no Gloo headers): apt-get install libgloo-dev, then rebuild")
def test_train_under_torchrun_is_the_clis_data_parallel_run(tmp_path):
    """`python -m torch.distributed.run script.py` calling finetune.train: one data-parallel run of
    two ranks, as `torchrun finetune train`: rank 0 alone writes the bundle, both return its metrics,
    which equal the CLI's under torchrun for the same seed."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = tmp_path / "train.py"
    script.write_text(
        "import json, os, sys, finetune\n"
        f"r = finetune.train({str(SAMPLE / 'train')!r}, out={str(tmp_path / 'py')!r}, arch='resnet18',"
        " random_init=True, size=32, bs=4, epochs=1, device='cpu', quiet=True)\n"
        f"open(os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK']), 'w')"
        ".write(json.dumps(r['history']))\n")
    p = subprocess.run([*torchrun, str(script)], capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*torchrun, "--no-python", finetune_bin(), "train", str(SAMPLE / "train"), "--out",
                        str(tmp_path / "cli"), "--arch", "resnet18", "--random-init", "--size", "32", "--bs", "4",
                        "--epochs", "1", "--device", "cpu", "--quiet"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "py" / "model.json").read_text())["training"]
    assert (info["world_size"], info["global_batch"], info["dist_backend"]) == (2, 8, "gloo")
    h0, h1 = ([{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((tmp_path / f"rank{r}").read_text())]
              for r in (0, 1))
    assert h0 == h1, "the ranks returned different metrics"
    with open(tmp_path / "cli" / "metrics.csv") as f:
        want = list(csv.DictReader(f))
    assert len(h0) == len(want) == 2
    for g, w in zip(h0, want):
        for k in ("train_loss", "valid_loss", "error_rate"):
            assert abs(g[k] - float(w[k])) <= 1e-6, (k, g, w)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cli", "py", "rank0", "rank1", "train.py"]


def test_save_best_and_early_stop_are_the_clis(tmp_path):
    """`save_best=` and `early_stop=` are `--save-best` and `--early-stop`: each fit stops early, the
    history marks the kept epochs, and the returned metrics are the kept epoch's. A valid set of at
    most 5 images has at most 6 error rates, so 7 epochs cannot all improve strictly: both fits stop."""
    common = dict(arch="resnet18", random_init=True, size=32, bs=16, epochs=7, freeze_epochs=7, device="cpu",
                  quiet=True, valid_pct=0.03)
    got = finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "py"), save_best="error_rate", early_stop=1,
                         **common)
    hist = got["history"]
    for phase in ("frozen", "unfrozen"):
        rows = [r for r in hist if r["phase"] == phase]
        assert 0 < len(rows) < 7 and sum(r["best"] for r in rows) == 1, hist
    kept = [r for r in hist if r["phase"] == "unfrozen" and r["best"]][0]
    assert got["error_rate"] == kept["error_rate"]
    info = json.loads((tmp_path / "py" / "model.json").read_text())["training"]
    assert info["tracking"] == {"monitor": "error_rate", "save_best": True, "patience": 1}
    with pytest.raises(ValueError, match="--early-stop must be at least 1"):
        finetune.train(SAMPLE / "train", early_stop=0, out=tmp_path / "m")
    with pytest.raises(ValueError, match="choose valid_loss or error_rate"):
        finetune.train(SAMPLE / "train", save_best="accuracy", out=tmp_path / "m")


def test_labels_from_a_csv_are_the_clis(tmp_path):
    """`labels=`, `fn_col=`, `label_col=`, `valid_col=` are `--labels` and its column flags: the same
    metrics for the same CSV, and the CLI's message for a malformed one."""
    rows = ["label,file,is_valid"]
    for i, p in enumerate(sorted((SAMPLE / "train").glob("*/*"))):
        rows.append(f"{p.parent.name},{p.parent.name}/{p.name},{'true' if i % 5 == 0 else 'false'}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    cols = dict(labels=str(labels), fn_col="file", label_col="label", valid_col="is_valid")
    got = finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "py"), arch="resnet18", random_init=True,
                         size=32, bs=16, epochs=1, device="cpu", quiet=True, **cols)
    cli("train", SAMPLE / "train", "--out", tmp_path / "cli", "--arch", "resnet18", "--random-init", "--size", 32,
        "--bs", 16, "--epochs", 1, "--device", "cpu", "--quiet", "--labels", labels, "--fn-col", "file",
        "--label-col", "label", "--valid-col", "is_valid")
    with open(tmp_path / "cli" / "metrics.csv") as f:
        want = list(csv.DictReader(f))
    for g, w in zip(got["history"], want):
        for k in ("train_loss", "valid_loss", "error_rate"):
            assert abs(g[k] - float(w[k])) <= 1e-6, (k, g, w)
    info = json.loads((tmp_path / "py" / "model.json").read_text())
    assert info["data"]["valid_images"] == len([r for r in rows if r.endswith(",true")])
    labels.write_text("label,file\nhat,hat/x.jpg\nhat,hat/x.jpg\n")
    with pytest.raises(finetune.FinetuneError) as e:
        finetune.train(SAMPLE / "train", labels=labels, fn_col="file", label_col="label", random_init=True,
                       out=tmp_path / "m")
    assert str(e.value) == cli_error("train", "--labels", labels, "--fn-col", "file", "--label-col", "label",
                                     "--random-init", "--out", tmp_path / "m", SAMPLE / "train")
    assert "line 3: hat/x.jpg is listed again (first on line 2)" in str(e.value)


def test_multi_label_is_the_clis(tmp_path):
    """`label_delim=` is `--label-delim`: the same epoch table (accuracy_multi, F1) for the same CSV, and
    `predict(thresh=...)` lists the labels above the threshold exactly as `finetune predict --thresh`."""
    rows = ["file,tags"]
    for i, p in enumerate(sorted((SAMPLE / "train").glob("*/*"))):
        extra = " worn" if p.parent.name in ("hat", "shoes") else ""
        rows.append(f"{p.parent.name}/{p.name},{p.parent.name}{extra}")
    labels = tmp_path / "tags.csv"
    labels.write_text("\n".join(rows) + "\n")
    common = dict(arch="resnet18", random_init=True, size=32, bs=16, epochs=1, device="cpu", quiet=True)
    got = finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "py"), labels=str(labels), fn_col="file",
                         label_col="tags", label_delim=" ", **common)
    cli("train", SAMPLE / "train", "--out", tmp_path / "cli", "--arch", "resnet18", "--random-init", "--size", 32,
        "--bs", 16, "--epochs", 1, "--device", "cpu", "--quiet", "--labels", labels, "--fn-col", "file",
        "--label-col", "tags", "--label-delim", " ")
    with open(tmp_path / "cli" / "metrics.csv") as f:
        want = list(csv.DictReader(f))
    assert "f1_score" in want[0]
    for g, w in zip(got["history"], want):
        for k, c in (("train_loss", "train_loss"), ("valid_loss", "valid_loss"), ("accuracy", "accuracy"),
                     ("f1", "f1_score")):
            assert abs(g[k] - float(w[c])) <= 1e-6, (k, g, w)
    info = json.loads((tmp_path / "py" / "model.json").read_text())
    assert info["task"] == "multi_label"
    assert info["classes"] == ["hat", "pants", "shoes", "t-shirt", "worn"]
    m = finetune.load(tmp_path / "py", device="cpu")
    paths = sorted((SAMPLE / "test").glob("*/*"))[:12]
    for thresh in (0.3, 0.5):
        py = m.predict(paths, thresh=thresh)
        _, out, _ = cli("predict", "--json", "--thresh", thresh, "--device", "cpu", tmp_path / "py", *paths)
        for p, r in zip(py, json.loads(out)):
            assert_same(p, [(x["label"], x["probability"]) for x in r["predictions"]])
            assert all(s > thresh for _, s in p)
    with pytest.raises(ValueError, match="must be between 0 and 1"):
        m.predict(paths, thresh=1.5)


def test_tta_equals_the_clis(photos, tmp_path):
    """`tta=` gives `finetune predict --tta`'s probabilities, for files, pixels and bytes alike; on a
    model trained with a random crop and `augment`, TTA changes them."""
    out = tmp_path / "crop"
    finetune.train(
        str(SAMPLE / "train"), out=str(out), arch="resnet18", random_init=True, size=32, bs=16,
        epochs=1, device="cpu", quiet=True, resize="crop", augment=True,
    )
    m = finetune.load(out, device="cpu")

    def cli_tta(*extra):
        _, stdout, _ = cli("predict", "--json", "--top-k", 4, "--device", "cpu", *extra, out, *photos)
        return [[(p["label"], p["probability"]) for p in r["predictions"]] for r in json.loads(stdout)]

    want = cli_tta("--tta")
    got = m.predict(photos, top_k=4, tta=True)
    for g, w in zip(got, want):
        assert_same(g, w)
    pixels = [finetune.read_image(p) for p in photos]
    for g, w in zip(m.predict_arrays(pixels, top_k=4, tta=True), want):
        assert_same(g, w)
    for g, w in zip(m.predict_encoded([Path(p).read_bytes() for p in photos], top_k=4, tta=True), want):
        assert_same(g, w)
    for g, w in zip(m.predict(photos, top_k=4, tta={"n": 2, "beta": 0.5, "seed": 3}),
                    cli_tta("--tta", "--tta-n", 2, "--tta-beta", 0.5, "--tta-seed", 3)):
        assert_same(g, w)
    plain = m.predict(photos, top_k=4)
    assert max(abs(dict(g)[lab] - s) for g, p in zip(got, plain) for lab, s in p) > 1e-6
    assert m.predict(photos, top_k=4, tta=False) == plain
    with pytest.raises(ValueError, match="--tta-n must be at least 1"):
        m.predict(photos, tta={"n": 0})
    with pytest.raises(ValueError, match="unknown key `k`"):
        m.predict(photos, tta={"k": 1})


def test_predict_releases_the_gil(bundle, photos):
    """While `predict` runs in one thread, another Python thread keeps running. The work is sized
    by doubling until one call lasts at least a second, so the check does not depend on how fast
    the machine is; what it asserts is what a thread observes, not a duration."""
    m = finetune.load(bundle[0], device="cpu")

    def observe(many):
        done = threading.Event()
        span = []

        def work():
            t = time.perf_counter()
            m.predict(many)
            span.append((t, time.perf_counter()))
            done.set()

        ticks = []
        th = threading.Thread(target=work)
        th.start()
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)
        th.join()
        t0, t1 = span[0]
        return t1 - t0, np.diff([t0, *[t for t in ticks if t0 <= t <= t1], t1])

    many = photos
    for _ in range(16):
        secs, gaps = observe(many)
        if secs >= 1.0:
            break
        many = many * 2
    assert secs >= 1.0, f"predict of {len(many)} photos still took only {secs:.3f} s"
    # Holding the GIL would freeze this loop for the whole call: one gap as long as the call.
    assert len(gaps) > 10 and gaps.max() < 0.5 * secs, (secs, len(gaps), gaps.max())


# The child restores Python's own Ctrl-C handler: a process started in the background by a
# non-interactive shell (as CI may start the suite) inherits SIGINT as ignored, and Python then
# leaves it ignored, so the signal would never arrive. A user at a terminal has the default.
SCRIPT = """
import signal, sys, finetune
signal.signal(signal.SIGINT, signal.default_int_handler)
finetune.train(sys.argv[1], out=sys.argv[2], random_init=True, size=32, bs=16, epochs=50, device="cpu")
"""


def test_ctrl_c_saves_a_resumable_bundle(tmp_path):
    out = tmp_path / "m"
    p = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(SAMPLE / "train"), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.strip().startswith("0 "):  # the first epoch's table row: a checkpoint exists
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0 and "KeyboardInterrupt: training stopped" in err, err
    assert f"continue it with finetune.train(resume='{out}')" in err
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["interrupted"] and (out / "resume" / "state.json").is_file()
