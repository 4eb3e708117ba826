"""Every config field is read by some code: no flag that is silently ignored.

An AST scan of ``src/openvision3``: for each ``@dataclass`` whose name ends in ``Config``, each
field must be read as an attribute (``cfg.field``) or by name through ``getattr`` somewhere
other than the class's own ``__post_init__`` (validation is not a use). ALLOWED lists the
exceptions, each with its reason.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "openvision3"

# (class, field) -> why it is fine that no code reads it by name. Empty today.
ALLOWED: dict[tuple[str, str], str] = {}


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "dataclass":
            return True
    return False


def _fields(node: ast.ClassDef) -> list[str]:
    out = []
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if "ClassVar" not in ast.unparse(stmt.annotation):
                out.append(stmt.target.id)
    return out


def scan():
    configs: dict[str, list[str]] = {}
    reads: list[tuple[str, str | None]] = []  # (attribute, class whose __post_init__ reads it)
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ClassDef)
                and _is_dataclass(node)
                and node.name.endswith("Config")
            ):
                configs[node.name] = _fields(node)

        def visit(node, owner, cls=None):
            if isinstance(node, ast.ClassDef):
                cls = node.name
            if isinstance(node, ast.FunctionDef):
                owner = cls if node.name == "__post_init__" else None
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                reads.append((node.attr, owner))
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                reads.append((node.args[1].value, owner))
            for child in ast.iter_child_nodes(node):
                visit(child, owner, cls)

        visit(tree, None)
    return configs, reads


def test_no_config_field_is_left_unread():
    configs, reads = scan()
    assert {
        "ExperimentConfig",
        "TrainConfig",
        "StageConfig",
        "OptimConfig",
        "ObjectiveConfig",
    } <= set(configs)
    unread = []
    for cls, fields in configs.items():
        for field in fields:
            if (cls, field) in ALLOWED:
                continue
            if not any(attr == field and owner != cls for attr, owner in reads):
                unread.append(f"{cls}.{field}")
    assert not unread, f"config fields no code reads: {unread}"


def test_the_scan_finds_an_unread_field(tmp_path):
    pkg = tmp_path / "openvision3"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "from dataclasses import dataclass\n@dataclass\nclass XConfig:\n    used: int = 1\n"
        "    ignored: int = 2\n    def __post_init__(self):\n        assert self.ignored >= 0\n"
        "def f(cfg):\n    return cfg.used\n"
    )
    global SRC
    old, SRC = SRC, pkg
    try:
        configs, reads = scan()
    finally:
        SRC = old
    used = {f for f in configs["XConfig"] if any(a == f and o != "XConfig" for a, o in reads)}
    assert used == {"used"}
