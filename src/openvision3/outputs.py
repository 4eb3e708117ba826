"""Output folders owned by the command that writes them: the one record every writing command
keeps (``encode``, ``reconstruct``, ``caption``, ``classify``, ``latent-stats``, ``sample``,
``cache-latents``, ``eval``).

A command writes into a folder beside an append-only record (``progress.jsonl``; JSON lines):

  ``{"command": "encode", "options": {...}}``           first: what shapes the outputs;
  ``{"pending": [names]}``                               before writing those files;
  ``{"done": [keys], "files": [names], "stamps": {...}}`` after those outputs are in place;
  ``{"skipped": key, "error": "..."}``                   for an input that could not be used.

Rules, the same for every command:

* a file is replaced only if the record names it (this command wrote it, or announced it before
  a crash); any other file is replaced only with ``--overwrite``;
* the options that shape the outputs (the model, by the size and modification time of its weight
  files; format, resolution, labels, precision, sampler settings, ...) are recorded by the first
  run; a rerun with other options is refused in one line that names them;
* a rerun continues: inputs recorded as done are kept unless their file changed since (size and
  modification time; tar members have no stamp and are kept), skipped inputs are tried again,
  and the latest record of a key is the one that counts.

Each file is written to a temporary name and renamed (``files.atomic_write``), and only then
recorded, so a run killed at any point is continued by running the same command again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from openvision3.errors import ConfigError, DataNotFoundError
from openvision3.files import write_json

RECORD = "progress.jsonl"
SUMMARY = "summary.json"


class NothingWrittenError(DataNotFoundError):
    """Every input left to write failed; the message names the first and its reason."""


class OutputConflictError(ConfigError):
    """An output folder that holds another run's or the user's files; the message names the
    options that differ (or the file) and the two ways out: ``--overwrite`` or another folder."""


def file_stamp(path: str | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns]`` of a regular file (what a rerun compares), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def model_identity(
    path: str, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES, exclude: tuple[str, ...] = ()
) -> str:
    """A model (or a folder of data) as an output option: a folder's files with ``suffixes``
    (but not ``exclude``) by name, size and modification time, digested (never the bytes
    themselves: exports are gigabytes); a file by name, size and time; a hub id as given."""
    p = Path(path)
    if p.is_file():
        return f"{p.name}:{file_stamp(p)}"
    if not p.is_dir():
        return path
    files = sorted(
        f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes and f.name not in exclude
    )
    listing = ";".join(f"{f.relative_to(p).as_posix()}:{file_stamp(f)}" for f in files)
    return f"{len(files)} files, {hashlib.sha256(listing.encode()).hexdigest()[:16]}"


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class OutputDir:
    """An output folder and its record (module docstring).

    ``options``: JSON values that shape the outputs, by the flag's name (``{"format": "npz"}``).
    ``outputs``: glob patterns of this command's files (``tokens-*``); matches in a folder
    without a record are another run's, refused unless ``overwrite``. ``overwrite``: delete
    what the record names (and matches of ``outputs``) and start a new record. ``record``: the
    record's file name (one per writer when several processes share a folder). ``summary``:
    whether the command writes ``summary.json`` (then it is one of its outputs).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        command: str,
        options: dict,
        outputs: tuple[str, ...] = (),
        overwrite: bool = False,
        record: str = RECORD,
        flag: str = "--output",
        summary: bool = True,
    ):
        self.path, self.command, self.overwrite, self.flag = Path(path), command, overwrite, flag
        outputs = (*outputs, SUMMARY) if summary else tuple(outputs)
        self.options = json.loads(json.dumps(options, default=str))  # as it reads back
        self.record = self.path / record
        if self.path.exists() and not self.path.is_dir():
            raise OutputConflictError(f"{flag} {str(self.path)!r} is a file, not a folder")
        self.done: dict[str, list[int] | None] = {}  # key -> its input's stamp when written
        self.skipped: dict[str, str] = {}
        self.owned: set[str] = set()  # files the record names: ours to replace
        self.files: dict[str, None] = {}  # files of done records, in order (an ordered set)
        self.input_stamps: dict[str, list[int] | None] = {}  # of the inputs being written
        self.history: list[dict] = []  # every done record, in order (with a writer's fields)
        header = None
        for rec in self._records():
            if header is None and "options" in rec:
                header = rec
            self._apply(rec)
        if header is not None and not overwrite and self._wrote_nothing():
            # An earlier run that wrote nothing (it failed first, say for missing weights) holds
            # no outputs to protect or mix with: its record gives way to this run's options.
            self._clear(())
            header = None
        if overwrite:
            self._clear(outputs)
        elif header is None:
            taken = sorted(p.name for pat in outputs for p in self.path.glob(pat))
            if self.record.exists():
                raise OutputConflictError(
                    f"{self.path} holds a record of an older version of `ov3 {command}` (no "
                    f"options recorded); pass --overwrite to start again, or another {flag}"
                )
            if taken:
                raise OutputConflictError(
                    f"{self.path} already holds {taken[:5]}, not written by `ov3 {command}`; "
                    f"pass --overwrite to replace them, or another {flag}"
                )
        else:
            self._check(header)
        self.resumed = bool(self.done or self.skipped)
        self.written = 0  # keys recorded done by this run
        self.retried = 0  # of which were skipped, or changed since their output was written
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite or header is None:
            self._append({"command": command, "options": self.options})

    # ------------------------------------------------------------------ the record
    def _records(self) -> list[dict]:
        if not self.record.exists():
            return []
        records = []
        with open(self.record, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:  # a line cut by a crash: its work is redone
                    break
        return records

    def _apply(self, rec: dict) -> None:
        if "pending" in rec:
            self.owned.update(rec["pending"])
        elif "done" in rec:
            stamps = rec.get("stamps", {})
            for key in rec["done"]:
                self.done[key] = stamps.get(key)
                self.skipped.pop(key, None)
            self.history.append(rec)
            files = rec.get("files") or ([rec["file"]] if rec.get("file") else [])
            self.owned.update(files)
            self.files.update(dict.fromkeys(files))
        elif "skipped" in rec:
            self.skipped[rec["skipped"]] = rec["error"]
            self.done.pop(rec["skipped"], None)

    def _append(self, rec: dict) -> None:
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._apply(rec)

    def _wrote_nothing(self) -> bool:
        """No input recorded as done and no file of the record's on disk."""
        return not self.done and not any(
            (self.path / n).exists() for n in self.owned if n != SUMMARY
        )

    def _check(self, header: dict) -> None:
        old, new = header["options"], self.options
        if header.get("command") != self.command:
            raise OutputConflictError(
                f"{self.path} holds the outputs of `ov3 {header.get('command')}`, not of "
                f"`ov3 {self.command}`; pass --overwrite to replace them, or another {self.flag}"
            )
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differ:
            shown = ", ".join(f"{k} {_show(old.get(k))} -> {_show(new.get(k))}" for k in differ)
            raise OutputConflictError(
                f"{self.path} was written with other options ({shown}); pass --overwrite to "
                f"start again, or another {self.flag}"
            )

    def _clear(self, outputs: tuple[str, ...]) -> None:
        names = {p.name for pat in outputs for p in self.path.glob(pat)}
        for name in names | self.owned:
            p = self.path / name
            if p.is_file():
                p.unlink()
        if self.record.exists():
            self.record.unlink()
        self.done, self.skipped, self.owned, self.files, self.history = {}, {}, set(), {}, []

    # ------------------------------------------------------------------ what to do
    def needs(self, key: str, stamp: list[int] | None = None) -> bool:
        """True when ``key`` has no output yet: never done, skipped, or its input changed since
        (``stamp``: the input file's ``file_stamp``; None for tar members: not compared)."""
        if key not in self.done:
            return True
        old = self.done[key]
        return stamp is not None and old is not None and list(stamp) != list(old)

    def claim(self, names: Iterable[str]) -> list[Path]:
        """Announce files about to be written (so a resumed run may replace them); refuses a
        file the record does not name unless ``overwrite``. Returns their paths."""
        names = list(names)
        for name in names:
            path = self.path / name
            if (
                (path.exists() or path.is_symlink())
                and not self.overwrite
                and name not in self.owned
            ):
                raise OutputConflictError(
                    f"{path} exists and was not written by this command; pass --overwrite to "
                    f"replace it, or another {self.flag}"
                )
        fresh = [n for n in names if n not in self.owned]
        if fresh:
            self._append({"pending": fresh})
        return [self.path / n for n in names]

    def target(self, name: str) -> Path:
        """``claim`` one file: its path."""
        return self.claim([name])[0]

    def record_done(
        self, keys: list[str], files: Iterable[str] = (), stamps: dict | None = None, **fields
    ) -> None:
        """Record ``keys`` as written (call after their ``files`` are in place); ``stamps``:
        their inputs' ``file_stamp`` (default: from ``input_stamps``); ``fields``: more JSON
        the writer reads back from ``history``."""
        retried = sum(1 for k in keys if k in self.skipped or k in self.done)
        stamps = self.input_stamps if stamps is None else stamps
        stamps = {k: stamps[k] for k in keys if stamps.get(k) is not None}
        self._append({"done": list(keys), "files": list(files), "stamps": stamps, **fields})
        self.written += len(keys)
        self.retried += retried

    def record_skipped(self, key: str, error: str) -> None:
        self._append({"skipped": key, "error": error})

    def summary(self, extra: dict | None = None) -> dict:
        """Write and return ``summary.json``: counts of this run and in all, the files written,
        and every input that is not written, with its error."""
        out = {
            "command": self.command,
            "written_this_run": self.written,
            "retried_this_run": self.retried,
            "done": len(self.done),
            "skipped": [{"key": k, "error": e} for k, e in sorted(self.skipped.items())],
            "files": [f for f in self.files if (self.path / f).exists()],
            **(extra or {}),
        }
        write_json(self.target(SUMMARY), out)
        return out
