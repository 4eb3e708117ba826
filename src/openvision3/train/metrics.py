"""Run logging: ``metrics.jsonl`` always, TensorBoard and Weights & Biases optionally, and a
progress display.

Only rank 0 logs (pass ``enabled=rank == 0``), after the values were reduced across ranks.
Every record carries the optimizer step, the samples seen and the wall-clock time, so curves
can be plotted against either.
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

_RESERVED = ("step", "samples", "time")


def _scalar(name: str, value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)  # numpy -> JSON


def wandb_settings(train, run_name: str, config: dict | None = None) -> dict | None:
    """``wandb.init`` keyword arguments from a ``TrainConfig`` (None when ``train.wandb`` is off).

    Project and run name: the flags, else ``$WANDB_PROJECT`` / ``$WANDB_NAME`` (read by wandb
    itself), else "openvision3" / the run's name. Mode: the flag, else ``$WANDB_MODE``, else
    online; "offline" writes ``run_dir/wandb/`` without network (``wandb sync`` uploads it)."""
    if not train.wandb:
        return None
    settings = {"config": config}
    if train.wandb_project or not os.environ.get("WANDB_PROJECT"):
        settings["project"] = train.wandb_project or "openvision3"
    if train.wandb_name or not os.environ.get("WANDB_NAME"):
        settings["name"] = train.wandb_name or run_name
    if train.wandb_mode:
        settings["mode"] = train.wandb_mode
    return settings


class MetricsLogger:
    """Append one JSON object per :meth:`log` call to ``run_dir/metrics.jsonl``.

    The file is opened in append mode, so a resumed run continues it (records logged after the
    last checkpoint of the interrupted run stay, and are repeated). ``tensorboard=True`` also
    writes event files to ``run_dir/tensorboard`` (the ``tensorboard`` extra). ``wandb``: keyword
    arguments for ``wandb.init`` (``wandb_settings``; the ``wandb`` extra), or None; the run
    writes under ``run_dir/wandb`` and logs the same scalars, at the same step, as the JSONL.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = False,
        enabled: bool = True,
        wandb: dict | None = None,
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        if tensorboard:
            from openvision3.errors import require

            require("tensorboard", "tensorboard", "--train.tensorboard")
            from torch.utils.tensorboard import SummaryWriter  # lazy: optional dependency

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb is not None:
            self._wandb = _start_wandb(Path(run_dir), wandb)

    def log(self, step: int, scalars: dict[str, Any], samples: int | None = None) -> None:
        """Write ``{"step", "samples", "time", **scalars}``; tensors must hold one value."""
        if not self.enabled:
            return
        clash = set(scalars) & set(_RESERVED)
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved")
        values = {k: _scalar(k, v) for k, v in scalars.items()}
        record = {"step": step, "samples": samples, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=step)
            if samples is not None:
                self._tb.add_scalar("samples", samples, global_step=step)
        if self._wandb is not None:
            extra = {} if samples is None else {"samples": samples}
            self._wandb.log({**values, **extra}, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _start_wandb(run_dir: Path, settings: dict):
    """A wandb run writing under ``run_dir/wandb``, resumed when this run directory has one: its
    id is kept in ``run_dir/wandb/run_id`` (a resumed training run continues its W&B run)."""
    from openvision3.errors import require

    wandb = require("wandb", "wandb", "--train.wandb")
    root = run_dir / "wandb"
    root.mkdir(parents=True, exist_ok=True)
    id_file = root / "run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return wandb.init(dir=str(run_dir), id=run_id, resume="allow", **settings)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.jsonl`` (or of ``run_dir/metrics.jsonl``), in file order.

    A truncated last line (the process died mid-write) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


class ProgressBar:
    """Step / total, loss, images/s and ETA.

    A live ``rich`` bar when ``stream`` is a terminal; otherwise (CI, log files) a plain line at
    most every ``interval_s`` seconds, and always for the last step. ``initial`` is the step a
    resumed run starts from, so the ETA only uses the steps timed in this process.
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        enabled: bool = True,
        description: str = "train",
        interval_s: float = 30.0,
        stream: TextIO | None = None,
    ):
        self.total, self.enabled, self.description = total, enabled, description
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stdout
        self._start_step, self._start_time = initial, time.monotonic()
        self._last_print = -math.inf
        self._progress = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._task = self._progress.add_task(
                description, total=total, completed=initial, info=""
            )
            self._progress.start()

    def eta_seconds(self, step: int) -> float:
        """Remaining time from the mean step time since this bar started."""
        done = step - self._start_step
        if done <= 0:
            return math.inf
        return (time.monotonic() - self._start_time) / done * (self.total - step)

    def update(
        self, step: int, loss: float | None = None, images_per_s: float | None = None
    ) -> None:
        """Show progress after optimizer step ``step`` (number of steps done)."""
        if not self.enabled:
            return
        info = []
        if loss is not None:
            info.append(f"loss {loss:.4f}")
        if images_per_s is not None:
            info.append(f"{images_per_s:.1f} img/s")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info="  ".join(info))
            return
        now = time.monotonic()
        if now - self._last_print < self.interval_s and step < self.total:
            return
        self._last_print = now
        parts = [
            f"{self.description} step {step}/{self.total}",
            *info,
            f"eta {_fmt_eta(self.eta_seconds(step))}",
        ]
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
