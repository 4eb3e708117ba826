"""Every script in ``experiments/`` still imports against the package and parses ``--help``:
the scripts are not part of the package, so nothing else would notice a moved name."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.py"))


def test_there_are_experiments():
    assert EXPERIMENTS, "experiments/*.py: none found"


@pytest.mark.parametrize("script", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_imports_and_shows_help(script, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(f"experiments_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # run_name is not "__main__": imports, no run
    if not hasattr(module, "main"):
        return
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
