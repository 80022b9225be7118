"""Batch prediction with a finetune bundle on a Ray cluster (Ray Data).

    python -m finetune.ray_predict MODEL INPUT OUTPUT [--num-workers N] [--num-gpus-per-worker G]
                                   [--batch-size B] [--top-k K] [--stall-timeout-s S]

INPUT is a folder (searched recursively), a glob (`photos/*/*.jpg`), or a Parquet or CSV file (or
folder of them) listing image paths or URLs in a column `path` (else `url`, `uri`, or its first
column): local paths, or any URI Ray's filesystem reaches (s3://, gs://, ...), or http(s).
OUTPUT ending in .csv gets CSV, anything else Parquet: a folder, to which each run adds one file,
written by this process as results arrive.

Each worker is a Ray actor that loads the model once; images travel as encoded bytes and are
decoded, resized and classified in Rust. Every input gives one row: path, label, score (and
label_2, score_2, ... for --top-k > 1), and error, which holds the reason (the message
`finetune predict` prints) when an image cannot be read; such rows never fail the job.

Workers are sized so that reading always has a CPU (see `plan_cpus`), and a watchdog stops a job
that makes no progress for --stall-timeout-s seconds with an error naming the stalled stage.
"""

import argparse
import glob
import os
import sys
import threading
import time

LIST_COLUMNS = ("path", "url", "uri")
# The fewest CPUs a worker is given: more workers than this allows on a cluster are refused.
MIN_WORKER_CPUS = 0.01
# Test hook: a stage (read, predict or write) that blocks forever, to exercise the watchdog.
STALL_ENV = "FINETUNE_RAY_TEST_STALL"


class StallError(RuntimeError):
    """The job made no progress for the stall timeout; the message names the stalled stage."""


def _block_if(stage, stall):
    if stage == stall:
        while True:
            time.sleep(3600)


class Progress:
    """Counters the stages bump as they go (a Ray actor with no CPU), which the driver's watchdog
    reads: rows read, workers started, rows received, predicted and output by the workers."""

    def __init__(self):
        self.counts = dict.fromkeys(("read", "started", "received", "predicted", "output"), 0)

    def add(self, key, n=1):
        self.counts[key] += n

    def get(self):
        return self.counts


def plan_cpus(cluster_cpus, num_workers):
    """(CPUs per worker, CPUs per read task). Ray's default of 1 CPU for each deadlocks when the
    workers take every CPU: the read tasks wait for one forever and the workers never get a row.
    So reading keeps 1 CPU (half of a cluster smaller than 2) and the workers share the rest, at
    most 1 each. (None, None), Ray's defaults, when the cluster has no CPUs yet (an autoscaler adds
    them); SystemExit when each worker would get less than MIN_WORKER_CPUS."""
    if cluster_cpus <= 0:
        return None, None
    read = min(1.0, cluster_cpus / 2)
    share = (cluster_cpus - read) / num_workers
    if share < MIN_WORKER_CPUS:
        fit = int((cluster_cpus - read) / MIN_WORKER_CPUS)
        raise SystemExit(
            f"error: --num-workers {num_workers} does not fit: this cluster's {cluster_cpus:g} CPUs "
            f"hold at most {fit} workers ({MIN_WORKER_CPUS} CPU each, {read:g} kept for reading); "
            "use fewer workers or a cluster with more CPUs"
        )
    # Ray counts resources in 1/10000ths; rounding down keeps the sum within the cluster.
    return min(1.0, int(share * 10000) / 10000), read


def _schema(top_k, unknown=False):
    import pyarrow as pa

    fields = [("path", pa.string()), ("label", pa.string()), ("score", pa.float64())]
    for i in range(2, top_k + 1):
        fields += [(f"label_{i}", pa.string()), (f"score_{i}", pa.float64())]
    if unknown:
        # The model's "unknown" answer, as `finetune predict` prints it.
        fields += [("unknown", pa.bool_()), ("unknown_score", pa.float64())]
    fields.append(("error", pa.string()))
    return pa.schema(fields)


