"""``Check`` and the one report format (Markdown and JSON) of the demos and the study."""

import json

import pytest

from openvision3.evaluation.checks import (
    Check,
    all_passed,
    checks_table,
    machine_line,
    write_json,
    write_markdown,
)


def test_compare_decides_each_op_and_leaves_missing_values_undecided():
    assert Check.compare("a", 0.5, ">=", 0.5).passed is True
    assert Check.compare("a", 0.5, ">", 0.5).passed is False
    assert Check.compare("a", 0.4, "<=", 0.5).passed is True
    assert Check.compare("a", 0.6, "<", 0.5).passed is False
    assert Check.compare("a", -0.01, "within", 0.02).passed is True
    assert Check.compare("a", -0.03, "within", 0.02).passed is False
    assert Check.compare("a", None, ">=", 0.5).passed is None
    assert Check.compare("a", float("nan"), ">=", 0.5).passed is None
    with pytest.raises(ValueError, match="op"):
        Check.compare("a", 1.0, "=>", 0.5)
    with pytest.raises(ValueError, match="op"):
        Check("a", 1.0, 0.5, True, op="~")


def test_check_is_frozen_and_passed_is_a_plain_bool():
    import numpy as np

    c = Check("a", 1.0, 0.5, np.bool_(False))
    assert c.passed is False  # numpy's bool_ is neither `is False` nor JSON serialisable
    with pytest.raises(AttributeError):
        c.passed = True
    assert json.dumps(c.to_dict())


def test_all_passed_needs_every_check_and_at_least_one():
    yes, no, undecided = (Check("c", 1.0, 0.0, p) for p in (True, False, None))
    assert all_passed([yes, yes])
    assert not all_passed([yes, no])
    assert not all_passed([yes, undecided])  # inconclusive is not a pass
    assert not all_passed([])


def test_markdown_table_marks_failures_and_escapes_cells(tmp_path):
    checks = [
        Check.compare("zero-shot top-1", 0.1, ">=", 5 / 64, note="5 x chance 0.01562"),
        Check.compare("|a - b| on `rec`", 0.03, "within", 0.02),
        Check("inconclusive one", float("nan"), 0.0, None, "<"),
    ]
    path = write_markdown(
        tmp_path / "report.md",
        "My report",
        ["Command: `ov3 demo`.", machine_line()],
        checks,
        before=["## Before", "", "text before"],
        after=["## After"],
        heading="Learning checks",
    )
    text = path.read_text()
    assert text.startswith("# My report\n\nCommand: `ov3 demo`.\nMachine: ")
    lines = text.splitlines()
    order = [lines.index(h) for h in ("## Before", "## Learning checks", "## After")]
    assert order == sorted(order)
    rows = [ln for ln in lines if ln.startswith("| ")]
    assert rows[0] == "| check | value | target | passed | note |"
    assert rows[1] == "| zero-shot top-1 | 0.1 | >= 0.07812 | yes | 5 x chance 0.01562 |"
    assert rows[2] == r"| \|a - b\| on `rec` | 0.03 | within +- 0.02 | **no** |  |"
    assert rows[3] == "| inconclusive one | n/a | < 0 | undecided |  |"
    assert "All checks passed: **no**." in text
    ok = checks_table([Check.compare("x", 1.0, ">=", 0.5)])
    assert ok[0] == "| check | value | target | passed |"  # no note column without notes
    assert ok[-1] == "All checks passed: **yes**."


def test_json_report_layout_is_strict_json(tmp_path):
    checks = [Check.compare("a", 0.7, ">=", 0.625), Check("b", float("nan"), 0.0, None, "<")]
    extra = {"metrics": {"psnr": float("inf"), "top1": 0.5}, "times": [1.0]}
    out = write_json(tmp_path / "report.json", "T", ["line"], checks, **extra)
    text = (tmp_path / "report.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert loaded == out | {"metrics": {"psnr": None, "top1": 0.5}}
    assert list(loaded)[:4] == ["title", "context", "passed", "checks"]
    assert loaded["passed"] is False
    assert loaded["checks"][0] == {
        "check": "a",
        "value": 0.7,
        "target": 0.625,
        "op": ">=",
        "passed": True,
        "note": "",
    }
    assert loaded["checks"][1]["value"] is None and loaded["checks"][1]["passed"] is None
    with pytest.raises(ValueError, match="passed"):
        write_json(tmp_path / "x.json", "T", [], checks, passed=True)
