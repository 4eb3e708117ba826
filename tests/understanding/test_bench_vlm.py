"""``ov3 bench vlm`` on CPU with a tiny random LM and the ov3-mu tower: the engine's step runs
on the task's synthetic batch and the JSON reports it."""

import json

import pytest

pytest.importorskip("transformers")

from openvision3.cli import main  # noqa: E402

TINY = ["--layers", "1", "--hidden", "64", "--heads", "2", "--intermediate", "128", "--vocab",
        "512", "--text-tokens", "8", "--batch-size", "2", "--image-size", "32", "--tower",
        "ov3-mu", "--steps", "1", "--warmup", "0", "--device", "cpu"]  # fmt: skip


@pytest.mark.slow
def test_bench_vlm_json(tmp_path, capsys):
    out = tmp_path / "vlm.json"
    assert main(["bench", "vlm", *TINY, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["image_tokens"] == 4 and r["sequence"] == 1 + 4 + 8  # BOS, image, text
    assert r["step_tflop"] > 0 and 0 < r["mfu"] and r["tokens_per_s"] > 0
    assert r["tower_images_per_s"] > 0
