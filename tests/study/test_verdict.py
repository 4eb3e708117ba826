"""The verdict rules on synthetic per-seed figures and curves whose answer is known."""

import json

import numpy as np
import pytest

from openvision3.study.config import ClaimConfig, ComparisonConfig
from openvision3.study.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    combine,
    compare,
    decide,
)

BASE = [1.00, 1.10, 0.90]


def shifted(diffs):
    return [b + d for b, d in zip(BASE, diffs)]


@pytest.mark.parametrize(
    "diffs, direction, expected",
    [
        ([-0.20, -0.21, -0.19], "lower", REPRODUCED),  # clearly lower on every seed
        ([+0.20, +0.21, +0.19], "lower", NOT_REPRODUCED),  # clearly higher
        ([-0.20, +0.25, 0.00], "lower", INCONCLUSIVE),  # interval straddles 0
        ([+0.20, +0.21, +0.19], "higher", REPRODUCED),
        ([-0.20, -0.21, -0.19], "higher", NOT_REPRODUCED),
        ([+0.10, -0.30, +0.25], "higher", INCONCLUSIVE),
    ],
)
def test_directional_rules(diffs, direction, expected):
    rule = ComparisonConfig("m", "a", "b", direction)
    assert compare(shifted(diffs), BASE, rule).verdict == expected


@pytest.mark.parametrize(
    "diffs, expected",
    [
        ([0.01, -0.01, 0.00], REPRODUCED),  # interval inside +-0.1 (10% of mean 1.0)
        ([0.30, 0.31, 0.29], NOT_REPRODUCED),  # interval wholly beyond +delta
        ([-0.30, -0.31, -0.29], NOT_REPRODUCED),  # wholly beyond -delta
        ([0.09, 0.00, 0.18], INCONCLUSIVE),  # mean inside, interval crosses +delta
    ],
)
def test_no_effect_rule_uses_the_interval_not_the_mean(diffs, expected):
    rule = ComparisonConfig("m", "a", "b", "same", delta=0.10)
    out = compare(shifted(diffs), BASE, rule)
    assert out.delta == pytest.approx(0.1 * np.mean(BASE))
    assert out.verdict == expected


def test_interval_is_paired_two_standard_errors():
    diffs = [-0.1, -0.2, -0.3]
    out = compare(shifted(diffs), BASE, ComparisonConfig("m", "a", "b", "lower"))
    se = np.std(diffs, ddof=1) / np.sqrt(3)
    assert out.mean_diff == pytest.approx(-0.2)
    assert (out.low, out.high) == pytest.approx((-0.2 - 2 * se, -0.2 + 2 * se))
    # Unpaired, the seed-to-seed spread of BASE (0.1) would swamp this; paired it does not.
    assert out.verdict == REPRODUCED


def test_one_seed_or_missing_metric_is_inconclusive():
    rule = ComparisonConfig("m", "a", "b", "lower")
    assert compare([0.0], [5.0], rule).verdict == INCONCLUSIVE
    verdict, (out,) = decide(ClaimConfig("c", "", [rule]), {"a": {"m": [1, 2]}, "b": {}})
    assert verdict == INCONCLUSIVE and "not measured" in out.why


def test_claim_of_several_comparisons():
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]) == NOT_REPRODUCED


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="direction"):
        ComparisonConfig("m", "a", "b", "smaller")
    with pytest.raises(ValueError, match="delta"):
        ComparisonConfig("m", "a", "b", "same")


# ------------------------------------------------------------------ synthetic curves, end to end
def _write_run(run, curve: dict[str, list[float]], steps: list[int]):
    """A finished run folder: metrics.jsonl with eval/ rows per step, results.json = last."""
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for i, step in enumerate(steps):
            f.write(
                json.dumps(
                    {"step": step, "samples": step, **{f"eval/{k}": v[i] for k, v in curve.items()}}
                )
                + "\n"
            )
    final = {k: v[-1] for k, v in curve.items()}
    (run / "results.json").write_text(json.dumps({"metrics": final}))


def test_report_from_synthetic_curves(tmp_path):
    """Curves with known effects: und-only's contrastive falls well below frozen-init's
    (control reproduced), claim 1 has no effect (inconclusive), claim 2 goes the wrong way
    (not reproduced), claim 3 stays within 2% (reproduced), claim 4 both parts hold."""
    from openvision3.study.runner import run_study
    from openvision3.study.studies import paper_small_smoke

    study = paper_small_smoke()
    study.run_dir = str(tmp_path / "study")
    study.realism.kind = "none"
    steps = [2, 4]
    rng = np.random.default_rng(0)
    level = {  # arm -> final value per metric (before per-seed noise)
        "frozen-init": dict(rec=1.0, contrastive=3.0, psnr=20.0, realism_fd=1.0),
        "und-only": dict(rec=1.0, contrastive=1.5, psnr=20.0, realism_fd=1.0),
        "rec-only": dict(rec=0.5, contrastive=3.02, psnr=25.0, realism_fd=0.5),
        "both": dict(rec=0.7, contrastive=1.4, psnr=24.0, realism_fd=0.5),
        "pixel-vit": dict(rec=0.6, contrastive=1.6, psnr=27.0, realism_fd=2.0),
    }
    for seed in study.seeds:
        seed_offset = rng.normal(0, 0.2)  # shared by every arm of a seed: pairing removes it
        for arm, finals in level.items():
            noise = rng.normal(0, 0.002, size=len(finals)) if arm != "und-only" else np.zeros(4)
            curve = {
                k: [v * 1.5 + seed_offset, v + seed_offset + e]
                for (k, v), e in zip(finals.items(), noise)
            }
            _write_run(tmp_path / "study" / arm / f"seed{seed}", curve, steps)
    # claim 1 "no effect": und-only's rec equals frozen-init's up to noise of either sign
    for seed, e in zip(study.seeds, (0.01, -0.01, 0.0)):
        p = tmp_path / "study" / "und-only" / f"seed{seed}" / "results.json"
        res = json.loads(p.read_text())
        frozen = json.loads(
            p.parent.parent.parent.joinpath(
                "frozen-init", f"seed{seed}", "results.json"
            ).read_text()
        )
        res["metrics"]["rec"] = frozen["metrics"]["rec"] + e
        p.write_text(json.dumps(res))
    report = run_study(study, report_only=True)
    out = json.loads((report.parent / "report.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in out["claims"]}
    assert out["control"]["verdict"] == REPRODUCED
    assert verdicts == {
        "claim 1": INCONCLUSIVE,
        "claim 2": NOT_REPRODUCED,
        "claim 3": REPRODUCED,
        "claim 4": REPRODUCED,
    }
    # One check per comparison, the control first: reproduced passes, inconclusive is undecided.
    passed = [(c["check"], c["passed"]) for c in out["checks"]]
    assert passed == [
        ("positive control", True),
        ("claim 1", None),
        ("claim 2", False),
        ("claim 3", True),
        ("claim 4", True),
        ("claim 4", True),
    ]
    assert out["passed"] is False
    text = report.read_text()
    assert "## Verdicts" in text and "| claim 1 | 0 | < 0 | undecided |" in text
    for fig in ("claim1.png", "claim2.png", "claim3.png", "claim4.png", "control.png"):
        assert (report.parent / fig).is_file() and fig in text
    assert "## Rules" in text and "**underpowered**" not in text
    assert (report.parent / "study.json").is_file()
