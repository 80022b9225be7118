"""fastai 2.8 side of the benchmark: the same fine_tune as `finetune train`, timed per epoch.

Usage: fastai_run.py DATA ARCH WEIGHTS|none OUT_JSON [SEED [VALID_PCT TEST_DIR]]
DATA holds train/, valid/ and test/; or, with VALID_PCT (the seed's protocol), DATA is one folder of
class folders split at random by fastai's RandomSplitter(VALID_PCT, seed=SEED), and TEST_DIR the test
set. ARCH is mobilenet_v2 or resnet18.
"""
import json
import os
import resource
import sys
import time

t_start = time.time()
import torch
import torchvision
from fastai.vision.all import (ImageDataLoaders, Normalize, Resize, ResizeMethod, error_rate, imagenet_stats,
                               vision_learner, get_image_files, Callback, default_split, set_seed, aug_transforms,
                               MixUp, LabelSmoothingCrossEntropyFlat)
from fastai.vision.learner import model_meta

data, arch, weights, out = sys.argv[1:5]
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 42
valid_pct = float(sys.argv[6]) if len(sys.argv) > 6 else None
test_dir = sys.argv[7] if len(sys.argv) > 7 else f"{data}/test"
# fastai's set_seed seeds Python, NumPy and torch; reproducible=False keeps cudnn/threads as users run it.
set_seed(seed)
# bench.py's --recipe: the same regulariser as finetune's flag (see bench.py's docstring).
recipe = os.environ.get("FASTAI_RECIPE", "plain")


def mobilenet_v2(pretrained=True, **kw):
    m = torchvision.models.mobilenet_v2()
    if weights != "none":
        m.load_state_dict(torch.load(weights, map_location="cpu"))
    return m


# fastai 2.8.12's vision_learner does not pass `cut` on to create_vision_model, so mobilenet_v2's body
# (`features`, SPEC §2) is declared through model_meta instead, as fastai does for its known archs.
model_meta[mobilenet_v2] = {"cut": -1, "split": default_split}


class EpochTimer(Callback):
    def before_fit(self):
        self.phase = getattr(self, "phase", -1) + 1

    def before_epoch(self):
        self.t0 = time.time()

    def after_epoch(self):
        self.learn.epoch_times.append((self.phase, time.time() - self.t0))


# fastai adds ImageNet normalisation itself only for archs with known stats and pretrained weights;
# add it explicitly so both sides see the same inputs (SPEC §1).
split = dict(train="train", valid="valid") if valid_pct is None else dict(train=".", valid_pct=valid_pct)
batch_tfms = [*aug_transforms(), Normalize.from_stats(*imagenet_stats)] if recipe == "augment" else \
    Normalize.from_stats(*imagenet_stats)
dls = ImageDataLoaders.from_folder(data, **split, item_tfms=Resize(192, method=ResizeMethod.Squish),
                                   batch_tfms=batch_tfms, bs=64, seed=seed)
extra = {}
if recipe == "mixup":
    extra["cbs"] = MixUp(0.4)
if recipe == "label_smoothing":
    extra["loss_func"] = LabelSmoothingCrossEntropyFlat(eps=0.1)
if arch == "mobilenet_v2":
    learn = vision_learner(dls, mobilenet_v2, metrics=error_rate, pretrained=weights != "none", **extra)
else:
    learn = vision_learner(dls, torchvision.models.resnet18, metrics=error_rate, pretrained=False, **extra)
learn.epoch_times = []
learn.add_cb(EpochTimer())
t0 = time.time()
learn.fine_tune(3)
train_s = time.time() - t0
valid_error = float(learn.recorder.values[-1][2])
test_dl = learn.dls.test_dl(get_image_files(test_dir), with_labels=True)
_, err = learn.validate(dl=test_dl)
total_s = time.time() - t_start
# The augmented model is also tested with fastai's TTA (n=4, beta=0.25), after the timed total as on
# finetune's side.
tta_accuracy = None
if recipe == "augment":
    preds, targs = learn.tta(dl=test_dl)
    tta_accuracy = float((preds.argmax(1) == targs).float().mean())
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
json.dump({
    "epoch_seconds": learn.epoch_times,
    "train_seconds": train_s,
    "total_seconds": total_s,
    "valid_error": valid_error,
    "test_accuracy": 1 - float(err),
    "tta_accuracy": tta_accuracy,
    "peak_rss_mb": rss / 1024,
    "n_train": len(dls.train_ds),
    "n_valid": len(dls.valid_ds),
}, open(out, "w"), indent=1)
