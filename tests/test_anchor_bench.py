"""``scripts/anchor_bench.py`` (the GPU check's anchor, independent of the package) runs on CPU
at tiny sizes and writes the rows ``scripts/gpu_table.py`` reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "anchor_bench.py"


@pytest.mark.slow
def test_anchor_bench_smoke_writes_its_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads((tmp_path / "anchor.json").read_text())
    assert table["device"] == "cpu" and isinstance(table["matmul_bf16_tflops"], float)
    for row in (
        "vae_encode_fp32",
        "official_recipe_encode_fp32",
        "vitB2_enc_plus_vitB1_dec_fwd_bwd_bf16",
        "lpips_vgg_fwd_bwd_bf16",
    ):
        assert table[row]["img_per_s"] > 0 and table[row]["gflop_per_img"] > 0, row
    assert table["bf16_vs_fp32_rel_err"] < 0.1
    source = SCRIPT.read_text()
    assert "import openvision3" not in source and "from openvision3" not in source
