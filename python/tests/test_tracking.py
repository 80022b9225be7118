"""`finetune.train(..., tensorboard=DIR)` writes the CLI's event files (docs/usage.md
"Experiment tracking")."""

import finetune
from conftest import SAMPLE


def test_train_writes_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "m"), arch="resnet18", random_init=True,
                   size=32, bs=16, epochs=1, device="cpu", quiet=True, tensorboard=str(tb))
    files = list(tb.iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents.")
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    ea.Reload()
    assert "train/loss" in ea.Tags()["scalars"] and "epoch/valid_loss" in ea.Tags()["scalars"]
    assert [e.step for e in ea.Scalars("train/loss")][:3] == [1, 2, 3]
    assert len(ea.Scalars("epoch/valid_loss")) == 2  # the frozen epoch and one more


def test_train_names_an_absent_mlflow_server(tmp_path):
    import socket

    import pytest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception, match=f"MLflow at http://127.0.0.1:{port}"):
        finetune.train(str(SAMPLE / "train"), out=str(tmp_path / "m"), arch="resnet18", random_init=True,
                       size=32, bs=16, epochs=0, device="cpu", quiet=True, mlflow=f"http://127.0.0.1:{port}")
