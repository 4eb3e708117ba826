"""``ov3``: parse and dispatch; no logic here.

    ov3 demo [--overrides]                 the offline demo: train, evaluate, write a report
    ov3 train <preset> [--overrides]       train an experiment preset (see `ov3 presets`)
    ov3 train-vae [--overrides]            train the small VAE of the demo
    ov3 export <checkpoint|run> <out>      a training checkpoint (any format) -> model.safetensors
    ov3 cache-latents <preset> --out DIR   write the frozen VAE's latents of a split once
    ov3 presets                            list the experiment presets
    ov3 eval <task> [...]                  evaluations (reconstruction, zero-shot, retrieval, ...)
    ov3 encode|reconstruct|caption|classify|latent-stats [...]   batched inference on files
    ov3 bench encode [...]                 encode throughput against the released recipe
    ov3 bench train [...]                  training-step speed: images/s, FLOPs, MFU, memory
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


def cmd_cache_latents(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: ov3 cache-latents <preset> --out DIR [--overrides]", file=sys.stderr)
        return 2
    import json

    import tyro

    from openvision3.configs import get_preset
    from openvision3.data.latents import CacheLatentsConfig, write_latent_cache

    exp = get_preset(argv[0])
    default = CacheLatentsConfig.from_experiment(exp)
    cfg = tyro.cli(
        CacheLatentsConfig, default=default, args=argv[1:], prog=f"ov3 cache-latents {argv[0]}"
    )
    print(json.dumps(write_latent_cache(cfg), indent=2))
    return 0


def cmd_export(argv: list[str]) -> int:
    import tyro

    from openvision3.train.export import ExportArgs, export_checkpoint

    args = tyro.cli(
        ExportArgs, args=argv, prog="ov3 export", config=(tyro.conf.PositionalRequiredArgs,)
    )
    print(export_checkpoint(args.checkpoint, args.out, args.weights))
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


def cmd_bench(argv: list[str]) -> int:
    if argv and argv[0] == "train":
        from openvision3.train.bench import main as bench_train_main

        return bench_train_main(argv[1:])
    if argv and argv[0] == "encode":
        return _inference("bench")(argv)
    print("usage: ov3 bench {encode,train} [--help]", file=sys.stderr)
    return 2


INFERENCE_COMMANDS = ("encode", "reconstruct", "caption", "classify", "latent-stats")
COMMANDS = {
    "train": cmd_train,
    "demo": cmd_demo,
    "train-vae": cmd_train_vae,
    "export": cmd_export,
    "cache-latents": cmd_cache_latents,
    "presets": cmd_presets,
    "eval": cmd_eval,
    "bench": cmd_bench,
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
