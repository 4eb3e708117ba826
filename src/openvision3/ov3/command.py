"""Command lines of OpenVision 3: ``ov3 demo`` (without a downstream mode) and ``ov3 train-vae``
(argument parsing only; the work is in ``demo.py`` and ``demo_vae.py``). ``ov3 train`` takes the
presets of every family (``cli.py``)."""

from __future__ import annotations

from pathlib import Path

DEMO_MODES_HELP = """\
Other modes (each with its own --help):
  ov3 demo --generation [--run DIR]     a DiT-DH on a demo run's frozen tokens, judged in pixels
  ov3 demo --understanding [--run DIR]  a tiny LLaVA on a demo run's frozen tokens, synthetic VQA
  --run DIR: a finished `ov3 demo` run to start from; without it, `ov3 demo` runs first (the
  other flags are then its preset's) and the mode's options keep their defaults."""


def demo(argv: list[str]) -> Path:
    """``ov3 demo [--preset P] [--FIELD VALUE ...]``: the OpenVision 3 demo of ``--preset``
    (default ``demo``, or ``demo_gpu`` with CUDA) with its dotted overrides; returns the path of
    its report."""
    from openvision3.configs.parse import default_demo_preset, parse_experiment, pop_flag
    from openvision3.ov3.demo import run_demo

    preset, argv = pop_flag(argv, "--preset")
    if not preset and argv and not argv[0].startswith("-"):
        preset, argv = argv[0], argv[1:]
    preset = preset or default_demo_preset()
    return run_demo(parse_experiment(preset, argv, f"ov3 demo --preset {preset}", DEMO_MODES_HELP))


def train_vae_main(argv: list[str]) -> int:
    """``ov3 train-vae [--FIELD VALUE ...]``: the demo's small VAE on the synthetic world."""
    import tyro

    from openvision3.ov3.demo_vae import VAETrainConfig, train_vae

    cfg = tyro.cli(VAETrainConfig, args=argv, prog="ov3 train-vae")
    print(train_vae(cfg))
    return 0
