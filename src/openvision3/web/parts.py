"""The optional model parts of ``ov3 serve``: a generator (tab Generate) and a VLM (tab Ask).

Each is loaded through its package's Python API (``openvision3.generation.load_generator``,
``openvision3.understanding.load_vlm``). A part that is not given, whose package or extra is
not installed, or that fails to load becomes ``Part(None, why)``: its tab shows ``why`` and
how to get the part instead of failing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# kind: (display name, package, loader, flag, how to train one, what it does)
KINDS = {
    "generator": (
        "generator",
        "openvision3.generation",
        "load_generator",
        "--generator",
        "ov3 demo --generation",
        "class-conditional image generation on the unified tokens",
    ),
    "vlm": (
        "VLM",
        "openvision3.understanding",
        "load_vlm",
        "--vlm",
        "ov3 demo --understanding",
        "question answering about an image (a language model on the unified tokens)",
    ),
}


class MissingPartError(RuntimeError):
    """A tab's model part is missing; the message says how to get it."""


@dataclass
class Part:
    """A loaded generator or VLM (``model``), or the reason there is none (``why``)."""

    kind: str
    model: Any = None
    why: str = ""

    @classmethod
    def absent(cls, kind: str) -> Part:
        name, _, _, flag, train, what = KINDS[kind]
        return cls(
            kind,
            why=(
                f"No {name} was given. This tab shows {what}: start the app with "
                f"`ov3 serve MODEL {flag} DIR`, where DIR holds a trained {name} "
                f"(`{train}` trains a small one)."
            ),
        )

    def require(self):
        if self.model is None:
            raise MissingPartError(self.why)
        return self.model


def load_part(kind: str, path: str | None, device: str = "cpu") -> Part:
    """``path`` -> ``Part`` with the loaded model, or with the reason it could not load."""
    if not path:
        return Part.absent(kind)
    name, package, loader, flag, train, _ = KINDS[kind]
    if not os.path.exists(path):
        return Part(kind, why=f"{flag} {path!r} does not exist (`{train}` trains one).")
    try:
        import importlib

        load = getattr(importlib.import_module(package), loader)
    except (ImportError, AttributeError) as err:
        # MissingExtraError (an ImportError) already names the pip extra to install.
        why = f"{flag} {path!r}: the {name} needs `{package}.{loader}`, which this install lacks: {err}"
        log.warning(why)
        return Part(kind, why=why)
    try:
        return Part(kind, model=load(path, device=device))
    except Exception as err:  # a broken folder must not take the other tabs down
        why = f"{flag} {path!r} could not be loaded: {type(err).__name__}: {err}"
        log.warning(why)
        return Part(kind, why=why)
