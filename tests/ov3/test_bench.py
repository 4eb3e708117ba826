"""``ov3 bench train`` on CPU with the smoke preset: the same JSON table as on a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openvision3.cli import main as cli_main
from openvision3.models.presets import model_config
from openvision3.ov3.bench import (
    COMPONENTS,
    TrainBenchConfig,
    paper_recipe,
    recipe_gpu_hours,
    targets,
)
from openvision3.ov3.presets import EPOCH

RES, BATCH = 32, 2


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """One end-to-end CLI run, LPIPS on (random backbone), both modes."""
    out = tmp_path_factory.mktemp("bench") / "train.json"
    args = ["--preset", "demo_smoke", "--resolution", str(RES), "--batch-size", str(BATCH)]
    args += ["--steps", "1", "--warmup", "0", "--component-steps", "1", "--lpips-weight", "0.5"]
    assert cli_main(["bench", "train", *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_table_header(table):
    assert table["complete"] and table["device"] == "cpu" and table["model"] == "ov3-mu"
    assert (table["resolution"], table["batch_size"], table["tokens"]) == (RES, BATCH, 4)
    assert table["precision"] == "fp32" and table["ceiling_dtype"] == "float32"
    assert table["lpips_backbone"] == "random vgg backbone"
    assert table["matmul_ceiling_tflops"] > 0 and table["step_flops"] > 0
    assert set(table["modes"]) == {"eager", "fast"}


def test_every_component_counted_and_timed(table):
    for mode in table["modes"].values():
        assert mode["loss_finite"] and 0 < mode["mfu"] <= 1
        assert mode["images_per_s"] > 0 and mode["peak_rss_gib"] > 0
        assert mode["peak_memory_gib"] is None and "CPU" in mode["peak_memory_note"]
        rows = {c["name"]: c for c in mode["components"]}
        assert set(rows) == {"optimizer", *COMPONENTS}  # all branches and LPIPS are on
        for name in COMPONENTS:
            row = rows[name]
            assert row["flops"] > 0 and row["ms"] > 0 and 0 < row["mfu"] <= 1, row
        assert rows["vae_encode"]["pass"] == "forward"  # frozen, under no_grad
        assert all(rows[n]["pass"] == "forward+backward" for n in COMPONENTS[1:])
        assert rows["text"]["calls"] == 2  # alt-text and caption views
        assert rows["optimizer"]["flops"] is None
    # The components are the step's work: the rest (losses, pooling) is a sliver.
    parts = sum(c["flops"] for c in table["modes"]["eager"]["components"] if c["flops"])
    assert 0.98 * table["step_flops"] <= parts <= table["step_flops"]


def test_encoder_flops_match_analytic_count(table):
    """Forward: 24 N D^2 per block (qkv, proj, 4x MLP) + 4 N^2 D (attention) + the patch
    conv; backward: twice the linears, 2.5x the attention, the patch conv's weight only."""
    enc = model_config("ov3-mu").encoder
    d, depth, p = enc.width, enc.depth, enc.patch_size
    grid = (RES // 8 // p) ** 2
    n = grid + 1  # + CLS
    linear = depth * 24 * n * d * d
    attention = depth * 4 * n * n * d
    patch = 2 * grid * enc.in_channels * p * p * d
    analytic = BATCH * (3 * linear + 3.5 * attention + 2 * patch)
    row = next(c for c in table["modes"]["eager"]["components"] if c["name"] == "encoder")
    assert row["flops"] == pytest.approx(analytic, rel=0.02)


def test_gpu_hour_arithmetic():
    pretrain, finetune = paper_recipe()
    assert (pretrain["resolution"], finetune["resolution"]) == (128, 256)
    assert abs(pretrain["samples"] - 4000 * EPOCH) < 8192  # whole steps of the global batch
    assert abs(finetune["samples"] - 400 * EPOCH) < 4096
    assert not pretrain["lpips"] and finetune["lpips"]
    hours = recipe_gpu_hours(1000.0, 128, lpips=False)
    assert hours["pretrain"] == pytest.approx(pretrain["samples"] / 1000 / 3600, abs=0.05)
    assert hours["finetune"] is None
    hours = recipe_gpu_hours(250.0, 256, lpips=True)
    assert hours == {"pretrain": None, "finetune": round(finetune["samples"] / 250 / 3600, 1)}
    assert recipe_gpu_hours(250.0, 256, lpips=False) == {"pretrain": None, "finetune": None}


def test_targets():
    mode = lambda ms, mfu: {"step_ms": ms, "mfu": mfu}  # noqa: E731
    result = {"resolution": 256, "lpips_weight": 0.5}
    result["modes"] = {"eager": mode(200.0, 0.2), "fast": mode(100.0, 0.4)}
    t = targets(result)
    assert t["speedup_fast_vs_eager"]["measured"] == 2.0 and t["speedup_fast_vs_eager"]["met"]
    assert t["mfu_fast"]["met"]
    result.update(resolution=128, lpips_weight=0.0)
    assert targets(result)["speedup_fast_vs_eager"]["met"] is None  # the 1.8x goal is 256 px


def test_config_checks():
    with pytest.raises(ValueError, match="modes"):
        TrainBenchConfig(modes=("eager", "turbo"))
    with pytest.raises(ValueError, match="steps"):
        TrainBenchConfig(steps=0)
    assert TrainBenchConfig(modes=["fast"]).modes == ("fast",)


def test_cli_dispatch(capsys):
    assert cli_main(["bench"]) == 2
    assert "encode,train" in capsys.readouterr().err
    assert cli_main(["bench", "train", "--preset", "no-such-preset"]) == 1
    assert "unknown preset" in capsys.readouterr().err


def test_capture_leaves_no_global_hook(table):
    """A left-over global hook would slow every later module call (and warn under compile)."""
    import torch

    assert not torch.nn.modules.module._has_any_global_hook()


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_gpu_scripts_parse():
    for name in ("gpu_check.sh", "gpu_prepare.sh"):
        subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)


