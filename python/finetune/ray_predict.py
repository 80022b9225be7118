"""Batch prediction with a finetune bundle on a Ray cluster (Ray Data).

    python -m finetune.ray_predict MODEL INPUT OUTPUT [--num-workers N] [--num-gpus-per-worker G]
                                   [--batch-size B] [--top-k K]

INPUT is a folder (searched recursively), a glob (`photos/*/*.jpg`), or a Parquet or CSV file (or
folder of them) listing image paths or URLs in a column `path` (else `url`, `uri`, or its first
column): local paths, or any URI Ray's filesystem reaches (s3://, gs://, ...), or http(s).
OUTPUT ending in .csv gets CSV, anything else Parquet; Ray writes a folder of part files.

Each worker is a Ray actor that loads the model once; images travel as encoded bytes and are
decoded, resized and classified in Rust. Every input gives one row: path, label, score (and
label_2, score_2, ... for --top-k > 1), and error, which holds the reason (the message
`finetune predict` prints) when an image cannot be read; such rows never fail the job.
"""

import argparse
import glob
import os
import sys
import time

LIST_COLUMNS = ("path", "url", "uri")


def _schema(top_k):
    import pyarrow as pa

    fields = [("path", pa.string()), ("label", pa.string()), ("score", pa.float64())]
    for i in range(2, top_k + 1):
        fields += [(f"label_{i}", pa.string()), (f"score_{i}", pa.float64())]
    fields.append(("error", pa.string()))
    return pa.schema(fields)


class Predictor:
    """The per-worker model: Ray builds one per actor and sends it batches of encoded images."""

    def __init__(self, model, top_k=1, device="auto", drop_non_images=False):
        import finetune

        self.model = finetune.load(model, device=device)
        self.top_k = max(1, min(top_k, len(self.model.classes)))
        self.schema = _schema(self.top_k)
        self.drop_non_images = drop_non_images
        self.exts = {"." + e for e in finetune._finetune.IMAGE_EXTENSIONS}

    def __call__(self, batch):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        blobs = list(batch["bytes"])
        errors = list(batch["error"]) if "error" in batch else [None] * len(paths)
        todo = [i for i, e in enumerate(errors) if e is None]
        results = self.model.predict_encoded(
            [blobs[i] for i in todo],
            top_k=self.top_k,
            return_exceptions=True,
            names=[paths[i] for i in todo],
        )
        ranked = [None] * len(paths)
        for i, r in zip(todo, results):
            if isinstance(r, BaseException):
                errors[i] = _reason(str(r), paths[i])
            else:
                ranked[i] = r
        cols = {name: [] for name in self.schema.names}
        for i, path in enumerate(paths):
            # As `finetune predict DIR`: in a folder, files that are neither named nor made like
            # images (READMEs, .DS_Store) are not inputs; a `.jpg` holding HTML is reported.
            if (
                self.drop_non_images
                and errors[i] is not None
                and errors[i].startswith("not an image")
                and os.path.splitext(path)[1].lower() not in self.exts
            ):
                continue
            cols["path"].append(path)
            cols["error"].append(errors[i])
            top = ranked[i] or []
            for k in range(1, self.top_k + 1):
                label, score = top[k - 1] if k <= len(top) else (None, None)
                suffix = "" if k == 1 else f"_{k}"
                cols["label" + suffix].append(label)
                cols["score" + suffix].append(score)
        return pa.table(cols, schema=self.schema)


def _reason(message, path):
    """The error without the leading `path: ` (the row names the path already)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _fetch(batch):
    """Reads the bytes of every listed path or URL; a failure becomes the row's error."""
    import urllib.request

    import pyarrow as pa
    import pyarrow.fs as pafs

    out = {"path": [], "bytes": [], "error": []}
    for uri in batch["path"]:
        uri = str(uri)
        data, err = None, None
        try:
            if uri.startswith(("http://", "https://")):
                with urllib.request.urlopen(uri, timeout=60) as r:
                    data = r.read()
            else:
                if "://" not in uri and not os.path.exists(uri):
                    raise FileNotFoundError(f"{uri} does not exist")
                fs, p = pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
                with fs.open_input_stream(p) as f:
                    data = f.read()
        except Exception as e:  # noqa: BLE001 - any failure is this row's error, never the job's
            err = _reason(str(e), uri)
            if err == str(e) and not isinstance(e, FileNotFoundError):
                err = f"cannot read: {e}"
            elif isinstance(e, FileNotFoundError):
                err = "does not exist"
        out["path"].append(uri)
        out["bytes"].append(data if data is not None else b"")
        out["error"].append(err)
    return pa.table(
        {
            "path": pa.array(out["path"], pa.string()),
            "bytes": pa.array(out["bytes"], pa.large_binary()),
            "error": pa.array(out["error"], pa.string()),
        }
    )


