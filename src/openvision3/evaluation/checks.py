"""Pass/fail checks and the one report format of ``ov3 demo`` (and its ``--generation`` and
``--understanding`` parts) and ``ov3 study``.

A ``Check`` compares one measured value with its target. A report is a title, context lines
(command, machine, wall time), free sections before and after the checks, and the checks as one
Markdown table; ``report.json`` holds the same checks under ``checks`` and their conjunction under
``passed``, beside whatever numbers the report's author adds.

``report.json`` layout (every report)::

    {"title": str, "context": [str], "passed": bool,
     "checks": [{"check": name, "value": float | null, "target": float | null, "op": ">=",
                 "passed": true | false | null, "note": str}, ...],
     ...the author's own keys (metrics, references, judge, claims, ...)}
"""

from __future__ import annotations

import math
import operator
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from openvision3.files import atomic_write
from openvision3.files import write_json as _write_json_file

# How a value meets its target. "within": the absolute value is below the target (a band).
OPS = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "within": lambda value, target: abs(value) < target,
}
_SHOWN = {"within": "within +-"}


@dataclass(frozen=True)
class Check:
    """One measured ``value`` against its ``target``.

    ``passed`` is True or False, or None when the measurement cannot decide (a study comparison
    whose interval straddles its threshold, a metric that was not measured); None counts as not
    passed in the report's overall verdict. ``op`` says how the value is meant to meet the target
    (a key of ``OPS``); ``note`` says what the target rests on (a chance level, a baseline) or
    why the verdict is what it is.
    """

    name: str
    value: float | None
    target: float | None
    passed: bool | None
    op: str = ">="
    note: str = ""

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Check {self.name!r}: op {self.op!r} is not one of {list(OPS)}")
        if self.passed is not None and not isinstance(self.passed, bool):
            # numpy's bool_ is not JSON serialisable and `is False` is False for it
            object.__setattr__(self, "passed", bool(self.passed))

    @classmethod
    def compare(
        cls, name: str, value: float | None, op: str, target: float | None, note: str = ""
    ) -> Check:
        """The check ``value op target``; undecided (``passed`` None) when either is missing
        or not finite."""
        if op not in OPS:
            raise ValueError(f"Check {name!r}: op {op!r} is not one of {list(OPS)}")
        known = value is not None and target is not None
        if known and math.isfinite(value) and math.isfinite(target):
            passed = bool(OPS[op](value, target))
        else:
            passed = None
        return cls(name, value, target, passed, op, note)

    def to_dict(self) -> dict:
        return {
            "check": self.name,
            "value": _plain(self.value),
            "target": _plain(self.target),
            "op": self.op,
            "passed": self.passed,
            "note": self.note,
        }


def _plain(x: float | None) -> float | None:
    """A float JSON can hold: NaN and infinities (not JSON) become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def all_passed(checks: Iterable[Check]) -> bool:
    """True when there is at least one check and every one passed (None counts as failed)."""
    checks = list(checks)
    return bool(checks) and all(c.passed is True for c in checks)


def machine_line() -> str:
    """The context line that says where a report's numbers were measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"Machine: {os.cpu_count()} CPU cores, {cpu}{gpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads."
    )


def _number(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: a bare ``|`` would end the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _verdict(passed: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "undecided"}[passed]


def checks_table(checks: Sequence[Check], digits: int = 4) -> list[str]:
    """The checks as a Markdown table (a ``note`` column when any check has a note) and the
    overall line ``All checks passed: **yes**`` / ``**no**``."""
    notes = any(c.note for c in checks)
    head = "| check | value | target | passed |" + (" note |" if notes else "")
    lines = [head, "|---" * (5 if notes else 4) + "|"]
    for c in checks:
        op = _SHOWN.get(c.op, c.op)
        target = f"{op} {_number(c.target, digits)}" if c.target is not None else "n/a"
        row = f"| {_cell(c.name)} | {_number(c.value, digits)} | {target} | {_verdict(c.passed)} |"
        lines.append(row + (f" {_cell(c.note)} |" if notes else ""))
    lines += ["", f"All checks passed: **{'yes' if all_passed(checks) else 'no'}**."]
    return lines


def write_markdown(
    path: str | os.PathLike,
    title: str,
    context: Sequence[str],
    checks: Sequence[Check],
    *,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    heading: str = "Checks",
) -> Path:
    """Write ``# title``, the context lines, ``before``, ``## heading`` with the checks table,
    then ``after`` (Markdown lines) to ``path`` atomically; returns the path."""
    lines = [f"# {title}", "", *context, ""]
    if before:
        lines += [*before, ""]
    lines += [f"## {heading}", "", *checks_table(checks)]
    if after:
        lines += ["", *after]
    text = "\n".join(lines).rstrip("\n") + "\n"
    atomic_write(path, lambda p: p.write_text(text))
    return Path(path)


def report_dict(title: str, context: Sequence[str], checks: Sequence[Check], **extra) -> dict:
    """The ``report.json`` object: title, context, passed, checks, then ``extra``'s keys."""
    clash = {"title", "context", "passed", "checks"} & set(extra)
    if clash:
        raise ValueError(f"report keys {sorted(clash)} are the writer's own")
    return {
        "title": title,
        "context": list(context),
        "passed": all_passed(checks),
        "checks": [c.to_dict() for c in checks],
        **extra,
    }


def write_json(
    path: str | os.PathLike, title: str, context: Sequence[str], checks: Sequence[Check], **extra
) -> dict:
    """Write ``report_dict(...)`` to ``path`` atomically (strict JSON: NaN -> null); returns it."""
    report = report_dict(title, context, checks, **extra)
    _write_json_file(path, _strict(report))
    return report


def _strict(obj):
    """NaN and infinities (Python's json writes them as invalid JSON) -> None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj
