"""The package's layering, checked on the imports of every file (module level and inside functions):
models/ imports nothing from train/, distributed/, data/, evaluation/, inference/ (the loading
code ``OpenVision3.from_pretrained`` calls is ``openvision3/pretrained.py``, which imports none of
them either); losses/ and data/ import nothing from train/; inference/ never imports
torch.distributed; the engine (train/) and distributed/ serve any model through the Task seam,
so they import no model family, no experiment config and no task; nothing in the package
imports experiments/."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "openvision3"
MODEL_LAYER = (
    "openvision3.train",
    "openvision3.distributed",
    "openvision3.data",
    "openvision3.evaluation",
    "openvision3.inference",
)
RULES = {
    "models": MODEL_LAYER,
    "pretrained.py": MODEL_LAYER,
    "losses": ("openvision3.train",),
    "data": ("openvision3.train",),
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
    root = SRC / package
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
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


def test_rank_and_world_size_come_from_one_place():
    """``distributed/process.py`` holds the only rank / world-size / main-process helpers
    (``get_rank``, ``get_world_size``, ``is_main``, ``is_distributed``); nothing else asks
    ``torch.distributed`` for them."""
    asks = ("dist.get_rank(", "dist.get_world_size(", "dist.is_initialized(")
    home = SRC / "distributed" / "process.py"
    bad = [
        f"{f.relative_to(SRC)}:{n}: {line.strip()} (use openvision3.distributed.process)"
        for f in sorted(SRC.rglob("*.py"))
        if f != home
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if any(a in line for a in asks)
    ]
    assert not bad, "\n".join(bad)