class Predictor:
    """The per-worker model: Ray builds one per actor and sends it batches of encoded images."""

    def __init__(self, model, top_k=1, device="auto", drop_non_images=False, progress=None, stall=None):
        import finetune

        self.model = finetune.load(model, device=device)
        self.top_k = max(1, min(top_k, len(self.model.classes)))
        self.unknown = self.model.info.get("unknown") is not None
        self.schema = _schema(self.top_k, self.unknown)
        self.drop_non_images = drop_non_images
        self.exts = {"." + e for e in finetune._finetune.IMAGE_EXTENSIONS}
        self.progress, self.stall = progress, stall
        self._tell("started")

    def _tell(self, key, n=1):
        if self.progress is not None:
            self.progress.add.remote(key, n)

    def __call__(self, batch):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        self._tell("received", len(paths))
        _block_if("predict", self.stall)
        blobs = list(batch["bytes"])
        errors = list(batch["error"]) if "error" in batch else [None] * len(paths)
        todo = [i for i, e in enumerate(errors) if e is None]
        results = self.model.predict_encoded(
            [blobs[i] for i in todo],
            top_k=self.top_k,
            return_exceptions=True,
            names=[paths[i] for i in todo],
            details=True,
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
            answer = ranked[i] or {}
            top = answer.get("predictions", [])
            if self.unknown:
                cols["unknown"].append(answer.get("unknown"))
                cols["unknown_score"].append(answer.get("unknown_score"))
            for k in range(1, self.top_k + 1):
                label, score = top[k - 1] if k <= len(top) else (None, None)
                suffix = "" if k == 1 else f"_{k}"
                cols["label" + suffix].append(label)
                cols["score" + suffix].append(score)
        self._tell("predicted", len(paths))
        self._tell("output", len(cols["path"]))
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


def read_images(inp, num_cpus=None):
    """INPUT as a Ray dataset of (path, bytes[, error]) rows, and whether folder rules apply.
    Its tasks take num_cpus CPUs each (Ray's default when None)."""
    import ray

    if _is_list(inp):
        reader = ray.data.read_csv if inp.rstrip("/").lower().endswith(".csv") else ray.data.read_parquet
        ds = reader(inp, num_cpus=num_cpus)
        cols = ds.schema().names
        col = next((c for c in LIST_COLUMNS if c in cols), cols[0])
        ds = ds.select_columns([col])
        if col != "path":
            ds = ds.rename_columns({col: "path"})
        return ds.map_batches(_fetch, batch_format="numpy", num_cpus=num_cpus), False
    if any(ch in inp for ch in "*?[") and "://" not in inp:
        files = sorted(p for p in glob.glob(inp, recursive=True) if os.path.isfile(p))
        if not files:
            raise SystemExit(f"error: no files match {inp}")
        return ray.data.read_binary_files(files, include_paths=True, num_cpus=num_cpus), False
    if "://" not in inp and not os.path.exists(inp):
        raise SystemExit(f"error: {inp} does not exist")
    # A folder, recursively; Ray's listing leaves out hidden files, as `finetune predict DIR` does.
    return ray.data.read_binary_files(inp, include_paths=True, num_cpus=num_cpus), True


def _count_read(batch, progress, stall):
    """Counts the rows read, before any worker has them (Ray Data runs it in the read tasks, or in
    the workers just before predicting when it fuses it into them)."""
    _block_if("read", stall)
    progress.add.remote("read", batch.num_rows)
    return batch


class _Sink:
    """OUTPUT, written by the driver as results arrive: one CSV or Parquet file per run, under a
    hidden name (which readers skip) until the run ends, so a failed run leaves no results."""

    def __init__(self, output, stall=None):
        import uuid

        import pyarrow.fs as pafs

        self.csv = output.rstrip("/").lower().endswith(".csv")
        self.fs, folder = pafs.FileSystem.from_uri(output if "://" in output else os.path.abspath(output))
        self.fs.create_dir(folder, recursive=True)
        name = f"part-{uuid.uuid4().hex[:12]}.{'csv' if self.csv else 'parquet'}"
        self.path, self.tmp = f"{folder}/{name}", f"{folder}/.{name}.tmp"
        self.stall, self.stream, self.writer, self.pending = stall, None, None, []
        self.rows = self.errors = 0
        self.busy = False  # in write: a stall there is the write stage's

    def write(self, table):
        self.busy = True
        _block_if("write", self.stall)
        self.pending.append(table)
        self.rows += table.num_rows
        self.errors += table.num_rows - table.column("error").null_count
        if sum(t.num_rows for t in self.pending) >= 10000:  # Parquet row groups of 10000 or more
            self._flush()
        self.busy = False

    def _flush(self):
        import pyarrow as pa

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending = []
        if self.writer is None:
            self.stream = self.fs.open_output_stream(self.tmp)
            if self.csv:
                import pyarrow.csv as pacsv

                self.writer = pacsv.CSVWriter(self.stream, table.schema)
            else:
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(self.stream, table.schema)
        self.writer.write_table(table)

    def close(self):
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.stream.close()
            self.fs.move(self.tmp, self.path)


# The stage each counter's rise is progress of (a worker starting moves no row, as for Ray Data).
_EVENTS = {"read": "read", "received": "predict", "predicted": "predict", "output": "predict", "written": "write"}


def stalled_stage(c, num_workers):
    """The stage holding the work that does not move, and why: results not written; a worker in
    the middle of a batch; rows read that no worker takes (busy, or not started); else reading."""
    if c["output"] > c["written"]:
        return "write", f"{c['output'] - c['written']} predicted rows are not written"
    if c["received"] > c["predicted"]:
        return "predict", "a worker does not finish its batch"
    if c["read"] > c["received"]:
        why = f"{c['read'] - c['received']} rows read wait for a worker"
        if c["started"] < num_workers:
            why += f"; {c['started']} of {num_workers} workers started (too few CPUs, GPUs or memory?)"
        return "predict", why
    return "read", "no rows read" if not c["read"] else f"no rows read after the first {c['read']}"


def run(
    model,
    inp,
    output,
    num_workers=1,
    num_gpus_per_worker=0.0,
    batch_size=64,
    top_k=1,
    device=None,
    stall_timeout_s=300.0,
):
    """Runs the job on the Ray cluster this process is connected to (a local one if none);
    returns the statistics. StallError, once the job's tasks and workers are ended, if no stage
    makes progress for stall_timeout_s seconds (for a stall in writing, which Ray Data cannot
    end, run disconnects from Ray: ray.shutdown)."""
    import ray

    if device is None:
        device = "cuda" if num_gpus_per_worker > 0 else "cpu"
    if not ray.is_initialized():
        ray.init()
    t0 = time.time()
    # Under `ray job submit --working-dir`, every worker has its own copy of the working dir and a
    # relative MODEL names the bundle in it; otherwise workers need the driver's absolute path.
    if not (ray.get_runtime_context().runtime_env or {}).get("working_dir"):
        model = os.path.abspath(model)
    worker_cpus, read_cpus = plan_cpus(ray.cluster_resources().get("CPU", 0), num_workers)
    stall = os.environ.get(STALL_ENV)
    ds, folder = read_images(inp, read_cpus)
    progress = ray.remote(num_cpus=0)(Progress).remote()
    ds = ds.map_batches(
        _count_read,
        fn_kwargs={"progress": progress, "stall": stall},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=read_cpus,
    )
    ds = ds.map_batches(
        Predictor,
        fn_constructor_args=(model,),
        fn_constructor_kwargs={
            "top_k": top_k,
            "device": device,
            "drop_non_images": folder,
            "progress": progress,
            "stall": stall,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=worker_cpus,
        num_gpus=num_gpus_per_worker or None,
    )
    sink = _Sink(output, stall)
    # Ray Data's own guard fails a job whose operators make no progress for this long, cancelling
    # its tasks and ending its workers; the stream then raises ExecutionTimeoutError.
    ds.context.execution_no_progress_timeout_s = stall_timeout_s
    failure, stopped = [], threading.Event()

    def consume():
        # Streaming, so that the watchdog sees rows arrive and nothing waits for the whole job.
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                sink.write(batch)
            if not stopped.is_set():  # else the stream ended because Ray did: results are partial
                sink.close()
        except BaseException as e:  # noqa: BLE001 - re-raised by the driver's thread
            failure.append(e)

    consumer = threading.Thread(target=consume, name="ray_predict-write", daemon=True)
    consumer.start()
    counts = dict.fromkeys(("read", "started", "received", "predicted", "output", "written"), 0)
    changed, last = time.monotonic(), "none since the start"
    poll = max(0.05, min(1.0, stall_timeout_s / 10))

    def stall_error():
        c = counts
        stage, why = stalled_stage(c, num_workers)
        return StallError(
            f"no progress for {stall_timeout_s:g}s: the {stage} stage is stalled ({why}); "
            f"{c['read']} rows read, {c['predicted']} predicted, {c['written']} written, "
            f"{c['started']} of {num_workers} workers started; last progress: {last}, "
            f"{time.monotonic() - changed:.0f}s ago (--stall-timeout-s sets the limit)"
        )

    try:
        while True:
            consumer.join(poll)
            try:
                now = dict(ray.get(progress.get.remote(), timeout=max(poll, 5)), written=sink.rows)
            except ray.exceptions.GetTimeoutError:
                now = counts
            moved = [k for k in _EVENTS if now[k] != counts[k]]
            if moved:
                last, changed = _EVENTS[moved[-1]], time.monotonic()
            counts = now
            if not consumer.is_alive():
                break
            # A stall in writing, outside Ray Data's sight, or one its guard missed: leaving Ray
            # ends the job's tasks and workers (the writer is not inside Ray Data to restart it).
            idle = time.monotonic() - changed
            if idle > stall_timeout_s and sink.busy or idle > stall_timeout_s + 60:
                stopped.set()
                ray.shutdown()
                raise stall_error()
    finally:
        if ray.is_initialized():
            ray.kill(progress)
    if failure:
        from ray.data.exceptions import ExecutionTimeoutError

        if isinstance(failure[0], ExecutionTimeoutError):
            raise stall_error() from None
        raise failure[0]
    seconds = time.time() - t0
    return {
        "images": sink.rows,
        "errors": sink.errors,
        "seconds": seconds,
        "images_per_second": sink.rows / seconds if seconds else 0.0,
        "cpus_per_worker": worker_cpus or 1.0,
    }


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
    p.add_argument(
        "--stall-timeout-s",
        type=float,
        default=300.0,
        help="stop with an error naming the stalled stage when no stage makes progress for this long",
    )
    a = p.parse_args(argv)
    if a.num_workers < 1 or a.stall_timeout_s <= 0:
        p.error("--num-workers and --stall-timeout-s must be positive")
    import ray

    # Joins the cluster named by RAY_ADDRESS (as under `ray job submit`), else starts a local one;
    # leaves it on every way out, so that no worker outlives the command.
    started = not ray.is_initialized()
    if started:
        ray.init()
    try:
        stats = run(
            a.model,
            a.input,
            a.output,
            a.num_workers,
            a.num_gpus_per_worker,
            a.batch_size,
            a.top_k,
            a.device,
            stall_timeout_s=a.stall_timeout_s,
        )
    except StallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()
    print(
        f"{stats['images']} images ({stats['errors']} unreadable) in {stats['seconds']:.1f}s: "
        f"{stats['images_per_second']:.1f} images/s with {a.num_workers} worker(s) "
        f"({stats['cpus_per_worker']:g} CPU each); wrote {a.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
