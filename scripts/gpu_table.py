"""One table from the files ``scripts/gpu_check.sh`` leaves in a folder (docs/performance.md).

    python scripts/gpu_table.py DIR

Reads, each if present: status.tsv (part, exit code, seconds, limit), bench_train_128.json,
bench_train_256.json, bench_encode_256.json, anchor.json, pytest_gpu.xml. Standard library
only; a missing or broken file is reported in its section and the rest still prints.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TRAIN_FILES = {128: "bench_train_128.json", 256: "bench_train_256.json"}


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load(path: Path) -> tuple[dict | None, str]:
    if not path.is_file():
        return None, f"{path.name}: missing"
    try:
        return json.loads(path.read_text()), ""
    except (OSError, ValueError) as err:
        return None, f"{path.name}: unreadable ({err})"


def pct(x) -> str | None:
    return None if x is None else f"{100 * x:.1f}%"


def status_section(folder: Path) -> str:
    path = folder / "status.tsv"
    if not path.is_file():
        return "status.tsv: missing"
    rows = []
    for line in path.read_text().splitlines():
        name, rc, seconds, limit = (line.split("\t") + ["", "", "", ""])[:4]
        state = {"0": "ok", "124": "TIMEOUT", "137": "KILLED (timeout)"}.get(
            rc, f"FAILED (rc {rc})"
        )
        if rc in ("skipped", "missing"):
            state = rc
        rows.append([name, state, seconds, limit])
    return table(["part", "status", "seconds", "limit s"], rows)


def train_sections(runs: dict[int, dict]) -> list[str]:
    out = []
    rows = []
    for res, r in sorted(runs.items()):
        for mode, m in r["modes"].items():
            rows.append(
                [
                    res,
                    mode + ("" if r.get("complete") else " (partial)"),
                    r["batch_size"],
                    m["images_per_s"],
                    m["step_ms"],
                    m["tflop_per_s"],
                    pct(m["mfu"]),
                    m.get("peak_memory_gib"),
                    m.get("first_step_s"),
                    "yes" if m.get("loss_finite") else "NO",
                ]
            )
    heads = ["px", "mode", "batch", "img/s", "step ms", "TFLOP/s", "MFU", "peak GiB"]
    out.append(table(heads + ["1st step s", "finite"], rows))

    cols = [(res, mode) for res, r in sorted(runs.items()) for mode in r["modes"]]
    names = []
    for res, mode in cols:
        for c in runs[res]["modes"][mode]["components"]:
            if c["name"] not in names:
                names.append(c["name"])
    rows = []
    for name in names:
        row = [name]
        for res, mode in cols:
            c = next((c for c in runs[res]["modes"][mode]["components"] if c["name"] == name), None)
            row.append(None if c is None else f"{c['ms']:.1f} ({pct(c['mfu']) or '-'})")
        rows.append(row)
    rows.append(["unattributed"] + [runs[r]["modes"][m]["unattributed_ms"] for r, m in cols])
    gflop = [[r, run["step_gflop_per_image"]] for r, run in sorted(runs.items())]
    out.append(
        "components, ms per batch (MFU); GFLOP per image of the step: "
        + ", ".join(f"{r} px {g}" for r, g in gflop)
        + "\n"
        + table(["component"] + [f"{r} px {m}" for r, m in cols], rows)
    )

    rows = []
    for res, r in sorted(runs.items()):
        for name, t in r.get("targets", {}).items():
            met = {True: "MET", False: "not met", None: "n/a here"}[t.get("met")]
            rows.append([res, name, t["measured"], t["target"], met])
    out.append(table(["px", "target", "measured", "goal", ""], rows))

    hours, basis = {}, []
    for res, r in sorted(runs.items()):
        mode = "fast" if "fast" in r["modes"] else next(iter(r["modes"]))
        for stage, h in r["modes"][mode]["gpu_hours"].items():
            if h is not None:
                hours[stage] = h
                basis.append(f"{stage} from {res} px {mode}")
    rows = [[s, h, round(h / 24, 1)] for s, h in hours.items()]
    if {"pretrain", "finetune"} <= set(hours):
        total = hours["pretrain"] + hours["finetune"]
        rows.append(["paper recipe, total", round(total, 1), round(total / 24, 1)])
    out.append(
        "GPU-hours of the paper's recipe at the measured speed (one GPU's rate x GPUs; "
        + (", ".join(basis) or "no matching run")
        + ")\n"
        + table(["stage", "GPU-hours", "GPU-days"], rows)
    )
    return out


def encode_section(r: dict) -> str:
    rows = [
        [x["path"], x["images_per_s"], x["speedup"], f"{x['rel_error']:.2e}"] for x in r["rows"]
    ]
    head = f"encode, {r['resolution']} px, batch {r['batch_size']}, {r['model']}\n"
    return head + table(["path", "img/s", "speed-up", "rel. error"], rows)


def anchor_section(r: dict) -> str:
    rows, scalars = [], []
    for key, value in r.items():
        if isinstance(value, dict):
            rows.append(
                [key, value.get("img_per_s"), value.get("gflop_per_img"), value.get("tflop_per_s")]
            )
        elif key not in ("device", "torch"):
            scalars.append(f"{key} {value}")
    head = "anchor (independent of our code, same card): " + ", ".join(scalars) + "\n"
    return head + table(["piece", "img/s", "GFLOP/img", "TFLOP/s"], rows)


def pytest_section(path: Path) -> str:
    if not path.is_file():
        return "pytest -m gpu: no report (pytest_gpu.xml missing)"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return f"pytest -m gpu: unreadable report ({err})"
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    a = suite.attrib
    lines = [
        f"pytest -m gpu: {a.get('tests')} tests, {a.get('failures')} failed, "
        f"{a.get('errors')} errors, {a.get('skipped')} skipped, {a.get('time')} s"
    ]
    for case in suite.iter("testcase"):
        bad = case.find("failure")
        bad = bad if bad is not None else case.find("error")
        if bad is not None:
            message = (bad.get("message") or "").splitlines()[:1]
            lines.append(f"  FAILED {case.get('name')}: {' '.join(message)[:160]}")
    return "\n".join(lines)


def render(folder: Path) -> str:
    sections = [status_section(folder)]
    runs, notes = {}, []
    for res, name in TRAIN_FILES.items():
        r, why = load(folder / name)
        if r is not None and r.get("modes"):
            runs[r.get("resolution", res)] = r
        else:
            notes.append(why or f"{name}: no mode finished")
    header = next((r for r in runs.values()), None)
    title = "OpenVision 3 GPU check"
    if header:
        title += f": {header['device']}, torch {header['torch']}, {header['model']}"
        title += (
            f", {header['precision']}, matmul ceiling {header['matmul_ceiling_tflops']} TFLOP/s"
        )
    if runs:
        try:
            sections += train_sections(runs)
        except (KeyError, TypeError, ZeroDivisionError) as err:
            notes.append(f"training tables: unexpected JSON ({err!r})")
    for name, fn in (("bench_encode_256.json", encode_section), ("anchor.json", anchor_section)):
        r, why = load(folder / name)
        if r is None:
            notes.append(why)
            continue
        try:
            sections.append(fn(r))
        except (KeyError, TypeError) as err:
            notes.append(f"{name}: unexpected JSON ({err!r})")
    sections.append(pytest_section(folder / "pytest_gpu.xml"))
    if notes:
        sections.append("notes:\n" + "\n".join(f"  {n}" for n in notes))
    bar = "=" * len(title)
    return f"{bar}\n{title}\n{bar}\n\n" + "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/gpu_table.py DIR")
    print(render(Path(sys.argv[1])), end="")
