"""An experiment preset plus the command line's dotted overrides, as every command that takes a
preset reads it (``ov3 train``, ``ov3 demo``, ``ov3 cache-latents``, ``ov3 study``), and the
presets' one-line summaries for ``--help``. The family commands import this module, never
``cli.py``."""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
from pathlib import Path

from openvision3.configs.presets import MODULES, get_preset, preset_factory
from openvision3.train.task import RunConfig

MODEL_PRESET_HELP = (
    "--model-preset NAME swaps the whole model for a model preset ({names}) before the other "
    "flags apply; --model.* flags then change it further."
)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse help with each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, "", False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def pop_flag(argv: list[str], flag: str) -> tuple[str, list[str]]:
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


def tyro_config() -> tuple:
    """tyro's settings for experiment configs: optional parts (``model.decoder: DecoderConfig |
    None``) are plain dotted flags, listed by --help and set without first naming a tyro
    subcommand (``--model.decoder.depth 4``)."""
    import tyro

    return (tyro.conf.AvoidSubcommands,)


def model_preset_names() -> str:
    from openvision3.models.presets import PRESETS as MODEL_PRESETS

    return ", ".join(sorted(MODEL_PRESETS))


def given_flags(argv: list[str]) -> set[str]:
    """The dotted fields set on the command line, spelt ``--a.b-c`` (tyro takes ``_`` or ``-``)."""
    return {"--" + a[2:].split("=", 1)[0].replace("_", "-") for a in argv if a.startswith("--")}


def parse_experiment(preset: str, argv: list[str], prog: str, more_help: str = "") -> RunConfig:
    """The preset, ``--model-preset``, then tyro's dotted overrides; settled by what the command
    line left open (``RunConfig.after_command_line``) and validated after them."""
    import tyro

    model_preset, argv = pop_flag(argv, "--model-preset")
    default = get_preset(preset, model_preset)
    description = "\n\n".join(
        t for t in (preset_doc(preset), MODEL_PRESET_HELP.format(names=model_preset_names()),
                    more_help) if t
    )  # fmt: skip
    cfg = tyro.cli(
        type(default),  # the preset's run config: it names its task (train/task.py)
        default=default,
        args=argv,
        prog=prog,
        description=description,
        config=tyro_config(),
    )
    cfg.validate()
    cfg.after_command_line(given_flags(argv))
    return cfg


def default_demo_preset() -> str:
    """``demo_gpu`` where CUDA is available, else the CPU-sized ``demo``."""
    import torch

    return "demo_gpu" if torch.cuda.is_available() else "demo"


def _first_sentence(text: str) -> str:
    text = " ".join(text.split()).replace("``", "`")
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


@functools.cache
def _source_docs(module: str) -> dict[str, str]:
    """Function name -> docstring of a module, read without importing it (a family's presets
    module may import transformers: seconds, for a help text)."""
    path = Path(importlib.util.find_spec(module).origin)
    tree = ast.parse(path.read_text())
    return {
        node.name: ast.get_docstring(node) or ""
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }


def preset_doc(name: str) -> str:
    """An experiment preset's docstring; a smoke variant's names the preset it shrinks."""
    base = name.removesuffix("_smoke")
    if name not in MODULES:
        preset_factory(name)  # raises the one-line error naming the presets
    doc = _source_docs(MODULES[name]).get(name, "")
    if not doc and base != name:
        return f"`{base}` shrunk for tests: a tiny model, a few steps, synthetic data. " + (
            preset_doc(base)
        )
    return " ".join(doc.split()).replace("``", "`")


def preset_summaries() -> dict[str, str]:
    """Experiment preset -> the first sentence of its docstring."""
    return {name: _first_sentence(preset_doc(name)) for name in MODULES}