def _is_list(inp):
    base = inp.rstrip("/").lower()
    return base.endswith((".parquet", ".csv", ".pq"))


def read_images(inp):
    """INPUT as a Ray dataset of (path, bytes[, error]) rows, and whether folder rules apply."""
    import ray

    if _is_list(inp):
        reader = ray.data.read_csv if inp.rstrip("/").lower().endswith(".csv") else ray.data.read_parquet
        ds = reader(inp)
        cols = ds.schema().names
        col = next((c for c in LIST_COLUMNS if c in cols), cols[0])
        ds = ds.select_columns([col])
        if col != "path":
            ds = ds.rename_columns({col: "path"})
        return ds.map_batches(_fetch, batch_format="numpy"), False
    if any(ch in inp for ch in "*?[") and "://" not in inp:
        files = sorted(p for p in glob.glob(inp, recursive=True) if os.path.isfile(p))
        if not files:
            raise SystemExit(f"error: no files match {inp}")
        return ray.data.read_binary_files(files, include_paths=True), False
    if "://" not in inp and not os.path.exists(inp):
        raise SystemExit(f"error: {inp} does not exist")
    # A folder, recursively; Ray's listing leaves out hidden files, as `finetune predict DIR` does.
    return ray.data.read_binary_files(inp, include_paths=True), True


def run(model, inp, output, num_workers=1, num_gpus_per_worker=0.0, batch_size=64, top_k=1, device=None):
    """Runs the job on the Ray cluster this process is connected to; returns the statistics."""
    import ray

    if device is None:
        device = "cuda" if num_gpus_per_worker > 0 else "cpu"
    t0 = time.time()
    # Under `ray job submit --working-dir`, every worker has its own copy of the working dir and a
    # relative MODEL names the bundle in it; otherwise workers need the driver's absolute path.
    if not (ray.get_runtime_context().runtime_env or {}).get("working_dir"):
        model = os.path.abspath(model)
    ds, folder = read_images(inp)
    ds = ds.map_batches(
        Predictor,
        fn_constructor_args=(model,),
        fn_constructor_kwargs={"top_k": top_k, "device": device, "drop_non_images": folder},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=num_workers,
        num_gpus=num_gpus_per_worker or None,
    )
    if output.rstrip("/").lower().endswith(".csv"):
        ds.write_csv(output)
    else:
        ds.write_parquet(output)
    seconds = time.time() - t0
    rows, errors = _count(output)
    return {"images": rows, "errors": errors, "seconds": seconds, "images_per_second": rows / seconds if seconds else 0.0}


def _count(output):
    """Rows and error rows of what was written (reads only the error column)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fmt = "csv" if output.rstrip("/").lower().endswith(".csv") else "parquet"
    if fmt == "csv":
        import pyarrow.csv as pacsv

        fmt = pads.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types={"error": "string"}))
    col = pads.dataset(output, format=fmt).to_table(columns=["error"]).column("error")
    empty = pc.sum(pc.equal(pc.fill_null(col, ""), "")).as_py() or 0
    return len(col), len(col) - empty


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m finetune.ray_predict",
        description="Classify images with a finetune bundle on a Ray cluster (Ray Data).",
    )
    p.add_argument("model", help="model bundle folder (from `finetune train --out`), readable by every worker")
    p.add_argument("input", help="a folder, a glob, or a Parquet/CSV list of paths or URLs")
    p.add_argument("output", help="output folder: CSV if it ends in .csv, else Parquet")
    p.add_argument("--num-workers", type=int, default=1, help="model replicas (Ray actors)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=64, help="images per call of a worker")
    p.add_argument("--top-k", type=int, default=1, help="also label_2, score_2, ... up to k")
    p.add_argument("--device", default=None, help="default: cuda with --num-gpus-per-worker, else cpu")
    a = p.parse_args(argv)
    import ray

    # Joins the cluster named by RAY_ADDRESS (as under `ray job submit`), else starts a local one.
    if not ray.is_initialized():
        ray.init()
    stats = run(
        a.model, a.input, a.output, a.num_workers, a.num_gpus_per_worker, a.batch_size, a.top_k, a.device
    )
    print(
        f"{stats['images']} images ({stats['errors']} unreadable) in {stats['seconds']:.1f}s: "
        f"{stats['images_per_second']:.1f} images/s with {a.num_workers} worker(s); wrote {a.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
