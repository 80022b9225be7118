"""Benchmark: `finetune serve` under 1, 8 and 32 concurrent clients, against `finetune predict` on the
same images and against a plain PyTorch eager HTTP server (torchvision body + the same fastai head,
weights from the bundle, one request at a time: the usual first deployment).

Also against onnxruntime behind the same HTTP shape (the bundle exported with `finetune export`,
`InferenceSession.run` in the same http.server handler as the eager one; `--no-ort` leaves it out),
and with `--compare-bin OLD` a second finetune binary's serve on the same model, side by side.

Usage (repo root, after `make demo`): python bench/serve_bench.py [--model target/demo-model]
    [--images ../shared/data/clothing-small/test] [--n 200] [--clients 1,8,32] [--no-eager]
    [--no-ort] [--compare-bin PATH]
With several bundles (--model a,b,c) it measures each in turn: `make bench-all` runs it so on the
engine benchmark's per-arch bundles at 8 and 32 clients (`serve-archs`).
Prints a markdown table. Run it alone on the machine: the clients share its cores with the servers
(both servers face the same Python clients, so the comparison is fair; absolute numbers are lower
than a remote client would see).
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

BIN = "./target/release/finetune"


def images(folder, n):
    out = []
    for root, _, files in sorted(os.walk(folder)):
        out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith((".jpg", ".jpeg", ".png"))]
    return out[:n]


def load(base, paths, clients):
    """Sends every image once from `clients` threads (one keep-alive connection each); returns
    images/s, p50 and p99 latency in ms, and how many answers were not 200."""
    host, port = base.replace("http://", "").split("/")[0].split(":")
    bodies = [open(p, "rb").read() for p in paths]
    lat, bad = [], [0]
    lock = threading.Lock()
    local = threading.local()

    def one(body):
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection(host, int(port), timeout=120)
        t = time.perf_counter()
        local.c.request("POST", PATH, body=body, headers={"Content-Type": "image/jpeg"})
        r = local.c.getresponse()
        r.read()
        dt = time.perf_counter() - t
        with lock:
            lat.append(dt)
            if r.status != 200:
                bad[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(one, bodies))
    wall = time.perf_counter() - t0
    lat.sort()
    pick = lambda q: 1e3 * lat[min(len(lat) - 1, int(q * len(lat)))]
    return len(bodies) / wall, pick(0.5), pick(0.99), bad[0]


def start(cmd, env=None):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline().strip()
    if not line.startswith("listening on "):
        p.kill()
        sys.exit(f"server did not start: {line!r}")
    return p, line[len("listening on "):]


def preprocess_pil(body, size, mean, std):
    """PIL decode, squish resize to the bundle's size, ImageNet normalisation: NCHW float32."""
    import io

    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(body)).convert("RGB").resize(size, Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return ((x - mean) / std).astype(np.float32)


def http_server(predict, classes):
    """The HTTP shape both Python servers share: http.server, one request at a time, HTTP/1.0,
    the image as the body, `[{"label", "score"}, ...]` (top 5) as the answer."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            p = predict(body)
            top = sorted(range(len(p)), key=lambda i: -p[i])[:5]
            out = json.dumps([{"label": classes[i], "score": float(p[i])} for i in top]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    HTTPServer.request_queue_size = 128
    srv = HTTPServer(("127.0.0.1", 0), H)
    print(f"listening on http://127.0.0.1:{srv.server_address[1]}", flush=True)
    srv.serve_forever()


def ort_server(onnx_path, model_dir):
    """onnxruntime behind the same HTTP shape: the `finetune export` of the bundle (its softmax
    included), PIL preprocessing, `InferenceSession.run`, THREADS intra-op threads."""
    import numpy as np
    import onnxruntime as ort

    info = json.load(open(f"{model_dir}/model.json"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("THREADS", "2"))
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    size = (info["size"]["w"], info["size"]["h"])
    mean = np.array(info["normalization"]["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(info["normalization"]["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    http_server(lambda body: sess.run(None, {name: preprocess_pil(body, size, mean, std)})[0][0].tolist(),
                info["classes"])


def eager_server(model_dir):
    """A PyTorch eager HTTP server: http.server (one request at a time), PIL decode, squish resize,
    ImageNet normalisation, `inference_mode`, the bundle's weights in torchvision's module."""
    import io

    import torch
    import torchvision
    from PIL import Image
    from safetensors.torch import load_file
    from torch import nn

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    info = json.load(open(f"{model_dir}/model.json"))
    assert info["arch"] in ("mobilenet_v2", "resnet18", "resnet34", "resnet50"), info["arch"]
    tv = getattr(torchvision.models, info["arch"])()
    if info["arch"] == "mobilenet_v2":
        body = nn.Module()
        body.features = tv.features
        body.forward = lambda x: body.features(x)
        nf = 1280
    else:
        body = nn.Sequential()
        for k in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]:
            body.add_module(k, getattr(tv, k))
        nf = 512 if info["arch"] in ("resnet18", "resnet34") else 2048

    class ConcatPool(nn.Module):
        def forward(self, x):
            return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)

    n = len(info["classes"])
    head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2 * nf), nn.Dropout(0.25),
                         nn.Linear(2 * nf, 512, bias=False), nn.ReLU(True), nn.BatchNorm1d(512), nn.Dropout(0.5),
                         nn.Linear(512, n, bias=False))
    model = nn.Module()
    model.body, model.head = body, head
    sd = {k: v for k, v in load_file(f"{model_dir}/model.safetensors").items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not [k for k in missing if "num_batches_tracked" not in k], missing
    model.eval()
    size = (info["size"]["w"], info["size"]["h"])
    mean = torch.tensor(info["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["normalization"]["std"]).view(1, 3, 1, 1)
    classes = info["classes"]

    def predict(body):
        img = Image.open(io.BytesIO(body)).convert("RGB").resize(size, Image.BILINEAR)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, size[1], size[0], 3)
        x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            return model.head(model.body(x)).softmax(-1)[0].tolist()

    http_server(predict, classes)


def main():
    global PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="target/demo-model",
                    help="a bundle, or several separated by commas (one table row group per bundle)")
    ap.add_argument("--images", default="../shared/data/clothing-small/test")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--no-eager", action="store_true",
                    help="finetune only (the PyTorch server knows mobilenet_v2 and ResNets only)")
    ap.add_argument("--no-ort", action="store_true", help="leave out the onnxruntime server")
    ap.add_argument("--compare-bin", help="another finetune binary whose serve is measured beside")
    ap.add_argument("--eager-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ort-server", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.eager_server:
        return eager_server(a.model)
    if a.ort_server:
        return ort_server(a.ort_server, a.model)
    paths = images(a.images, a.n)
    levels = [int(c) for c in a.clients.split(",")]
    rows = []

    # `predict` as the server is measured: warmed up and without start-up or model loading. Its
    # images/s is (all − half) images over (time(all) − time(half)), as bench/predict_bench.py does.
    def predict(model, subset):
        t = time.perf_counter()
        subprocess.run([BIN, "predict", model, *subset, "--json", "--threads", a.threads], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    models = a.model.split(",")
    for model in models:
        name = os.path.basename(os.path.abspath(model))
        arch = json.load(open(f"{model}/model.json"))["arch"]
        # The files ten times over, so the difference between the two runs (1 000 images) is
        # seconds, well above the jitter of start-up.
        many = paths * 10
        predict(model, paths[:16])
        half = many[: len(many) // 2]
        # Best of three each: one slow start-up (this host's page faults vary by seconds) made the
        # difference negative once.
        t_half = min(predict(model, half) for _ in range(3))
        t_all = min(predict(model, many) for _ in range(3))
        if t_all <= t_half:
            sys.exit(f"finetune predict took no longer on {len(many)} images than on {len(half)}: "
                     "the host is too noisy to measure; run again")
        predict_ips = (len(many) - len(half)) / (t_all - t_half)

        servers = [(BIN, "finetune serve" if len(models) == 1 else f"finetune serve, {arch}")]
        if a.compare_bin:
            servers.append((a.compare_bin, f"finetune serve ({a.compare_bin})"))
        for binary, label in servers:
            srv, base = start([binary, "serve", model, "--port", "0", "--threads", a.threads])
            PATH = f"/predictions/{name}"
            load(base, paths[:16], 4)  # warm-up
            for c in levels:
                rows.append((label, c, *load(base, paths, c), predict_ips))
            srv.terminate()
            srv.wait()

        if not a.no_ort:
            import tempfile

            onnx = os.path.join(tempfile.mkdtemp(prefix="serve-bench-"), "model.onnx")
            subprocess.run([BIN, "export", model, "--format", "onnx", "--out", onnx], check=True,
                           stdout=subprocess.DEVNULL)
            env = dict(os.environ, THREADS=a.threads)
            srv, base = start([sys.executable, __file__, "--ort-server", onnx, "--model", model], env=env)
            PATH = "/predict"
            load(base, paths[:16], 1)
            for c in levels:
                rows.append(("onnxruntime http.server", c, *load(base, paths, c), predict_ips))
            srv.terminate()
            srv.wait()

        if not a.no_eager:
            env = dict(os.environ, THREADS=a.threads)
            srv, base = start([sys.executable, __file__, "--eager-server", "--model", model], env=env)
            PATH = "/predict"
            load(base, paths[:16], 1)
            for c in levels:
                rows.append(("PyTorch eager http.server", c, *load(base, paths, c), predict_ips))
            srv.terminate()
            srv.wait()

    print(f"\n{provenance.line()}\n")
    if len(models) == 1:
        print(f"{len(paths)} images from {a.images}, model {a.model}, {a.threads} threads on both servers and "
              f"`finetune predict`; both servers and predict warmed up first; `finetune predict` on the same "
              f"files: {rows[0][-1]:.1f} images/s without start-up and model loading\n")
    else:
        print(f"{len(paths)} images from {a.images}, models {a.model}, {a.threads} threads on the server and "
              f"`finetune predict`, both warmed up first; vs predict: against `finetune predict` of the same "
              f"model on the same files, without start-up and model loading\n")
    print("| server | clients | images/s | p50 ms | p99 ms | non-200 | vs predict |")
    print("|---|---|---|---|---|---|---|")
    for s, c, ips, p50, p99, bad, predict_ips in rows:
        print(f"| {s} | {c} | {ips:.1f} | {p50:.0f} | {p99:.0f} | {bad} | {ips / predict_ips:.0%} |")


if __name__ == "__main__":
    main()
