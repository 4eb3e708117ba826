"""``ov3``: parse and dispatch; no logic here.

    ov3 demo [--overrides]                 the offline demo: train, evaluate, write a report
    ov3 train <preset> [--overrides]       train an experiment preset (see `ov3 presets`)
    ov3 train-vae [--overrides]            train the small VAE of the demo
    ov3 presets                            list the experiment presets
    ov3 eval <task> [...]                  evaluations (reconstruction, zero-shot, retrieval, ...)
    ov3 encode|reconstruct|caption|classify|latent-stats [...]   batched inference on files
    ov3 bench encode [...]                 encode throughput against the released recipe
Overrides are dotted config fields parsed by tyro, e.g. ``--train.stages.0.steps 100``;
``ov3 train <preset> --help`` lists them all.
"""

from __future__ import annotations

import logging
import sys

USAGE = __doc__


def _experiment(preset: str, argv: list[str]):
    import tyro

    from openvision3.config import ExperimentConfig
    from openvision3.configs import get_preset

    return tyro.cli(
        ExperimentConfig, default=get_preset(preset), args=argv, prog=f"ov3 train {preset}"
    )


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def cmd_train(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(
            "usage: ov3 train <preset> [--overrides]; presets: see `ov3 presets`", file=sys.stderr
        )
        return 2
    cfg = _experiment(argv[0], argv[1:])
    from openvision3.train.trainer import Trainer

    Trainer(cfg).fit()
    return 0


def cmd_demo(argv: list[str]) -> int:
    preset = "demo"
    if argv and not argv[0].startswith("-"):
        preset, argv = argv[0], argv[1:]
    cfg = _experiment(preset, argv)
    from openvision3.train.demo import run_demo

    report = run_demo(cfg)
    print(f"report: {report}")
    return 0


def cmd_train_vae(argv: list[str]) -> int:
    import tyro

    from openvision3.train.vae import VAETrainConfig, train_vae

    cfg = tyro.cli(VAETrainConfig, args=argv, prog="ov3 train-vae")
    print(train_vae(cfg))
    return 0


def cmd_presets(argv: list[str]) -> int:
    from openvision3.configs import preset_names

    print("\n".join(preset_names()))
    return 0


def cmd_eval(argv: list[str]) -> int:
    from openvision3.evaluation.command import main as eval_main

    return eval_main(argv)


def _inference(name: str):
    def run(argv: list[str]) -> int:
        from openvision3.inference.command import main as inference_main

        return inference_main(name, argv)

    return run


INFERENCE_COMMANDS = ("encode", "reconstruct", "caption", "classify", "latent-stats", "bench")
COMMANDS = {
    "train": cmd_train,
    "demo": cmd_demo,
    "train-vae": cmd_train_vae,
    "presets": cmd_presets,
    "eval": cmd_eval,
    **{name: _inference(name) for name in INFERENCE_COMMANDS},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    _setup_logging()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
