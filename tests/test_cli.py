"""``ov3 train`` / ``ov3 demo`` argument handling: presets build before their flags, validate
after them, ``--model-preset`` swaps the model, and config errors are one line with status 2."""

import subprocess
import sys

import pytest

from openvision3 import cli
from openvision3.configs import get_preset, parse, preset_names
from openvision3.errors import ConfigError
from openvision3.ov3.config import base_lr


def _parse(preset: str, *flags: str):
    return parse.parse_experiment(preset, list(flags), f"ov3 train {preset}")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_and_shows_help(name, capsys):
    get_preset(name)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", name, "--help"])
    assert exit_.value.code == 0
    assert "--model-preset" in capsys.readouterr().out


def test_missing_data_path_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "openvision3.cli", "train", "pretrain_b2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--data.path is required for source 'webdataset'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_flags_exit_2_without_traceback():
    for flags in (["--no-such-field", "1"], ["--train.precision", "fp64"]):
        proc = subprocess.run(
            [sys.executable, "-m", "openvision3.cli", "train", "demo_smoke", *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, flags
        assert "Traceback" not in proc.stderr, proc.stderr


def test_unknown_preset_is_a_config_error():
    assert cli.main(["train", "no_such_preset"]) == 2
    with pytest.raises(ConfigError, match="no_such_preset"):
        get_preset("no_such_preset")
    with pytest.raises(ConfigError, match="--model-preset"):
        get_preset("pretrain_b2", "ov3-Q/3")


def test_model_preset_swaps_the_model_before_the_other_flags():
    cfg = _parse(
        "pretrain_b2",
        "--data.path",
        "shards/{000..009}.tar",
        "--model-preset",
        "ov3-mu",
        "--model.encoder.depth",
        "3",
    )
    mu = get_preset("demo_smoke").model
    assert cfg.model.name == "ov3-mu"
    assert cfg.model.encoder.depth == 3 and cfg.model.encoder.width == mu.encoder.width
    # The data's text lengths follow the new towers (the paper preset tokenises to 80 / 128).
    assert cfg.data.text_context == cfg.model.text.context_length == 32
    assert cfg.data.caption_context == cfg.model.caption.context_length
    assert cfg.train.stages[0].batch_size == 8192  # the recipe is untouched
    assert _parse("pretrain_b2", "--data.path", "x.tar", "--model-preset=ov3-L/2").model.name == (
        "ov3-L/2"
    )


def test_validation_names_the_flag():
    with pytest.raises(ConfigError, match=r"--train\.stages\.0\.warmup-steps 6256 exceeds"):
        _parse("pretrain_b2", "--data.path", "x.tar", "--train.stages.0.steps", "2")
    with pytest.raises(ConfigError, match=r"--data\.text-context 100 exceeds --model\.text"):
        _parse("pretrain_b2", "--data.path", "x.tar", "--data.text-context", "100")
    # Training from a latent cache needs no image path.
    assert _parse("pretrain_b2", "--data.latents", "cache/r{resolution}").data.path == ""


def test_paper_recipe_presets():
    for size, model in (("b2", "ov3-B/2"), ("l2", "ov3-L/2")):
        pre, fine, both = (get_preset(f"{k}_{size}") for k in ("pretrain", "finetune", "ov3"))
        assert {pre.model.name, fine.model.name, both.model.name} == {model}
        assert [s.resolution for s in both.train.stages] == [128, 256]
        assert (pre.train.stages[0].batch_size, base_lr(pre.train.stages[0])) == (8192, 8e-6)
        assert (fine.train.stages[0].batch_size, base_lr(fine.train.stages[0])) == (4096, 4e-7)
        assert fine.train.stages[0].lpips_weight == 0.5
    b224 = get_preset("ov3_b2_224")
    assert [s.resolution for s in b224.train.stages] == [128, 224]
    assert get_preset("finetune_b2_224").train.stages[0].resolution == 224


def test_demo_picks_its_preset(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse.default_demo_preset() == "demo_gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse.default_demo_preset() == "demo"
    gpu, cpu = get_preset("demo_gpu"), get_preset("demo")
    assert gpu.train.total_steps > cpu.train.total_steps
    assert gpu.train.stages[0].batch_size > cpu.train.stages[0].batch_size
    assert gpu.model.encoder.width > cpu.model.encoder.width
    assert gpu.train.precision == "auto"  # bf16 autocast on CUDA


def test_pop_flag():
    assert parse.pop_flag(["--a", "1", "--preset", "x", "--b"], "--preset") == (
        "x",
        ["--a", "1", "--b"],
    )
    assert parse.pop_flag(["--preset=y", "--preset", "z"], "--preset") == ("z", [])
    assert parse.pop_flag(["--presets", "1"], "--preset") == ("", ["--presets", "1"])


@pytest.mark.parametrize("preset", ["demo", "demo_gpu"])
def test_demo_presets_run_shrunk(preset, tmp_path):
    """Both demo presets' code path on CPU, with a tiny model and a few steps."""
    shrink = [
        "--model-preset", "ov3-mu", "--data.num-workers", "0", "--run-dir", str(tmp_path),
        "--eval.num-images", "8", "--eval.batch-size", "4", "--eval.caption-samples", "2",
        "--train.stages.0.steps", "2", "--train.stages.0.batch-size", "4",
        "--train.stages.0.warmup-steps", "1", "--train.stages.0.resolution", "32",
        "--train.stages.1.steps", "2", "--train.stages.1.batch-size", "4",
        "--train.stages.1.warmup-steps", "1", "--train.stages.1.resolution", "64",
    ]  # fmt: skip
    assert cli.main(["demo", "--preset", preset, *shrink]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Learning checks" in report
    assert (tmp_path / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("flag", "module"),
    [
        ("--generation", "openvision3.generation.command"),
        ("--understanding", "openvision3.understanding.command"),
    ],
)
def test_downstream_demo_chains_after_the_ov3_demo(flag, module, monkeypatch, tmp_path):
    """`ov3 demo --generation` without --run: the OpenVision 3 demo (the other flags are its
    preset's), then the downstream demo on that finished run; with --run, only the latter."""
    import importlib

    import openvision3.ov3.demo as ov3_demo

    calls = []

    def fake_run_demo(cfg):
        calls.append(("ov3", cfg.name, cfg.train.stages[0].steps))
        return tmp_path / cfg.name / "report.md"

    def fake_family(argv):
        calls.append(("family", argv))
        return 0

    monkeypatch.setattr(ov3_demo, "run_demo", fake_run_demo)
    monkeypatch.setattr(importlib.import_module(module), "demo_main", fake_family)
    assert cli.main(["demo", flag, "--preset", "demo_smoke", "--train.stages.0.steps", "2"]) == 0
    run = str(tmp_path / "demo_smoke")
    assert calls == [("ov3", "demo_smoke", 2), ("family", ["--run", run])]
    calls.clear()
    assert cli.main(["demo", flag, "--run", "elsewhere"]) == 0
    assert calls == [("family", ["--run", "elsewhere"])]
