"""House rule 1: models/ imports nothing from train/, distributed/, data/, evaluation/;
inference/ never imports torch.distributed; the engine (train/) and distributed/ serve any model
through the Task seam, so they import no model family, no experiment config and no task;
nothing in the package imports experiments/."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "openvision3"
RULES = {
    "models": (
        "openvision3.train",
        "openvision3.distributed",
        "openvision3.data",
        "openvision3.evaluation",
    ),
    "inference": ("torch.distributed", "openvision3.distributed", "openvision3.train"),
    "train": (
        "openvision3.models",
        "openvision3.config",
        "openvision3.configs",
        "openvision3.ov3",
        "openvision3.demo",
        "openvision3.data",
        "openvision3.losses",
        "openvision3.evaluation",
        "openvision3.inference",
    ),
    "distributed": ("openvision3.models", "openvision3.train", "openvision3.ov3"),
}


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_layering(package):
    files = sorted((SRC / package).rglob("*.py"))
    assert files
    bad = [
        (f.name, name)
        for f in files
        for name in imports(f)
        if any(name == p or name.startswith(p + ".") for p in RULES[package])
    ]
    assert not bad, bad


def test_package_never_imports_experiments():
    bad = [
        (f.name, name)
        for f in sorted(SRC.rglob("*.py"))
        for name in imports(f)
        if name == "experiments" or name.startswith("experiments.")
    ]
    assert not bad, bad
