"""Outputs of the ``ov3`` inference commands: atomic, never overwritten, resumable.

A run writes into one output directory, beside an append-only ``progress.jsonl``:
  ``{"done": [keys...], "file": "tokens-00003.safetensors"}``   after those outputs are in place;
  ``{"skipped": key, "error": "..."}``                          for an unreadable input;
  ``{"pending": [names]}``                                       before writing those files.
Each output file is written to a temporary name and renamed, and only then recorded, so a run
killed at any point is continued by running the same command again: recorded keys are skipped,
unrecorded partial work is redone. Existing outputs of another run are never replaced unless
``overwrite`` is set, which clears the previous run first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from openvision3.files import atomic_write, write_json

PROGRESS = "progress.jsonl"
SUMMARY = "summary.json"


class RunDir:
    """An output directory with its progress record.

    ``outputs``: glob patterns of the files this command writes (e.g. ``captions.jsonl``,
    ``tokens-*``); matches without a progress record are another run's results, refused unless
    ``overwrite`` (which deletes them, with every file the previous record names).
    """

    def __init__(self, path: str | os.PathLike, outputs: tuple[str, ...] = (), overwrite=False):
        self.path = Path(path)
        self.overwrite = overwrite
        self.progress = self.path / PROGRESS
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"output {str(self.path)!r} is a file, not a directory")
        if overwrite:
            self._clear(outputs)
        elif not self.progress.exists():
            taken = sorted(p.name for pat in outputs for p in self.path.glob(pat))
            if taken:
                raise FileExistsError(
                    f"{self.path} already holds {taken} from another run; pass --overwrite "
                    "to replace them"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        self.skipped: dict[str, str] = {}
        self.files: list[str] = []
        self.pending: set[str] = set()  # files of a batch cut short: ours to replace
        for rec in self._records():
            if "pending" in rec:
                self.pending.update(rec["pending"])
            elif "done" in rec:
                self.done.update(rec["done"])
                self.files.append(rec.get("file", ""))
            elif "skipped" in rec:
                self.skipped[rec["skipped"]] = rec["error"]
        self.resumed = bool(self.done or self.skipped)
        self.written = 0

    def _records(self) -> list[dict]:
        if not self.progress.exists():
            return []
        records = []
        with open(self.progress, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line cut by a crash: its work is redone
                    break
        return records

    def _clear(self, outputs: tuple[str, ...]) -> None:
        names = {p.name for pat in outputs for p in self.path.glob(pat)} | {SUMMARY}
        for rec in self._records():
            names.update([rec["file"]] if rec.get("file") else rec.get("pending", []))
        for name in names:
            p = self.path / name
            if p.is_file():
                p.unlink()
        if self.progress.exists():
            self.progress.unlink()

    def seen(self, key: str) -> bool:
        """True when ``key`` was written or skipped by this or an earlier (interrupted) run."""
        return key in self.done or key in self.skipped

    def _append(self, rec: dict) -> None:
        with open(self.progress, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record_done(self, keys: list[str], file: str = "") -> None:
        """Record ``keys`` as finished; call after their outputs are in place."""
        self._append({"done": list(keys), "file": file})
        self.done.update(keys)
        self.written += len(keys)

    def record_skipped(self, key: str, error: str) -> None:
        self._append({"skipped": key, "error": error})
        self.skipped[key] = error

    def record_pending(self, names: list[str]) -> None:
        """Announce files about to be written, so a resumed run may replace them."""
        self._append({"pending": list(names)})

    def target(self, name: str) -> Path:
        """Path for a new output file; refuses to replace one unless ``overwrite`` (or it is a
        file announced as pending by an interrupted run of this command)."""
        path = self.path / name
        if path.exists() and not self.overwrite and name not in self.pending:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        return path

    def next_index(self, prefix: str) -> int:
        """First free shard index for ``{prefix}-{index:05d}.*`` (orphans are left untouched)."""
        used = [
            int(p.name[len(prefix) + 1 :].split(".")[0])
            for p in self.path.glob(f"{prefix}-*")
            if p.name[len(prefix) + 1 :].split(".")[0].isdigit()
        ]
        return max(used, default=-1) + 1

    def summary(self, command: str, extra: dict | None = None) -> dict:
        """Write and return ``summary.json``: counts and every skipped input with its error."""
        out = {
            "command": command,
            "written_this_run": self.written,
            "done": len(self.done),
            "skipped": [{"key": k, "error": e} for k, e in sorted(self.skipped.items())],
            "files": [f for f in self.files if f],
            **(extra or {}),
        }
        write_json(self.path / SUMMARY, out)
        return out


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

    def __init__(self, run: RunDir, fmt: str, shard_size: int, dtype: torch.dtype, meta: dict):
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
        name = f"tokens-{self.run.next_index('tokens'):05d}.{_EXT[self.fmt]}"
        atomic_write(self.run.target(name), lambda tmp: self._write(tmp, arrays))
        self.run.record_done(self.keys, name)
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


def webdataset_key(key: str) -> str:
    """An input key as a webdataset ``__key__``. Readers split a member's name at the first dot
    after the last ``/`` (key, then field), so dots are percent-encoded (and ``%`` first):
    ``sub/photo.jpg`` -> ``sub/photo%2Ejpg``; ``urllib.parse.unquote`` gives the key back."""
    return key.replace("%", "%25").replace(".", "%2E")


def read_token_shards(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every safetensors / npz token shard of an output directory -> {key: tokens array}
    (in float32; for tests and quick looks; a trainer reads the shards directly)."""
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
    """Rows appended to ``run.path / name``; on resume, rows not in the progress record
    (written just before a crash) are dropped first, so every key appears exactly once."""

    def __init__(self, run: RunDir, name: str):
        self.run, self.path = run, run.path / name
        if self.path.exists():
            rows = []
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        break
                    if row.get("key") in run.done:
                        rows.append(line if line.endswith("\n") else line + "\n")
            atomic_write(self.path, lambda p: p.write_text("".join(rows), encoding="utf-8"))

    def write(self, rows: list[dict]) -> None:
        """Append rows (each with a ``key``) durably, then record their keys."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        self.run.record_done([r["key"] for r in rows])


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


def save_image(run: RunDir, name: str, image) -> None:
    """Write a PIL image atomically as ``run.path / name`` (format from the extension)."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
    atomic_write(run.target(name), lambda p: image.save(p, format=fmt))
