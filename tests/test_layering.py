"""The package's layering, checked on the imports of every file (module level and inside functions):
models/ imports nothing from train/, distributed/, data/, evaluation/, inference/ (nor does the
loading code, ``openvision3/pretrained.py``); losses/ and data/ import nothing from train/; inference/ never imports
torch.distributed; the engine (train/) and distributed/ serve any model through the Task seam,
so they import no model family, no experiment config and no task; nothing in the package
imports experiments/.

The floors: every module imports only its own folder and the floors below it (``FLOORS``); the
three families (``ov3``, ``generation``, ``understanding``) stand side by side and never import
each other; no module reaches itself through the imports of others (imports under
``if TYPE_CHECKING:`` are annotations and do not count)."""

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
        "openvision3.ov3.config",
        "openvision3.configs",
        "openvision3.ov3",
        "openvision3.data",
        "openvision3.losses",
        "openvision3.evaluation",
        "openvision3.inference",
    ),
    "distributed": ("openvision3.models", "openvision3.train", "openvision3.ov3"),
}


# Floor by floor, bottom up: a module of the package (a folder or a top-level file) imports only
# its own and lower floors. The families share a floor and never import each other.
FLOORS = (
    ("errors", "files", "dataclass_io", "wrappers", "tokenizer", "perf", "extras", "artefacts",
     "outputs"),
    ("models", "distributed", "pretrained"),
    ("losses", "train"),
    ("data",),
    ("evaluation",),
    ("inference",),
    ("configs",),
    ("ov3", "generation", "understanding"),
    ("diffusers",),
    ("study",),
    ("web",),
    ("cli",),
)  # fmt: skip
FAMILIES = ("ov3", "generation", "understanding")
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imported for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports(path: Path, names_too: bool = False) -> list[str]:
    """The modules ``path`` imports at run time (module level and inside functions); with
    ``names_too``, ``from a import b`` gives ``a.b`` where b is a module of the package."""
    names = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            modules = [m for m in subs if m in MODULES] if names_too else []
            names += modules if len(modules) == len(subs) else [node.module, *modules]
    return names


def _module(path: Path) -> str:
    parts = ("openvision3", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(f): f for f in SRC.rglob("*.py")}


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``openvision3`` itself left out)."""
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for target in imports(path, names_too=True):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target not in ("", "openvision3", name):
                targets.add(target)
        graph[name] = targets
    return graph


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


def test_every_module_has_a_floor():
    rooms = {_room(m) for m in MODULES} - {""}
    assert rooms <= set(FLOOR), f"give these a floor in FLOORS: {sorted(rooms - set(FLOOR))}"


def test_nothing_imports_a_higher_floor_or_a_sibling_family():
    bad = []
    for name, targets in import_graph().items():
        here = _room(name)
        if not here:
            continue
        for target in targets:
            there = _room(target)
            if there == here:
                continue
            if FLOOR[there] > FLOOR[here] or (here in FAMILIES and there in FAMILIES):
                bad.append(f"{name} -> {target}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    """No module reaches itself through the imports of others (Tarjan's strongly connected
    components of the run-time import graph)."""
    graph, index, low, stack, on_stack, cycles = import_graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_preset_registry_imports_no_family():
    """``configs/`` names each preset's module as a string and imports it when asked."""
    bad = [
        (f.name, name)
        for f in sorted((SRC / "configs").rglob("*.py"))
        for name in imports(f, names_too=True)
        if _room(name) in FAMILIES
    ]
    assert not bad, bad
