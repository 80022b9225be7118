"""Batch prediction on a local Ray cluster equals `finetune predict` on the same images."""

import csv
import shutil

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
    import pyarrow.csv as pacsv

    fmt = pads.CsvFileFormat(
        convert_options=pacsv.ConvertOptions(column_types={"error": "string", "label": "string"}, strings_can_be_null=True)
    )
    got = rows(out, fmt)
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
