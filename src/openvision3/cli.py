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
    ov3 demo --generation [--run DIR]      a DiT-DH on a demo run's frozen tokens, judged in pixels
    ov3 sample GENERATOR --out DIR         class-conditional samples: PNGs + npz (torchrun-ready)
    ov3 eval generation SAMPLES --reference REF   gFID, IS, precision / recall (k = 3)
    ov3 bench generation [...]             DiT-DH-XL training step and sampling speed
    ov3 serve [MODEL] [--generator DIR] [--vlm DIR]   the web demo (Gradio) on this machine
    ov3 study <name> [--overrides]         arms x seeds of the paper's findings -> report.md
    ov3 vlm build|chat|answer [...]        a LLaVA on OpenVision 3 tokens: assemble, ask, batch-answer
    ov3 demo --understanding [--run DIR]   a tiny LLaVA on a demo run's frozen tokens, synthetic VQA
    ov3 eval vqa MODEL QUESTIONS           exact match / VQA accuracy on a JSONL of questions
    ov3 bench vlm [...]                    LLaVA stage-2 step (7B-shaped LM, small depth), tower images/s
Overrides are dotted config fields parsed by tyro, e.g. ``--train.stages.0.steps 100``;
``ov3 train <preset> --help`` lists them all. ``--model-preset NAME`` (ov3-mu, ov3-S/2,
ov3-B/2, ov3-L/2) swaps the whole model of the preset before the other flags apply.
A missing or inconsistent setting ends the command with one line naming the flag, status 2;
the other errors a user can fix (``errors.py``) with one line and status 1. ``OV3_DEBUG=1``
shows their tracebacks.
"""

from __future__ import annotations

import logging
import os
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


def _need(extra: str, feature: str) -> None:
    """One line naming the pip extra when a package of it is missing (``extras.py``)."""
    from openvision3.extras import require_extra

    require_extra(extra, feature)


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
    _need("train", "ov3 train")
    cfg = _experiment(argv[0], argv[1:], f"ov3 train {argv[0]}")
    from openvision3.train.trainer import Trainer

    Trainer(cfg).fit()
    return 0


def default_demo_preset() -> str:
    """``demo_gpu`` where CUDA is available, else the CPU-sized ``demo``."""
    import torch

    return "demo_gpu" if torch.cuda.is_available() else "demo"


def cmd_demo(argv: list[str]) -> int:
    _need("train", "ov3 demo")
    if "--generation" in argv:
        from openvision3.generation.command import demo_main

        return demo_main(argv)
    if "--understanding" in argv:
        from openvision3.understanding.command import demo_main as understanding_demo

        return understanding_demo(argv)
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
    _need("train", "ov3 train-vae")
    import tyro

    from openvision3.demo.vae import VAETrainConfig, train_vae

    cfg = tyro.cli(VAETrainConfig, args=argv, prog="ov3 train-vae")
    print(train_vae(cfg))
    return 0


def cmd_cache_latents(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: ov3 cache-latents <preset> --out DIR [--overrides]", file=sys.stderr)
        return 2
    _need("train", "ov3 cache-latents")
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
    _need("eval", "ov3 eval")
    if argv and argv[0] == "generation":
        from openvision3.generation.command import eval_main as generation_eval

        return generation_eval(argv[1:])
    if argv and argv[0] == "vqa":
        from openvision3.understanding.command import main_eval_vqa

        return main_eval_vqa(argv[1:])
    from openvision3.evaluation.command import main as eval_main

    return eval_main(argv)


def _inference(name: str):
    def run(argv: list[str]) -> int:
        from openvision3.inference.command import main as inference_main

        return inference_main(name, argv)

    return run


def cmd_serve(argv: list[str]) -> int:
    _need("web", "ov3 serve")
    from openvision3.web.serve import main as serve_main

    return serve_main(argv)


def cmd_bench(argv: list[str]) -> int:
    if argv and argv[0] == "train":
        _need("train", "ov3 bench train")
        from openvision3.ov3.bench import main as bench_train_main

        return bench_train_main(argv[1:])
    if argv and argv[0] == "encode":
        return _inference("bench")(argv)
    if argv and argv[0] == "generation":
        from openvision3.generation.bench import main as bench_generation_main

        return bench_generation_main(argv[1:])
    if argv and argv[0] == "vlm":
        from openvision3.understanding.bench import main as bench_vlm_main

        return bench_vlm_main(argv[1:])
    print("usage: ov3 bench {encode,train,generation,vlm} [--help]", file=sys.stderr)
    return 2


def cmd_study(argv: list[str]) -> int:
    _need("train", "ov3 study")
    from openvision3.study.command import main as study_main

    return study_main(argv)


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
    "sample": lambda argv: __import__(
        "openvision3.generation.command", fromlist=["sample_main"]
    ).sample_main(argv),
    "serve": cmd_serve,
    "vlm": lambda argv: __import__("openvision3.understanding.command", fromlist=["main"]).main(
        argv
    ),
    "study": cmd_study,
    **{name: _inference(name) for name in INFERENCE_COMMANDS},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    _setup_logging()
    from openvision3.errors import USER_ERRORS, ConfigError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except USER_ERRORS as err:
        if os.environ.get("OV3_DEBUG") == "1":
            raise
        print(f"ov3 {argv[0]}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
