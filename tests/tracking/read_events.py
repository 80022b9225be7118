"""Reads a `--tensorboard DIR` folder with TensorBoard's own reader (EventAccumulator, from the
tensorboard package on PyPI) and prints what it found as one JSON line, for tests/tensorboard.rs.

Usage: python read_events.py DIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
ea.Reload()
tags = ea.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in ea.Images(t)]
               for t in tags["images"]},
    "hparams": {},
}
for tag, content in ea.PluginTagToContent("hparams").items():
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    for k, v in start.hparams.items():
        kind = v.WhichOneof("kind")
        out["hparams"][k] = getattr(v, kind)
print(json.dumps(out))
