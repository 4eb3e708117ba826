"""The optional dependency groups (pip extras) and the check a command runs at its entry.

``pip install openvision3`` gives inference (``openvision3.load``, ``ov3 encode`` ...). Training,
evaluation and the downstream systems need an extra; ``require_extra("train", "ov3 train")``
raises ``MissingExtraError``, which ``ov3`` prints as one line naming the extra to install.
``EXTRA_MODULES`` mirrors ``[project.optional-dependencies]`` in pyproject.toml (a test keeps
them equal).
"""

from __future__ import annotations

import importlib.util

from openvision3.errors import MissingExtraError

_EVAL = ("torchmetrics", "torch_fidelity", "scipy", "pycocoevalcap", "lpips", "matplotlib")

# extra -> the import names of the packages it installs
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "eval": _EVAL,
    "train": _EVAL,
    "generation": _EVAL,
    "understanding": ("transformers", "peft"),
    "lmms": ("transformers", "peft", "lmms_eval"),
    "web": ("gradio", "torchmetrics"),
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
}


def require_extra(extra: str, feature: str) -> None:
    """Raise ``MissingExtraError`` naming ``extra`` when one of its packages is not installed.

    Looks the packages up without importing them, so the check costs milliseconds."""
    for module in EXTRA_MODULES[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(extra, module, feature)
