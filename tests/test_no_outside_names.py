"""The project speaks of itself only: no docstring, comment, doc, script or test names a document
or path outside this repository (design notes, review files, task trackers, a sibling folder).
A citation is the paper (arXiv 2601.15369, section / table) or an upstream file by name."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [
    ROOT / "src" / "openvision3",
    ROOT / "docs",
    ROOT / "scripts",
    ROOT / "tests",
    ROOT / "experiments",
    ROOT / "README.md",
]
THIS_FILE = Path(__file__).resolve()  # it spells the names it looks for
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".sh", ".txt", ".toml", ".json", ".yaml", ".yml", ".cfg"}
OUTSIDE = re.compile(
    r"reference-code|downstream\.md|openvision3\.md|engine-and-style|style\.md"
    r"|\.\./shared|/work/"
    r"|\bthe spec\b|\bspec section|\bspec's\b|\[ref\b(?!\()"
    r"|\bthe issue\b|\bissue's\b|\bhouse (?:rules?|style)\b"
    r"|(?<![\"'])\bsessions?\b(?![\"'])",  # not pytest's scope="session"
    re.IGNORECASE,
)


def scanned_files() -> list[Path]:
    files = []
    for root in SCANNED:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += [p for p in sorted(root.rglob("*")) if p.suffix in TEXT_SUFFIXES]
    return [p for p in files if p.is_file() and p.resolve() != THIS_FILE]


def hits(text: str) -> list[str]:
    return [m.group(0) for m in OUTSIDE.finditer(text)]


def test_the_pattern_catches_what_it_is_for():
    for text in (
        "Widths follow the spec (S 384)",
        "see reference-code.md section 5",
        "python ../shared/perf/anchor_bench.py",
        "targets (the issue's goals)",
        "what the sessions measured",
        "Recipe [ref, OpenVision code; spec section 4]",
        "House rule 1, checked on the imports",
    ):
        assert hits(text), text
    for text in (
        "importlib.util.find_spec(module)",
        "def realism_extractor(spec: str, device)",
        "OpenVision 3 paper, section 2",
        "RAE's stage2/models/DDT.py",
        "a special token",
        '@pytest.fixture(scope="session")',
        "refs = [ref(h + 1), ref(h - 1)]",
    ):
        assert not hits(text), text


def test_no_outside_names_in_the_product():
    files = scanned_files()
    assert len(files) > 50
    bad = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
        for p in files
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if hits(line)
    ]
    assert not bad, "\n".join(bad)
