"""``results.json`` and ``report.md`` (tables and PNG plots) for an ``ov3 eval`` run.

Plots use matplotlib's Agg backend (no display). Called on rank 0 only.
"""

from __future__ import annotations

import csv
import json
import math
import os

from openvision3.files import atomic_write, write_json

MAX_BAR_CLASSES = 100  # a per-class bar plot past this is unreadable


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot():
    from openvision3.errors import require

    matplotlib = require("matplotlib", "eval", "the report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    _pyplot().close(fig)
    return name


def psnr_histogram(csv_path: str, out_dir: str) -> str | None:
    """PSNR histogram of the per-image CSV; the PNG's file name, or None without finite rows."""
    with open(csv_path, newline="") as f:
        values = [float(r["psnr"]) for r in csv.DictReader(f)]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=min(30, max(5, len(values) // 4)), color="tab:blue")
    ax.set(xlabel="PSNR (dB)", ylabel="images", title="Per-image PSNR")
    return _save(fig, out_dir, "psnr_hist.png")


def per_class_bars(per_class: dict[str, float], out_dir: str) -> str | None:
    per_class = {k: v for k, v in per_class.items() if not math.isnan(v)}  # classes with images
    if not per_class or len(per_class) > MAX_BAR_CLASSES:
        return None
    plt = _pyplot()
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(names)), 3.5))
    ax.bar(range(len(names)), list(per_class.values()))
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="top-1", title="Zero-shot accuracy per class")
    return _save(fig, out_dir, "zero_shot_per_class.png")


def recall_bars(metrics: dict, out_dir: str) -> str | None:
    keys = [k for k in metrics if k.startswith(("i2t_r", "t2i_r"))]
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(
        keys,
        [metrics[k] for k in keys],
        color=["tab:blue" if k[0] == "i" else "tab:orange" for k in keys],
    )
    ax.set(ylim=(0, 1), ylabel="recall", title="Retrieval recall@k")
    return _save(fig, out_dir, "retrieval.png")


def l2_curve(holdout: dict[str, float], out_dir: str) -> str | None:
    if not holdout:
        return None
    plt = _pyplot()
    l2 = [float(k) for k in holdout]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(len(l2)), list(holdout.values()), marker="o")
    ax.set_xticks(range(len(l2)), [f"{v:g}" for v in l2])
    ax.set(xlabel="L2", ylabel="held-out top-1", title="Linear probe: L2 selection")
    return _save(fig, out_dir, "linear_probe_l2.png")


def _section(task: str, out: dict, out_dir: str) -> list[str]:
    metrics = out["metrics"]
    lines = [f"## {task}", "", _table(list(metrics.items()), ("metric", "value")), ""]
    images = [f for f in out.get("files", []) if f.endswith(".png")]
    if task == "reconstruction":
        images.append(psnr_histogram(os.path.join(out_dir, "reconstruction.csv"), out_dir))
        lines += ["Per-image numbers: `reconstruction.csv`. Grid: best (top) and worst (bottom) "
                  "by PSNR, originals over reconstructions.", ""]  # fmt: skip
    elif task == "zero-shot":
        images.append(per_class_bars(out.get("per_class", {}), out_dir))
    elif task == "retrieval":
        images.append(recall_bars(metrics, out_dir))
    elif task == "linear-probe":
        images.append(l2_curve(metrics.get("holdout_top1", {}), out_dir))
    elif task == "captioning" and out.get("samples"):
        rows = [(s["key"], s["generated"], s["reference"]) for s in out["samples"]]
        lines += [_table(rows, ("key", "generated", "reference")), ""]
    lines += [f"![{task}]({name})" for name in images if name] + [""]
    settings = json.dumps(out.get("settings", {}), indent=2, default=str)
    lines += [
        "<details><summary>settings</summary>",
        "",
        "```json",
        settings,
        "```",
        "</details>",
        "",
    ]
    return lines


def _json_safe(tree):
    """A copy with NaN floats as None (JSON has no NaN)."""
    if isinstance(tree, dict):
        return {k: _json_safe(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_json_safe(v) for v in tree]
    return None if isinstance(tree, float) and math.isnan(tree) else tree


def write_report(results: dict, out_dir: str) -> None:
    """Write ``results.json`` and ``report.md`` (with PNGs) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "results.json"), _json_safe(results), default=str)
    model, data = results["model"], results["data"]
    lines = [
        "# Evaluation report",
        "",
        f"Model `{model['path']}` ({model.get('config_name') or 'unnamed config'}, "
        f"{model.get('parameters', 0):,} parameters); data: `{data.get('name')}` "
        f"({data.get('source', 'pairs')}, split {data.get('split', data.get('pairs_split'))}); "
        f"resolution {results['config']['resolution']}, resize {data.get('resize')}; "
        f"{results['environment']['world_size']} rank(s). Every number and setting: `results.json`.",
        "",
    ]
    # The flat names, as the trainer logs them (eval/<name>).
    summary = [
        (k, v)
        for k, v in results["metrics"].items()
        if not isinstance(v, dict) and not k.endswith("_count")
    ]
    lines += ["## Summary", "", _table(summary, ("metric", "value")), ""]
    if results["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{t} ({r})" for t, r in results["skipped"].items()), ""]
    for task, out in results["tasks"].items():
        lines += _section(task, out, out_dir)
    report = "\n".join(lines)
    atomic_write(os.path.join(out_dir, "report.md"), lambda p: p.write_text(report))
