"""`Model.cam`: the Grad-CAM heatmap `finetune predict --cam` draws, from Python (docs/usage.md
"Why did it say that?")."""

import numpy as np
import pytest

import finetune
from conftest import cli, sample_photos


def test_cam_is_the_clis_heatmap(bundle, tmp_path):
    out, _ = bundle
    photo = sample_photos(1)[0]
    m = finetune.load(str(out), device="cpu")
    heat = m.cam(str(photo))
    size = m.info["size"]
    assert heat.dtype == np.float32 and heat.shape == (size["h"], size["w"])
    # Divided by its peak (a 32-px resnet18's map is one cell: all 1, or all 0 when no evidence).
    assert heat.min() >= 0 and heat.max() in (pytest.approx(0.0), pytest.approx(1.0))
    # The overlay is the file `predict --cam` writes for the same image (its predicted class).
    cli("predict", "--device", "cpu", "--cam", tmp_path, out, photo)
    written = finetune.read_image(tmp_path / (photo.stem + ".png"))
    overlay = m.cam(str(photo), overlay=True)
    assert overlay.dtype == np.uint8 and overlay.shape == (size["h"], size["w"], 3)
    assert np.array_equal(overlay, written)
    # Bytes and pixels give the path's heatmap; a class by name equals it by index.
    assert np.allclose(m.cam(photo.read_bytes()), heat, atol=1e-6)
    assert np.allclose(m.cam(finetune.read_image(photo)), heat, atol=1e-6)
    other = m.classes[1]
    assert np.allclose(m.cam(str(photo), label=other), m.cam(str(photo), label=1), atol=1e-6)


def test_cam_names_a_wrong_class(bundle):
    out, _ = bundle
    m = finetune.load(str(out), device="cpu")
    photo = str(sample_photos(1)[0])
    with pytest.raises(ValueError, match="no class named \"zebra\""):
        m.cam(photo, label="zebra")
    with pytest.raises(ValueError, match="no class 99"):
        m.cam(photo, label=99)
    with pytest.raises(TypeError, match="label"):
        m.cam(photo, label=1.5)
