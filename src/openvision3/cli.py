"""The ``ov3`` command line: one table of commands (``COMMANDS``), each parsing its own flags
(tyro or argparse) and calling the library; ``ov3 --help`` is written from the table."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

DESCRIPTION = """\
OpenVision 3 (arXiv 2601.15369): a frozen VAE, a ViT on its latents and one set of unified
tokens for generation and understanding. Train, export, encode, evaluate, sample and serve."""

EPILOG = """\
`ov3 COMMAND --help` describes a command's arguments and options; for train, demo, study and
cache-latents it lists every config field of the preset as a dotted flag
(`--train.stages.0.steps 100`). `--model-preset NAME` (ov3-mu, ov3-B/2, ...; `ov3 train --help`
lists them) swaps the whole model of an experiment preset before the other flags apply.
A missing or inconsistent setting ends a command with one line naming the flag (status 2);
other errors a user can fix are one line too (status 1). OV3_DEBUG=1 shows their tracebacks."""


@dataclass(frozen=True)
class Command:
    """One ``ov3`` command: how to run it and how ``ov3 --help`` lists it.

    ``subcommands``: commands chosen by the first argument (``ov3 bench train``) or, for
    ``ov3 demo``, by a flag anywhere (``--generation``); ``choices``: the names the first
    argument takes (presets, studies), for the command's help."""

    run: Callable[[list[str]], int]
    args: str  # the synopsis after ``ov3 NAME``
    summary: str
    subcommands: dict[str, Command] = field(default_factory=dict)
    choices: Callable[[], dict[str, str]] | None = None


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


