"""fastai 2.8's `WeightedDL` on the skewed set of bench/imbalance_bench.py: the same fine-tune as
the finetune rows (mobilenet_v2 from ../shared's weights, squish to SIZE, batches of 64, one frozen
epoch and EPOCHS unfrozen, fastai's defaults otherwise), the training set drawn with weights
1 / (its class's image count), as fastai's docs show; then the test set's predictions.

Usage: fastai_weighted.py DATA WEIGHTS SIZE EPOCHS SEED OUT_JSON
DATA holds train/, valid/ and test/. Writes {"classes": [...], "actual": [...], "predicted": [...]}
(class indices over the test images), from which imbalance_bench.py computes its columns.
"""
import collections
import json
import sys

import numpy as np
import torch
import torchvision
from fastai.vision.all import (CategoryBlock, DataBlock, GrandparentSplitter, ImageBlock, Normalize, Resize,
                               ResizeMethod, default_split, error_rate, get_image_files, imagenet_stats,
                               parent_label, set_seed, vision_learner)
from fastai.vision.learner import model_meta

data, weights, size, epochs, seed, out = sys.argv[1:7]
size, epochs, seed = int(size), int(epochs), int(seed)
set_seed(seed)


def mobilenet_v2(pretrained=True, **kw):
    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(torch.load(weights, map_location="cpu"))
    return m


# As bench/fastai_run.py: fastai 2.8.12 takes mobilenet_v2's cut from model_meta.
model_meta[mobilenet_v2] = {"cut": -1, "split": default_split}

block = DataBlock(
    blocks=(ImageBlock, CategoryBlock),
    get_items=lambda p: get_image_files(p, folders=["train", "valid"]),
    splitter=GrandparentSplitter(train_name="train", valid_name="valid"),
    get_y=parent_label,
    item_tfms=Resize(size, method=ResizeMethod.Squish),
    batch_tfms=Normalize.from_stats(*imagenet_stats),
)
items = block.get_items(data)
train_counts = collections.Counter(parent_label(f) for f in items if f.parent.parent.name == "train")
wgts = np.array([1.0 / train_counts[parent_label(f)] for f in items])
dls = block.weighted_dataloaders(data, wgts=wgts, bs=64)
learn = vision_learner(dls, mobilenet_v2, metrics=error_rate, pretrained=True)
learn.fine_tune(epochs)
test = get_image_files(f"{data}/test")
preds, targs = learn.get_preds(dl=learn.dls.test_dl(test, with_labels=True))
json.dump({
    "classes": list(dls.vocab),
    "actual": targs.tolist(),
    "predicted": preds.argmax(1).tolist(),
}, open(out, "w"))
