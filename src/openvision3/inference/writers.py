"""Output files of the ``ov3`` inference commands: token shards, JSONL rows and images.

Every writer writes through an ``openvision3.outputs.OutputDir`` (the folder's record): each
file is written to a temporary name and renamed, and only then recorded, so a run killed at
any point is continued by running the same command again; files the record does not name are
never replaced without ``--overwrite``. A key written again (its input changed, or it was
skipped before) has one row in a JSONL file, and ``read_token_shards`` returns its latest
tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from openvision3.files import atomic_write
from openvision3.outputs import OutputDir

# ---------------------------------------------------------------------- token shards
TOKEN_FORMATS = ("safetensors", "npz", "webdataset")
_EXT = {"safetensors": "safetensors", "npz": "npz", "webdataset": "tar"}


class TokenShardWriter:
    """Buffers per-image arrays and writes them in shards of about ``shard_size`` images.

    Each shard holds ``tokens`` (B, N, D) or (B, D, h, w) [+ ``pooled`` (B, E)] and the keys:
    safetensors: tensors + ``keys`` (a JSON list) in the metadata; npz: arrays + ``keys``;
    webdataset: one sample per image, ``<wds key>.tokens.npy`` [+ ``.pooled.npy``] and
    ``<wds key>.json`` holding the key (see ``webdataset_key``).
    """

    def __init__(self, run: OutputDir, fmt: str, shard_size: int, dtype: torch.dtype, meta: dict):
        if fmt not in TOKEN_FORMATS:
            raise ValueError(f"format must be one of {TOKEN_FORMATS}, got {fmt!r}")
        if fmt != "safetensors" and dtype == torch.bfloat16:
            raise ValueError(f"bfloat16 needs --format safetensors ({fmt} has no bfloat16)")
        self.run, self.fmt, self.shard_size, self.dtype = run, fmt, shard_size, dtype
        self.meta = {k: str(v) for k, v in meta.items()}
        self.keys: list[str] = []
        self.arrays: dict[str, list[torch.Tensor]] = {}

    def add(self, keys: list[str], arrays: dict[str, torch.Tensor]) -> None:
        """Add a batch: ``arrays`` maps a name to a (B, ...) tensor; flushes full shards."""
        self.keys += keys
        for name, value in arrays.items():
            self.arrays.setdefault(name, []).append(value.detach().to("cpu", self.dtype))
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        arrays = {name: torch.cat(parts) for name, parts in self.arrays.items()}
        name = f"tokens-{next_index(self.run.path, 'tokens'):05d}.{_EXT[self.fmt]}"
        atomic_write(self.run.target(name), lambda tmp: self._write(tmp, arrays))
        self.run.record_done(self.keys, [name])
        self.keys, self.arrays = [], {}

    def _write(self, tmp: Path, arrays: dict[str, torch.Tensor]) -> None:
        if self.fmt == "safetensors":
            from safetensors.torch import save_file

            meta = {**self.meta, "keys": json.dumps(self.keys)}
            save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp), metadata=meta)
        elif self.fmt == "npz":
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, keys=np.array(self.keys), **{k: v.numpy() for k, v in arrays.items()})
        else:
            import webdataset as wds

            with wds.TarWriter(str(tmp)) as sink:
                for i, key in enumerate(self.keys):
                    sample = {"__key__": webdataset_key(key), "json": {**self.meta, "key": key}}
                    sample.update({f"{k}.npy": v[i].numpy() for k, v in arrays.items()})
                    sink.write(sample)


def next_index(folder: Path, prefix: str) -> int:
    """First free shard index for ``{prefix}-{index:05d}.*`` in ``folder``."""
    used = [
        int(p.name[len(prefix) + 1 :].split(".")[0])
        for p in folder.glob(f"{prefix}-*")
        if p.name[len(prefix) + 1 :].split(".")[0].isdigit()
    ]
    return max(used, default=-1) + 1


def webdataset_key(key: str) -> str:
    """An input key as a webdataset ``__key__``. Readers split a member's name at the first dot
    after the last ``/`` (key, then field), so dots are percent-encoded (and ``%`` first):
    ``sub/photo.jpg`` -> ``sub/photo%2Ejpg``; ``urllib.parse.unquote`` gives the key back."""
    return key.replace("%", "%25").replace(".", "%2E")


def read_token_shards(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every safetensors / npz token shard of an output directory -> {key: tokens array}
    (in float32; for tests and quick looks; a trainer reads the shards directly). A key in
    several shards (written again after its input changed) gets its latest tokens: shards are
    numbered in the order they were written."""
    out = {}
    for p in sorted(Path(path).glob("tokens-*")):
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), "pt") as f:
                keys = json.loads(f.metadata()["keys"])
                tokens = f.get_tensor("tokens").float().numpy()
        elif p.suffix == ".npz":
            with np.load(p) as z:
                keys, tokens = list(z["keys"]), z["tokens"].astype(np.float32)
        else:
            continue
        out.update(zip(keys, tokens))
    return out


# ---------------------------------------------------------------------- JSONL and images
class JsonlWriter:
    """Rows (each with a ``key``) in ``run.path / name``, one per key: on resume, rows not in
    the record (written just before a crash) and older rows of a key are dropped first, and a
    key written again replaces its row."""

    def __init__(self, run: OutputDir, name: str):
        self.run, self.name = run, name
        self.path = run.target(name)
        latest: dict[str, str] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        break
                    if row.get("key") in run.done:
                        latest.pop(row["key"], None)  # keep the latest row, in its place
                        latest[row["key"]] = line if line.endswith("\n") else line + "\n"
            self._rewrite(latest)
        self.keys = set(latest)

    def _rewrite(self, rows: dict[str, str]) -> None:
        atomic_write(self.path, lambda p: p.write_text("".join(rows.values()), encoding="utf-8"))

    def write(self, rows: list[dict]) -> None:
        """Append rows durably (after dropping earlier rows of their keys), then record them."""
        again = {r["key"] for r in rows} & self.keys
        if again:
            kept = {}
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    key = json.loads(line)["key"]
                    if key not in again:
                        kept[key] = line
            self._rewrite(kept)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        self.keys.update(r["key"] for r in rows)
        self.run.record_done([r["key"] for r in rows], [self.name])


def image_name(key: str, ext: str) -> str:
    """Output file name for an input key: the key, extension included, then ``.{ext}``
    (``sub/photo.jpg`` -> ``sub/photo.jpg.png``; a webdataset sample ``s0`` -> ``s0.png``).

    Keys are unique within a source, so names are too (``photo.png`` and ``photo.jpg`` do not
    share ``photo.png``), and a rerun finds the same names. Keys that would leave the output
    directory (absolute, or with ``..``) are refused.
    """
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or ".." in parts:
        raise ValueError(f"input key {key!r} does not name a file inside the output directory")
    return f"{key}.{ext}"


def save_image(run: OutputDir, name: str, image) -> None:
    """Write a PIL image atomically as ``run.path / name`` (format from the extension)."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
    atomic_write(run.target(name), lambda p: image.save(p, format=fmt))
