"""finetune from Python: use and train the image classifiers of the `finetune` command.

    import finetune
    m = finetune.load("models/clothes")
    m.predict(["a.jpg", "b.png"], top_k=3)   # [[("shoes", 0.97), ...], ...]
    m.predict_arrays(pixels)                  # uint8 (N, H, W, 3), or a list of (H, W, 3)
    finetune.train("data/clothes", arch="resnet18", epochs=3, out="models/clothes")

Everything runs in Rust (the same code as the command line); the GIL is released while it does.
"""

# The extension links libtorch without bundling it: importing torch first loads the torch wheel's
# libtorch into the process, and the extension binds to those very libraries.
import torch  # noqa: F401

from ._finetune import DISTRIBUTED, FinetuneError, Model, __version__, _read_image, inference_plan_passes, load, train

__all__ = ["DISTRIBUTED", "FinetuneError", "Model", "inference_plan_passes", "load", "read_image", "train", "__version__"]


def read_image(path):
    """The RGB pixels finetune decodes from an image file, as a uint8 numpy array (H, W, 3).

    The same decoder as `Model.predict` (EXIF orientation applied, transparency on white), so
    `m.predict_arrays([finetune.read_image(p)])` equals `m.predict([p])`. PIL and OpenCV decode
    JPEGs with other IDCTs: their pixels differ by a few levels, and so do the scores, slightly.
    """
    import numpy as np

    data, h, w = _read_image(path)
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)
