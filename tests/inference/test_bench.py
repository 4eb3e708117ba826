"""``ov3 bench encode`` on CPU with a tiny config: the same table as on GPU."""

import json

from openvision3.inference.command import main
from tests.inference._inference_helpers import RES


def test_bench_encode_table(model_dir, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--model", model_dir, "--resolution", str(RES), "--batch-size", "2", "--steps", "1"]
    assert main("bench", ["encode", *args, "--warmup", "0", "--output", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["device"] == "cpu" and table["tokens"] == [4, 32]
    recipe, fp32, fast = table["rows"]
    assert recipe["path"].startswith("released recipe") and recipe["rel_error"] == 0.0
    assert fp32["rel_error"] < 1e-5  # same weights, same precision: same tokens
    assert 0 < fast["rel_error"] < 0.05  # bf16 autocast: close, not equal
    assert all(r["images_per_s"] > 0 and r["speedup"] > 0 for r in table["rows"])


def test_bench_random_preset(capsys):
    args = ["--preset", "ov3-mu", "--resolution", str(RES), "--batch-size", "1", "--steps", "1"]
    assert main("bench", ["encode", *args, "--warmup", "0"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["model"] == "ov3-mu (random weights)" and len(table["rows"]) == 3
    assert table["rows"][1]["rel_error"] < 1e-5
