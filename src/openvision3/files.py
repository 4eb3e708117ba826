"""Atomic file writes, shared by every package (checkpoints aside: they rename whole folders).

A file is written under a temporary name in its own folder and renamed onto its path, so a
reader (or a run killed half-way) never sees a partial file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp_path)`` then rename onto ``path``; the temporary file never outlives it.

    ``tmp_path`` keeps ``path``'s suffix, for writers that choose a format by suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj, indent: int = 2, **dump_kwargs) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=indent, **dump_kwargs)))
