"""Atomic file writes and file digests, shared by every package (checkpoints write their
folders atomically themselves: they rename whole folders).

A file is written under a temporary name in its own folder and renamed onto its path, so a
reader (or a run killed half-way) never sees a partial file. A folder of files (an export) is
written into a temporary sibling folder and moved into place once complete (``staged_folder``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o22)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp_path)`` then rename onto ``path``; the temporary file never outlives it.

    ``tmp_path`` keeps ``path``'s suffix, for writers that choose a format by suffix. The file
    gets the mode a plain ``open`` would give it (0666 less the umask): some writers create
    their file with mode 0600 (safetensors' ``save_file``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj, indent: int = 2, **dump_kwargs) -> None:
    """``obj`` as JSON at ``path``, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=indent, **dump_kwargs)))


@contextlib.contextmanager
def staged_folder(
    path: str | os.PathLike, last: str = "", keep: Callable[[Path], bool] = lambda p: False
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write a folder's files into; once the block
    ends without an error they land in ``path``: by one rename when ``path`` does not exist yet,
    else file by file (each an ``os.replace``, ``last`` after the others: the file a loader
    reads first, so it never names files that are not there yet). Files of ``path`` for which
    ``keep(file)`` is true (a user's own README, say) are never replaced. An error (or a kill)
    inside the block leaves ``path`` as it was; the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this pid's earlier crash
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.rglob("*"):  # the mode a plain open gives (save_file creates 0600)
            if not p.is_dir():
                os.chmod(p, 0o666 & ~_umask())
        if not path.exists():
            os.replace(tmp, path)
            return
        files = sorted(p for p in tmp.rglob("*") if not p.is_dir())
        files.sort(key=lambda p: p.relative_to(tmp).as_posix() == last)  # stable: last at the end
        for src in files:
            dst = path / src.relative_to(tmp)
            if dst.exists() and keep(dst):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