def _wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _print_choices(usage: str, what: str, choices: dict[str, str], note: str, ok: bool) -> int:
    """A command's usage and the names its first argument takes, one per line with its summary:
    on stdout with status 0 for ``--help``, else on stderr with status 2."""
    width = max(map(len, choices), default=0) + 2
    rows = "\n".join(f"  {name:<{width}}{doc}".rstrip() for name, doc in choices.items())
    print(f"usage: {usage}\n\n{what}:\n{rows}\n\n{note}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 2


def _summaries() -> dict[str, str]:
    from openvision3.configs.parse import preset_summaries

    return preset_summaries()


def _model_preset_help() -> str:
    from openvision3.configs.parse import MODEL_PRESET_HELP, model_preset_names

    return MODEL_PRESET_HELP.format(names=model_preset_names())


def cmd_train(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        return _print_choices(
            "ov3 train PRESET [--model-preset NAME] [--FIELD VALUE ...]",
            "PRESET, an experiment preset (a run config: model, data, objective, stages)",
            _summaries(),
            "`ov3 train PRESET --help` lists the preset's config fields, each a dotted flag\n"
            "(`--train.stages.0.steps 100`); " + _model_preset_help(),
            ok=_wants_help(argv),
        )
    _need("train", "ov3 train")
    from openvision3.configs.parse import parse_experiment
    from openvision3.train.trainer import Trainer

    cfg = parse_experiment(argv[0], argv[1:], f"ov3 train {argv[0]}")

    Trainer(cfg).fit()
    return 0


def cmd_demo(argv: list[str]) -> int:
    """``ov3 demo``; with ``--generation`` / ``--understanding`` a downstream demo on a finished
    run (``--run DIR``), or chained after a new OpenVision 3 demo."""
    _need("train", "ov3 demo")
    from openvision3.ov3.command import demo as _ov3_demo

    for flag, mode in COMMANDS["demo"].subcommands.items():
        if flag in argv:
            rest = [a for a in argv if a != flag]
            given_run = any(a == "--run" or a.startswith("--run=") for a in rest)
            if given_run or _wants_help(rest):
                return mode.run(rest)
            report = _ov3_demo(rest)  # the OpenVision 3 demo first
            print(f"report: {report}")
            return mode.run(["--run", str(report.parent)])
    print(f"report: {_ov3_demo(argv)}")
    return 0


def image_presets() -> dict[str, str]:
    """The presets that train on images, OpenVision 3's: those whose VAE latents
    ``ov3 cache-latents`` writes (read from the registry; no preset is built)."""
    from openvision3.configs.presets import MODULES

    return {n: doc for n, doc in _summaries().items() if MODULES[n] == "openvision3.ov3.presets"}


def cmd_cache_latents(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        return _print_choices(
            "ov3 cache-latents PRESET --out DIR [--model-preset NAME] [--FIELD VALUE ...]",
            "PRESET, the experiment preset whose data, resolution and VAE are cached",
            image_presets(),
            "`ov3 cache-latents PRESET --help` lists the options (split, resolution, shards, "
            "tokens, ...).",
            ok=_wants_help(argv),
        )
    _need("train", "ov3 cache-latents")
    import json

    import tyro

    from openvision3.configs import get_preset
    from openvision3.configs.parse import pop_flag
    from openvision3.data.latents import CacheLatentsConfig, write_latent_cache
    from openvision3.errors import ConfigError
    from openvision3.ov3.config import ExperimentConfig

    model_preset, rest = pop_flag(argv[1:], "--model-preset")
    exp = get_preset(argv[0], model_preset)
    if not isinstance(exp, ExperimentConfig):
        raise ConfigError(
            f"{argv[0]!r} does not train on images, so it has no latents to cache; "
            "`ov3 cache-latents --help` lists the presets that do"
        )
    default = CacheLatentsConfig.from_experiment(exp)
    cfg = tyro.cli(
        CacheLatentsConfig,
        default=default,
        args=rest,
        prog=f"ov3 cache-latents {argv[0]}",
        description=(
            f"Write the frozen VAE's latents (and optionally the encoder's tokens) of a split of "
            f"the `{argv[0]}` preset's data once, for training without the VAE in the loop.\n\n"
            + _model_preset_help()
        ),
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
    if args.format == "diffusers":
        from openvision3.diffusers.export import export_diffusers

        print(export_diffusers(args.checkpoint, args.out, args.weights, args.scheduler))
        return 0
    print(export_checkpoint(args.checkpoint, args.out, args.weights))
    return 0


def cmd_presets(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="ov3 presets",
        description="Print the experiment presets' names, one a line (for ov3 train, demo, "
        "cache-latents); `ov3 train --help` lists them with their summaries.",
    ).parse_args(argv)
    from openvision3.configs import preset_names

    print("\n".join(preset_names()))
    return 0


def cmd_serve(argv: list[str]) -> int:
    _need("web", "ov3 serve")
    from openvision3.web.serve import main as serve_main

    return serve_main(argv)


def _study_summaries() -> dict[str, str]:
    from openvision3.study.command import study_summaries

    return study_summaries()


def cmd_study(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        return _print_choices(
            "ov3 study NAME [--base-preset P] [--model-preset NAME] [--FIELD VALUE ...]",
            "NAME, a study (arms x seeds of the paper's findings)",
            _study_summaries(),
            "`ov3 study NAME --help` lists its options (seeds, run folder, the base experiment's "
            "fields as --base.*).",
            ok=_wants_help(argv),
        )
    _need("train", "ov3 study")
    from openvision3.study.command import main as study_main

    return study_main(argv)


def _group(name: str) -> Callable[[list[str]], int]:
    """``ov3 NAME SUB ...``: dispatch on the first argument through ``COMMANDS[name]``."""

    def run(argv: list[str]) -> int:
        command = COMMANDS[name]
        if argv and argv[0] in command.subcommands:
            return command.subcommands[argv[0]].run(argv[1:])
        return _print_choices(
            f"ov3 {name} {{{','.join(command.subcommands)}}} ...",
            f"{name} commands",
            {f"{sub} {c.args}".strip(): c.summary for sub, c in command.subcommands.items()},
            f"`ov3 {name} COMMAND --help` describes a command's arguments and options.",
            ok=_wants_help(argv[:1]),
        )

    return run


def _lazy(module: str, function: str, *prefix: str, extra: str = "", feature: str = ""):
    """A command that imports ``module`` when it runs and calls ``function(prefix + argv)``."""

    def run(argv: list[str]) -> int:
        import importlib

        if extra:
            _need(extra, feature)
        return getattr(importlib.import_module(module), function)([*prefix, *argv])

    return run


def _inference(name: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from openvision3.inference.command import main as inference_main

        return inference_main(name, argv)

    return run


EVAL = "openvision3.evaluation.command"
EVAL_TASKS = {
    "reconstruction": "rFID, PSNR, SSIM (and LPIPS) of decoded images",
    "zero-shot": "zero-shot classification with class-name prompts (top-1, top-5)",
    "retrieval": "image-text retrieval recall@1/5/10 both ways",
    "captioning": "captions of the captioning head against references (BLEU, METEOR, CIDEr, ...)",
    "linear-probe": "a linear classifier on frozen pooled tokens (top-1)",
    "all": "every task the model and the data allow",
}
COMMANDS: dict[str, Command] = {
    "train": Command(cmd_train, "PRESET [--FIELD VALUE ...]", "train an experiment preset",
                     choices=_summaries),
    "demo": Command(
        cmd_demo, "[--preset P] [--FIELD VALUE ...]",
        "the offline demo: train a small model on synthetic data, evaluate, write a report",
        subcommands={
            "--generation": Command(
                _lazy("openvision3.generation.command", "demo_main"), "[--run DIR]",
                "a DiT-DH on a demo run's frozen tokens, judged in pixels",
            ),
            "--understanding": Command(
                _lazy("openvision3.understanding.command", "demo_main"), "[--run DIR]",
                "a tiny LLaVA on a demo run's frozen tokens, synthetic VQA",
            ),
        },
    ),
    "train-vae": Command(_lazy("openvision3.ov3.command", "train_vae_main", extra="train",
                               feature="ov3 train-vae"),
                         "[--FIELD VALUE ...]", "train the small VAE of the demo"),
    "export": Command(cmd_export, "CHECKPOINT OUT",
                      "a training checkpoint or run -> config.json + model.safetensors "
                      "(--format diffusers: diffusers' layout)"),
    "cache-latents": Command(cmd_cache_latents, "PRESET --out DIR",
                             "write the frozen VAE's latents (and tokens) of a split once",
                             choices=image_presets),
    "presets": Command(cmd_presets, "", "list the experiment presets"),
    "encode": Command(_inference("encode"), "MODEL INPUT --output DIR",
                      "images -> unified tokens (safetensors, npz or webdataset shards)"),
    "reconstruct": Command(_inference("reconstruct"), "MODEL INPUT --output DIR",
                           "images -> tokens -> decoded images"),
    "caption": Command(_inference("caption"), "MODEL INPUT --output DIR",
                       "captions from the captioning head"),
    "classify": Command(_inference("classify"), "MODEL INPUT --output DIR --labels A B ...",
                        "zero-shot labels against the text tower"),
    "latent-stats": Command(_inference("latent-stats"), "MODEL INPUT --output DIR",
                            "per-channel statistics of the tokens (diffusion normalisation)"),
    "sample": Command(_lazy("openvision3.generation.command", "sample_main"),
                      "GENERATOR --out DIR",
                      "class-conditional samples of a generator: PNGs + npz (torchrun-ready)"),
    "eval": Command(
        _group("eval"), "TASK [...]", "evaluations of a model, samples or a VLM",
        subcommands={
            **{task: Command(_lazy(EVAL, "main", task, extra="eval", feature="ov3 eval"),
                             "--model PATH [--FIELD VALUE ...]", doc)
               for task, doc in EVAL_TASKS.items()},
            "generation": Command(
                _lazy("openvision3.generation.command", "eval_main", extra="eval",
                      feature="ov3 eval"),
                "SAMPLES --reference REF", "gFID, IS, precision / recall (k = 3) of samples"),
            "vqa": Command(
                _lazy("openvision3.understanding.command", "main_eval_vqa", extra="eval",
                      feature="ov3 eval"),
                "MODEL QUESTIONS", "exact match / VQA accuracy of a VLM on a JSONL of questions"),
        },
    ),
    "bench": Command(
        _group("bench"), "WHAT [...]", "speed benchmarks",
        subcommands={
            "encode": Command(lambda argv: _inference("bench")(["encode", *argv]),
                              "[--model PATH | --preset P]",
                              "encode throughput against the released recipe"),
            "train": Command(_lazy("openvision3.ov3.bench", "main", extra="train",
                                   feature="ov3 bench train"),
                             "[--preset P]", "training-step speed: images/s, FLOPs, MFU, memory"),
            "generation": Command(_lazy("openvision3.generation.bench", "main"), "[--model M]",
                                  "DiT-DH training step and sampling speed"),
            "vlm": Command(_lazy("openvision3.understanding.bench", "main"), "[--layers N]",
                           "LLaVA stage-2 step (7B-shaped LM, small depth), tower images/s"),
        },
    ),
    "serve": Command(cmd_serve, "[MODEL] [--generator DIR] [--vlm DIR]",
                     "the web demo (Gradio) on this machine"),
    "study": Command(cmd_study, "NAME [--FIELD VALUE ...]",
                     "arms x seeds of the paper's findings -> report.md",
                     choices=_study_summaries),
    "vlm": Command(
        _group("vlm"), "WHAT [...]", "a LLaVA on OpenVision 3 tokens",
        subcommands={
            sub: Command(_lazy("openvision3.understanding.command", "main", sub), args, doc)
            for sub, args, doc in (
                ("build", "--vision EXPORT --llm LM --out DIR",
                 "assemble a LLaVA from an encoder and a language model"),
                ("chat", "MODEL IMAGE QUESTION", "answer one question about one image"),
                ("answer", "MODEL QUESTIONS", "batch-answer a JSONL of questions"),
                ("upgrade", "MODEL", "rewrite an older VLM folder's processor files"),
            )
        },
    ),
}  # fmt: skip


def usage() -> str:
    """``ov3 --help``: the commands of ``COMMANDS`` with their synopses and summaries."""
    rows = []
    for name, command in COMMANDS.items():
        rows.append((f"{name} {command.args}".strip(), command.summary))
        for sub, c in command.subcommands.items() if name == "demo" else ():
            rows.append((f"{name} {sub} {c.args}".strip(), c.summary))
    width = max(len(r[0]) for r in rows) + 2
    lines = "\n".join(f"  {left:<{width}}{right}" for left, right in rows)
    return f"usage: ov3 COMMAND [ARGS]\n\n{DESCRIPTION}\n\ncommands:\n{lines}\n\n{EPILOG}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        if argv and not asked:
            print(f"ov3: unknown command {argv[0]!r}\n", file=sys.stderr)
        print(usage(), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    _setup_logging()
    from openvision3.errors import USER_ERRORS, ConfigError

    try:
        return COMMANDS[argv[0]].run(argv[1:])
    except USER_ERRORS as err:
        if os.environ.get("OV3_DEBUG") == "1":
            raise
        print(f"ov3 {argv[0]}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
