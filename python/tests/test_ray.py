"""Batch prediction on a local Ray cluster equals `finetune predict` on the same images, also with a
worker per CPU; a stage that stalls stops the job with an error naming it."""

import csv
import os
import shutil
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest

ray = pytest.importorskip("ray")

from conftest import bad_files, cli_predict, copy_photos  # noqa: E402
from finetune import ray_predict  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def ray_cli(*args, env=None):
    """`python -m finetune.ray_predict ARGS` joined to the fixture's cluster (RAY_ADDRESS), as under
    `ray job submit`; the timeout only guards against a hang."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, **(env or {})}
    cmd = [sys.executable, "-m", "finetune.ray_predict", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def csv_rows(output):
    import pyarrow.csv as pacsv

    opts = pacsv.ConvertOptions(column_types={"error": "string", "label": "string"}, strings_can_be_null=True)
    return rows(output, pads.CsvFileFormat(convert_options=opts))


def rows(output, fmt):
    t = pads.dataset(str(output), format=fmt).to_table().to_pylist()
    return {r["path"]: r for r in t}


def check(got, model, paths, top_k):
    want, skipped = cli_predict(model, paths, top_k)
    assert set(got) == {str(p) for p in paths}
    for p, r in got.items():
        if p in skipped:
            assert r["error"] == skipped[p] and r["label"] is None, r
            continue
        assert not r["error"], r
        for k, (label, score) in enumerate(want[p], start=1):
            sfx = "" if k == 1 else f"_{k}"
            assert r["label" + sfx] == label and abs(r["score" + sfx] - score) <= 1e-6, (r, want[p])
    return skipped


def test_folder_to_parquet_equals_finetune_predict(cluster, bundle, tmp_path):
    """The README's example, as a command line: a folder of photos with bad files among them."""
    model, _ = bundle
    photos = tmp_path / "photos"
    good = copy_photos(photos, 5)
    bad = bad_files(photos / "junk")
    (photos / "README.txt").write_text("not an input: neither named nor made like an image")
    out = tmp_path / "predictions.parquet"
    ray_predict.main([str(model), str(photos), str(out), "--num-workers", "1", "--batch-size", "8", "--top-k", "2"])
    got = rows(out, "parquet")
    skipped = check(got, model, [*good, *bad], 2)
    assert len(good) == 20 and len(skipped) == 3


def test_csv_list_with_missing_files_to_csv(cluster, bundle, tmp_path):
    model, _ = bundle
    good = copy_photos(tmp_path / "p", 2)
    bad = bad_files(tmp_path / "b")
    listing = tmp_path / "list.csv"
    missing = tmp_path / "gone.jpg"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "note"])
        for p in [*good, *bad, missing]:
            w.writerow([str(p), "x"])
    out = tmp_path / "out.csv"
    stats = ray_predict.run(str(model), str(listing), str(out), num_workers=1, batch_size=4)
    assert stats["images"] == len(good) + len(bad) + 1 and stats["errors"] == len(bad) + 1
    got = csv_rows(out)
    assert got.pop(str(missing))["error"] == "does not exist"
    check(got, model, [*good, *bad], 1)
    shutil.rmtree(out)


def test_glob_and_parquet_list(cluster, bundle, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model, _ = bundle
    good = copy_photos(tmp_path / "g", 2)
    out = tmp_path / "glob.parquet"
    ray_predict.run(str(model), str(tmp_path / "g" / "*" / "*.jpg"), str(out), batch_size=4)
    check(rows(out, "parquet"), model, good, 1)
    listing = tmp_path / "list.parquet"
    pq.write_table(pa.table({"id": list(range(len(good))), "uri": [str(p) for p in good]}), listing)
    out = tmp_path / "list-out.parquet"
    ray_predict.run(str(model), str(listing), str(out), batch_size=4, top_k=3)
    check(rows(out, "parquet"), model, good, 3)


def test_as_many_workers_as_cpus(cluster, bundle, tmp_path):
    """The issue's command: a worker per CPU. At Ray's default of 1 CPU each the workers took every
    CPU, the read tasks waited for one forever and nothing was printed; now they share what
    reading leaves (0.5 CPU each on the fixture's 2) and the job ends as with one worker."""
    model, _ = bundle
    good = copy_photos(tmp_path / "photos", 3)
    n = int(ray.cluster_resources()["CPU"])
    out = tmp_path / "out.csv"
    p = ray_cli(model, tmp_path / "photos", out, "--num-workers", n, "--batch-size", 4, "--stall-timeout-s", 120)
    assert p.returncode == 0, p.stderr
    assert f"with {n} worker(s) ({ray_predict.plan_cpus(n, n)[0]:g} CPU each)" in p.stderr, p.stderr
    check(csv_rows(out), model, good, 1)
    assert [f.suffix for f in out.iterdir()] == [".csv"]  # one file, its temporary name gone


@pytest.mark.parametrize(
    "stage, why", [("read", "no rows read"), ("write", "predicted rows are not written")]
)
def test_stalled_stage_stops_the_job(cluster, bundle, tmp_path, stage, why):
    """A stage that never progresses (the test hook blocks it: reading, as when the read tasks
    waited for a CPU; or writing, in the driver, outside Ray Data) stops the job after
    --stall-timeout-s: exit 1, an error naming the stage, no result file, and the cluster's CPUs
    free again (the job's tasks and workers ended). Either hook blocks before its stage's first
    row, so the stage named does not depend on how fast the rest starts."""
    model, _ = bundle
    copy_photos(tmp_path / "photos", 1)
    out = tmp_path / "out.parquet"
    p = ray_cli(model, tmp_path / "photos", out, "--stall-timeout-s", 3, env={ray_predict.STALL_ENV: stage})
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == 1 and errors, p.stderr
    assert errors[-1].startswith(f"error: no progress for 3s: the {stage} stage is stalled ("), errors
    assert why in errors[-1], errors
    assert not [f for f in out.iterdir() if not f.name.startswith(".")]
    deadline = time.time() + 120
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.time() < deadline, ray.available_resources()
        time.sleep(0.5)


def test_worker_sizing_and_stalled_stage():
    plan = ray_predict.plan_cpus
    assert plan(2, 2) == (0.5, 1.0) and plan(2, 1) == (1.0, 1.0) and plan(64, 8) == (1.0, 1.0)
    assert plan(3, 3) == (0.6666, 1.0) and plan(1, 1) == (0.5, 0.5)
    assert plan(0, 4) == (None, None)  # no CPUs yet (autoscaler): Ray's defaults
    with pytest.raises(SystemExit, match="cluster's 2 CPUs hold at most 100 workers"):
        plan(2, 101)
    stage = ray_predict.stalled_stage
    c = dict(read=0, started=2, received=0, predicted=0, output=0, written=0)
    assert stage(c, 2) == ("read", "no rows read")
    assert stage({**c, "read": 8, "received": 8, "predicted": 8, "output": 8, "written": 8}, 2)[0] == "read"
    assert stage({**c, "read": 8, "received": 4}, 2)[0] == "predict"
    assert "1 of 2 workers started" in stage({**c, "read": 8, "started": 1}, 2)[1]
    assert stage({**c, "read": 8, "received": 8, "predicted": 8, "output": 6, "written": 4}, 2)[0] == "write"
