"""The Python package answers like `finetune predict`: the same calibrated probabilities, the same
"unknown" decisions and scores (docs/usage.md "Trust"), and the embeddings `finetune embed` writes."""

import json

import numpy as np
import pytest

import finetune
from conftest import SAMPLE, cli, sample_photos


def cli_answers(model, paths, *extra):
    _, out, _ = cli("predict", "--json", "--top-k", "4", "--device", "cpu", *extra, model, *paths)
    return {r["path"]: r for r in json.loads(out)}


def test_train_fits_calibration_and_unknown(bundle):
    out, metrics = bundle
    assert metrics["calibration"]["temperature"] > 0
    info = finetune.load(str(out), device="cpu").info
    assert info["calibration"] == metrics["calibration"]
    assert info["unknown"]["score"] == "knn"
    assert (out / "ood.safetensors").is_file()


def test_details_equal_the_cli(bundle):
    out, _ = bundle
    paths = sample_photos(3)
    want = cli_answers(out, paths)
    m = finetune.load(str(out), device="cpu")
    got = m.predict([str(p) for p in paths], top_k=4, details=True)
    enc = m.predict_encoded([p.read_bytes() for p in paths], top_k=4, details=True)
    for p, g, e in zip(paths, got, enc):
        w = want[str(p)]
        assert g["unknown"] == w["unknown"] == e["unknown"]
        assert g["unknown_score"] == pytest.approx(w["score"], abs=1e-5)
        assert [label for label, _ in g["predictions"]] == [x["label"] for x in w["predictions"]]
        for (_, s), x in zip(g["predictions"], w["predictions"]):
            assert s == pytest.approx(x["probability"], abs=1e-6)
        assert g["predictions"] == e["predictions"]
    # Without details: the plain (label, score) lists, unchanged.
    assert m.predict([str(p) for p in paths], top_k=4) == [g["predictions"] for g in got]


def test_raw_probs_and_unknown_off(bundle):
    out, _ = bundle
    paths = [str(p) for p in sample_photos(2)]
    raw = finetune.load(str(out), device="cpu", raw_probs=True).predict(paths, top_k=4)
    want = cli_answers(out, paths, "--raw-probs")
    for p, r in zip(paths, raw):
        for (_, s), x in zip(r, want[p]["predictions"]):
            assert s == pytest.approx(x["probability"], abs=1e-6)
    off = finetune.load(str(out), device="cpu", unknown="off").predict(paths, details=True)
    assert all(d["unknown"] is False and d["unknown_score"] is None for d in off)
    with pytest.raises(ValueError, match="between 0 and 1"):
        finetune.load(str(out), device="cpu", unknown=2.0)


def test_embed_equals_the_cli(bundle, tmp_path):
    out, _ = bundle
    paths = sample_photos(2)
    m = finetune.load(str(out), device="cpu")
    e = m.embed([str(p) for p in paths])
    assert e.dtype == np.float32 and e.shape == (len(paths), 1024)  # resnet18: 2 x 512
    npy = tmp_path / "e.npy"
    cli("embed", "--device", "cpu", "--out", npy, out, *paths)
    assert np.allclose(np.load(npy), e, atol=1e-5)
    # Bytes and pixels (finetune's own decoder's) embed like the file they came from.
    pixels = finetune.read_image(paths[0])
    both = m.embed([paths[0].read_bytes(), pixels])
    assert np.allclose(both[0], e[0], atol=1e-5)
    assert both.shape == (2, 1024)
    with pytest.raises(FileNotFoundError):
        m.embed([str(SAMPLE / "nope.jpg")])
