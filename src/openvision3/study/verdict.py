"""Verdicts from per-seed final figures, by the rules stated in ``ComparisonConfig``.

Arms share seeds (the same initial weights where the architecture is the same, and the same
samples in the same order), so a comparison is paired: d_s = arm_s - baseline_s per seed, and
the interval is mean(d) +- 2 SE with SE = std(d, ddof=1) / sqrt(n). Fewer than two seeds give
no SE: inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from openvision3.study.config import ClaimConfig, ComparisonConfig

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class Outcome:
    verdict: str
    mean_diff: float
    se: float
    low: float  # mean_diff - 2 SE
    high: float  # mean_diff + 2 SE
    delta: float  # the +- band of a "same" comparison (absolute), else 0
    n: int
    why: str


def compare(arm: list[float], baseline: list[float], rule: ComparisonConfig) -> Outcome:
    """The verdict of one comparison from per-seed values (same seed order in both lists)."""
    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"arm and baseline need one value per seed each, got {a.size}, {b.size}")
    n = a.size
    ok = np.isfinite(a) & np.isfinite(b)
    d = (a - b)[ok]
    delta = rule.delta * abs(float(np.mean(b[ok]))) if rule.direction == "same" and d.size else 0.0
    if d.size < 2:
        nan = float("nan")
        mean = float(d.mean()) if d.size else nan
        why = f"{d.size} finite seed pair(s): no standard error"
        return Outcome(INCONCLUSIVE, mean, nan, nan, nan, delta, n, why)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    low, high = mean - 2 * se, mean + 2 * se
    if rule.direction == "lower":
        verdict = REPRODUCED if high < 0 else NOT_REPRODUCED if low > 0 else INCONCLUSIVE
    elif rule.direction == "higher":
        verdict = REPRODUCED if low > 0 else NOT_REPRODUCED if high < 0 else INCONCLUSIVE
    else:
        inside = -delta < low and high < delta
        outside = low > delta or high < -delta
        verdict = REPRODUCED if inside else NOT_REPRODUCED if outside else INCONCLUSIVE
    band = f" (band +-{delta:.4g})" if rule.direction == "same" else ""
    why = f"diff {mean:+.4g}, 2 SE interval [{low:+.4g}, {high:+.4g}]{band}, {d.size} seeds"
    return Outcome(verdict, mean, se, low, high, delta, n, why)


def combine(verdicts: list[str]) -> str:
    """A claim of several comparisons: reproduced if all are, not reproduced if any is not."""
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def decide(
    claim: ClaimConfig, finals: dict[str, dict[str, list[float]]]
) -> tuple[str, list[Outcome]]:
    """``finals[arm][metric]``: per-seed final values -> (claim verdict, one outcome per rule).

    A metric missing for an arm makes that comparison inconclusive."""
    outcomes = []
    for rule in claim.comparisons:
        a = finals.get(rule.arm, {}).get(rule.metric)
        b = finals.get(rule.baseline, {}).get(rule.metric)
        if a is None or b is None:
            nan = float("nan")
            why = f"`{rule.metric}` not measured for {rule.arm} or {rule.baseline}"
            outcomes.append(Outcome(INCONCLUSIVE, nan, nan, nan, nan, 0.0, 0, why))
            continue
        outcomes.append(compare(a, b, rule))
    return combine([o.verdict for o in outcomes]), outcomes
