"""``ov3 bench generation`` on the demo-sized DiT-DH, CPU: the JSON has both modes, finite
losses, FLOPs and the targets block."""

import json

import pytest

from openvision3.cli import main


@pytest.mark.slow
def test_bench_generation_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "generation", "--model", "dit-dh-demo", "--batch", "2", "--sample-batch",
            "2", "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert set(r["modes"]) == set(r["sampling"]) == {"eager", "fast"}
    assert r["train_gflop_per_image"] > 0 and r["modes"]["fast"]["loss_finite"]
    assert r["modes"]["eager"]["mfu"] > 0 and r["sampling"]["eager"]["precision"] == "fp32"
    assert r["targets"]["applies"] is False  # the targets are for CUDA
