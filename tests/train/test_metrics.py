import io
import json

import numpy as np
import pytest
import torch

from openvision3.train.metrics import MetricsLogger, ProgressBar, read_metrics


def test_metrics_jsonl_append_and_read_back(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"loss": torch.tensor(2.5), "lr": 1e-3}, samples=32)
        log.log(2, {"loss": 2.0}, samples=64)
        assert len(read_metrics(tmp_path)) == 2  # flushed on every call
    with MetricsLogger(tmp_path) as log:  # a resumed run appends
        log.log(3, {"loss": np.float32(1.5), "eval/psnr": 20}, samples=96)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["samples"] for r in records] == [32, 64, 96]
    assert records[0]["loss"] == 2.5 and records[0]["lr"] == 1e-3
    assert records[2]["loss"] == 1.5 and records[2]["eval/psnr"] == 20 and "lr" not in records[2]
    assert records[0]["time"] <= records[2]["time"]


def test_metrics_rejects_bad_values(tmp_path):
    log = MetricsLogger(tmp_path)
    with pytest.raises(ValueError):
        log.log(1, {"step": 1.0})
    with pytest.raises(ValueError):
        log.log(1, {"loss": torch.ones(2)})
    with pytest.raises(TypeError):
        log.log(1, {"loss": "high"})
    log.close()
    assert read_metrics(tmp_path) == []


def test_read_metrics_skips_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + '\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}]
    path.write_text('{"step": 2, "lo\n' + json.dumps({"step": 3}) + "\n")
    with pytest.raises(json.JSONDecodeError):
        read_metrics(path)


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "run", enabled=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path, tensorboard=True) as log:
        log.log(1, {"loss": 1.0}, samples=8)
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_progress_plain_lines_when_not_a_tty():
    out = io.StringIO()
    bar = ProgressBar(total=10, initial=2, interval_s=0.0, stream=out)
    for step in range(3, 11):
        bar.update(step, loss=0.25, images_per_s=100.0)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 8
    assert lines[0].startswith("train step 3/10") and "loss 0.2500" in lines[0]
    assert "100.0 img/s" in lines[0] and "eta 0:00:00" in lines[-1]
    out = io.StringIO()
    bar = ProgressBar(total=10, interval_s=3600.0, stream=out)
    for step in range(1, 11):
        bar.update(step, loss=1.0)
    assert [ln.split()[2] for ln in out.getvalue().splitlines()] == ["1/10", "10/10"]


def test_progress_disabled_and_tty():
    out = io.StringIO()
    bar = ProgressBar(total=5, enabled=False, stream=out)
    bar.update(5, loss=1.0)
    assert out.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with ProgressBar(total=5, stream=out) as bar:
        assert bar._progress is not None  # rich bar
        bar.update(5, loss=0.5, images_per_s=10.0)
    assert "5/5" in out.getvalue() and "loss 0.5000" in out.getvalue()
