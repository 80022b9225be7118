"""Shared fixtures: the CLI binary, the embedded sample photos, one tiny trained bundle."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "assets" / "sample"
REQUIRE_ALL = os.environ.get("FINETUNE_REQUIRE_ALL") == "1"


def _record_skip(report):
    """As the Rust tests' `common::skip`: every skip is appended to target/test-skips.tsv, which
    `make test` sums up; under FINETUNE_REQUIRE_ALL=1 (CI) a skip fails instead."""
    why = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    why = why.removeprefix("Skipped: ").replace("\t", " ").replace("\n", " ")
    if REQUIRE_ALL:
        report.outcome = "failed"
        report.longrepr = f"would skip ({why}), and FINETUNE_REQUIRE_ALL=1 allows no skip"
        return
    log = Path(os.environ.get("FINETUNE_SKIP_LOG") or REPO / "target" / "test-skips.tsv")
    try:
        with open(log, "a") as f:
            f.write(f"pytest::{report.nodeid}\t{why}\trun `make test`, which installs what it needs\n")
    except OSError as e:
        print(f"warning: could not record the skip in {log}: {e}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _record_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _record_skip(report)


def finetune_bin():
    b = os.environ.get("FINETUNE_BIN") or str(REPO / "target" / "release" / "finetune")
    if not Path(b).is_file():
        pytest.skip(f"no finetune binary at {b} (cargo build --release, or set FINETUNE_BIN)")
    return b


def cli(*args, check=True):
    """Runs the finetune binary; returns (returncode, stdout, stderr)."""
    p = subprocess.run([finetune_bin(), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"finetune {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p.returncode, p.stdout, p.stderr


def cli_error(*args):
    """The message of a failing CLI command (its `error: ...` line, without the prefix)."""
    code, _, err = cli(*args, check=False)
    assert code != 0, f"finetune {args} should fail"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines, err
    return lines[-1][len("error: "):]


def cli_predict(model, paths, top_k):
    """`finetune predict --json`: {path: [(label, probability), ...]} and {path: skip reason}."""
    _, out, err = cli("predict", "--json", "--top-k", top_k, "--device", "cpu", model, *paths)
    preds = {
        r["path"]: [(p["label"], p["probability"]) for p in r["predictions"]] for r in json.loads(out)
    }
    skipped = {}
    for line in err.splitlines():
        if line.startswith("warning: skipped "):
            rest = line[len("warning: skipped "):]
            for p in paths:
                if rest.startswith(f"{p}: "):
                    skipped[str(p)] = rest[len(f"{p}: "):]
    return preds, skipped


def sample_photos(per_class):
    return [p for c in sorted((SAMPLE / "test").iterdir()) for p in sorted(c.iterdir())[:per_class]]


def bad_files(d: Path):
    """Files `finetune predict` skips with a warning: HTML named .jpg, an empty PNG, a cut JPEG."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "page.jpg").write_text("<!doctype html><html><body>404</body></html>")
    (d / "empty.png").write_bytes(b"")
    good = sample_photos(1)[0].read_bytes()
    (d / "cut.jpg").write_bytes(good[: len(good) // 2])
    return [d / "page.jpg", d / "empty.png", d / "cut.jpg"]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """A tiny bundle (resnet18, random init, 32 px, one epoch per phase) trained by finetune.train,
    with the metrics it returned."""
    import finetune

    out = tmp_path_factory.mktemp("models") / "clothes"
    metrics = finetune.train(
        str(SAMPLE / "train"),
        out=str(out),
        arch="resnet18",
        random_init=True,
        size=32,
        bs=16,
        epochs=1,
        device="cpu",
        quiet=True,
    )
    return out, metrics


@pytest.fixture
def photos():
    return sample_photos(2)


def copy_photos(dst: Path, per_class):
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sample_photos(per_class):
        q = dst / p.parent.name / p.name
        q.parent.mkdir(exist_ok=True)
        shutil.copy(p, q)
        out.append(q)
    return out