def test_gpu_table_on_sample_files(table, tmp_path):
    """scripts/gpu_table.py draws every section from sample files, and says what is missing."""
    r256 = json.loads(json.dumps(table))
    r256.update(resolution=256, complete=False)
    r256["modes"]["fast"]["gpu_hours"] = {"pretrain": None, "finetune": 1234.5}
    r256["modes"]["eager"]["gpu_hours"] = {"pretrain": None, "finetune": 2469.0}
    r256["targets"] = targets({**r256, "lpips_weight": 0.5})
    (tmp_path / "bench_train_256.json").write_text(json.dumps(r256))
    hours = table["modes"]["fast"]["gpu_hours"]
    assert hours == {"pretrain": None, "finetune": None}  # 32 px stands for no recipe stage
    r128 = json.loads(json.dumps(table))
    r128.update(resolution=128)
    r128["modes"]["fast"]["gpu_hours"] = {"pretrain": 10000.0, "finetune": None}
    (tmp_path / "bench_train_128.json").write_text(json.dumps(r128))
    anchor = {"device": "NVIDIA H100", "torch": "2.11", "matmul_bf16_tflops": 780.0}
    anchor["vae_encode_fp32"] = {"s_per_batch": 0.06, "img_per_s": 500.0, "gflop_per_img": 273}
    (tmp_path / "anchor.json").write_text(json.dumps(anchor))
    (tmp_path / "status.tsv").write_text(
        "train256\t124\t190\t190\ntrain128\t0\t120\t170\nanchor\t0\t50\t90\nencode\tskipped\t0\t0\n"
    )
    (tmp_path / "pytest_gpu.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="0" time="61.0">'
        '<testcase name="test_ok"/><testcase name="test_bad">'
        '<failure message="AssertionError: loss is nan">trace</failure></testcase>'
        "</testsuite></testsuites>"
    )
    run = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_table.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    text = run.stdout
    for expected in (
        "OpenVision 3 GPU check: cpu",
        "TIMEOUT",
        "skipped",
        "fast (partial)",
        "vae_decode",
        "lpips",
        "unattributed",
        "speedup_fast_vs_eager",
        "paper recipe, total  11234.5",
        "vae_encode_fp32",
        "matmul_bf16_tflops 780.0",
        "5 tests, 1 failed",
        "FAILED test_bad: AssertionError: loss is nan",
        "bench_encode_256.json: missing",
    ):
        assert expected in text, (expected, text)
