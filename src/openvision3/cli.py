"""``ov3``: parse and dispatch; no logic here.

    ov3 demo [--preset P] [--overrides]    the offline demo: train, evaluate, write a report
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
``ov3 train <preset> --help`` lists them all. ``--model-preset NAME`` (ov3-mu, ov3-S/2,
ov3-B/2, ov3-L/2) swaps the whole model of the preset before the other flags apply.
A missing or inconsistent setting ends the command with one line naming the flag, status 2.
"""

from __future__ import annotations

import logging
import sys

USAGE = __doc__


def _pop_flag(argv: list[str], flag: str) -> tuple[str, list[str]]:
    """``--flag VALUE`` / ``--flag=VALUE`` taken out of ``argv`` (the last one wins)."""
    value, rest, i = "", [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


MODEL_PRESET_HELP = (
    "--model-preset NAME swaps the whole model for a model preset ({names}) before the other "
    "flags apply; --model.* flags then change it further."
)


def _experiment(preset: str, argv: list[str], prog: str):
    """The preset, ``--model-preset``, then tyro's dotted overrides; validated after them."""
    import tyro

    from openvision3.configs import PRESETS, get_preset
    from openvision3.models.presets import PRESETS as MODEL_PRESETS

    model_preset, argv = _pop_flag(argv, "--model-preset")
    default = get_preset(preset, model_preset)
    doc = (PRESETS[preset].__doc__ or "").strip()
    cfg = tyro.cli(
        type(default),  # the preset's run config: it names its task (train/task.py)
        default=default,
        args=argv,
        prog=prog,
        description=f"{doc}\n\n{MODEL_PRESET_HELP.format(names=', '.join(sorted(MODEL_PRESETS)))}",
    )
    cfg.validate()
    return cfg


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
    cfg = _experiment(argv[0], argv[1:], f"ov3 train {argv[0]}")
    from openvision3.train.trainer import Trainer

    Trainer(cfg).fit()
    return 0


def default_demo_preset() -> str:
    """``demo_gpu`` where CUDA is available, else the CPU-sized ``demo``."""
    import torch

    return "demo_gpu" if torch.cuda.is_available() else "demo"


def cmd_demo(argv: list[str]) -> int:
    preset, argv = _pop_flag(argv, "--preset")
    if not preset and argv and not argv[0].startswith("-"):
        preset, argv = argv[0], argv[1:]
    preset = preset or default_demo_preset()
    cfg = _experiment(preset, argv, f"ov3 demo --preset {preset}")
    from openvision3.demo.run import run_demo

    report = run_demo(cfg)
    print(f"report: {report}")
    return 0


def cmd_train_vae(argv: list[str]) -> int:
    import tyro

    from openvision3.demo.vae import VAETrainConfig, train_vae

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

    model_preset, rest = _pop_flag(argv[1:], "--model-preset")
    exp = get_preset(argv[0], model_preset)
    default = CacheLatentsConfig.from_experiment(exp)
    cfg = tyro.cli(
        CacheLatentsConfig, default=default, args=rest, prog=f"ov3 cache-latents {argv[0]}"
    )
    cfg.data.require_images()
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
        from openvision3.ov3.bench import main as bench_train_main

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
    from openvision3.errors import ConfigError, MissingExtraError, MissingWeightsError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, MissingWeightsError, MissingExtraError) as err:
        print(f"ov3 {argv[0]}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
