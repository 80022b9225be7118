"""Writes the small weight files that seed tests/fuzz_weights.rs, plus two malicious pickles.

Run from the repository root with the venv's Python (torch and safetensors):
    .venv/bin/python tests/reference/make_fuzz_seeds.py tests/fixtures/weights

Every file is a few KB: a tiny conv/BN/linear state dict written by PyTorch itself in each layout
the Rust reader supports (zip and legacy `.pth`, fp32/fp16/bf16, wrapped under `state_dict`,
DataParallel `module.` prefixes, a transposed view and a tied tensor sharing one storage) and as
`.safetensors`.
"""
import os
import sys
from collections import OrderedDict

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/weights"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)


def tiny_state_dict():
    m = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, bias=False),
        torch.nn.BatchNorm2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(3, 2),
    )
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    sd = m.state_dict()  # includes the int64 `1.num_batches_tracked`
    return OrderedDict((k, v.clone()) for k, v in sd.items())


def cast(sd, dtype):
    return OrderedDict((k, v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items())


def with_views(sd):
    # A non-contiguous view (stride metadata) and a second name for the same storage.
    sd = OrderedDict(sd)
    sd["3.weight_t"] = sd["3.weight"].t()
    sd["tied.weight"] = sd["3.weight"]
    return sd


def prefixed(sd, p="module."):
    return OrderedDict((p + k, v) for k, v in sd.items())


def save(obj, name, zip_format=True):
    torch.save(obj, f"{out}/{name}", _use_new_zipfile_serialization=zip_format)


sd = tiny_state_dict()
save(with_views(sd), "zip_fp32.pth")
save(cast(sd, torch.float16), "zip_fp16.pth")
save(cast(sd, torch.bfloat16), "zip_bf16.pth")
save({"state_dict": prefixed(sd), "epoch": 3, "arch": "tiny", "best_acc": 0.5}, "zip_wrapped_module.pth")
save(with_views(sd), "legacy_fp32.pth", zip_format=False)
save(cast(sd, torch.float16), "legacy_fp16.pth", zip_format=False)
save(cast(sd, torch.bfloat16), "legacy_bf16.pth", zip_format=False)
save({"state_dict": prefixed(sd), "epoch": 3}, "legacy_wrapped_module.pth", zip_format=False)
save_file(OrderedDict((k, v.contiguous()) for k, v in cast(sd, torch.float16).items()),
          f"{out}/tiny_fp16.safetensors")
save_file(OrderedDict((k, v.contiguous()) for k, v in sd.items()), f"{out}/tiny_fp32.safetensors")


class Evil:
    """Unpickling this calls os.system: a loader must refuse it (and never run it)."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/finetune-pwned",))


# Pickling does not call __reduce__'s callable, so writing these runs nothing.
save({"state_dict": sd, "payload": Evil()}, "malicious.pth")
save({"state_dict": sd, "payload": Evil()}, "malicious_legacy.pth", zip_format=False)
for f in sorted(os.listdir(out)):
    print(f"{os.path.getsize(os.path.join(out, f)):7d}  {f}")
