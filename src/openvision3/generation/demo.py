"""``ov3 demo --generation``: class-conditional generation on a finished demo's frozen tokens.

1. Cache the frozen demo encoder's 8x8x192 tokens (128 px) of 4096 train and 512 val scenes
   in the run's shared token cache (``<run>/tokens``, also the understanding demo's), no flips
   (a flip would move the cell), each labelled with its main (largest) object's colour x grid
   cell: 8 x 9 = 72 classes. Shape is left out of the label: the demo tokens
   carry colour and cell well and shape poorly (``docs/demo-learning.md``), so a generator on
   them cannot do better on shape.
2. Train DiT-DH-demo (``presets.demo_generation``) on them with the generation task.
3. Sample 2 images per class: guided (CFG), conditional without guidance (w = 1) and
   unconditional (the null class); decode through the frozen OpenVision 3 decoder and VAE.
4. Score with a pixel judge that does not use OpenVision 3 (nearest palette colour per pixel;
   the main colour is the object colour with most pixels, its cell the centroid of that
   colour's largest connected component), on real val images, OV3 reconstructions, each
   sample set, and the guided samples against a random wrong label (the chance control).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from openvision3.data.synthetic.tokens import (
    NUM_COLOR_CELLS,
    cache_demo_tokens,
    color_cell,
    run_tokens,
    run_world,
)
from openvision3.data.synthetic.world import BACKGROUNDS, CELL_NAMES, COLORS, SyntheticWorld
from openvision3.data.transforms import to_uint8, write_grid
from openvision3.evaluation.checks import Check, write_json, write_markdown
from openvision3.generation import flow

log = logging.getLogger(__name__)

COLOR_NAMES = list(COLORS)
NUM_CLASSES = NUM_COLOR_CELLS  # 72
CLASS_NAMES = [f"{c} {cell}" for c in COLOR_NAMES for cell in CELL_NAMES]
RESOLUTION = 128
PALETTE = np.array(list(COLORS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)
REJECT = 60.0  # RGB distance beyond which a pixel matches no palette colour
CHANCE = {"color": 1 / len(COLOR_NAMES), "cell": 1 / len(CELL_NAMES)}
GATES = {"color": 5 * CHANCE["color"], "cell": 3 * CHANCE["cell"]}  # 0.625, 0.333
TUNE_SCALES = (2.0, 4.0, 6.0)  # CFG scales tried on their own samples (seed 2) when none is given


def judge(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, H, W, 3) -> (colour index (B,), cell (B,)); -1 where no object colour is seen."""
    from scipy import ndimage

    b, h, w, _ = images.shape
    d = ((images[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)  # (B, H, W, 13)
    nearest, dist = d.argmin(-1), np.sqrt(d.min(-1))
    nearest[dist > REJECT] = -1
    colors, cells = np.full(b, -1), np.full(b, -1)
    for i in range(b):
        counts = np.bincount(nearest[i][nearest[i] >= 0], minlength=len(PALETTE))
        counts = counts[: len(COLOR_NAMES)]
        if counts.max() == 0:
            continue
        c = int(counts.argmax())
        parts, n = ndimage.label(nearest[i] == c)
        sizes = np.bincount(parts.ravel())[1:]
        ys, xs = np.nonzero(parts == 1 + int(sizes.argmax()))
        row, col = min(int(ys.mean() * 3 / h), 2), min(int(xs.mean() * 3 / w), 2)
        colors[i], cells[i] = c, 3 * row + col
    return colors, cells


def score(images: np.ndarray, labels: np.ndarray) -> dict:
    colors, cells = judge(images)
    return {
        "color": float((colors == labels // len(CELL_NAMES)).mean()),
        "cell": float((cells == labels % len(CELL_NAMES)).mean()),
        "n": len(labels),
    }


def pixels(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), the judge's layout (``to_uint8``: rounded)."""
    return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()


def grid_image(images: np.ndarray, path: Path) -> None:
    """One image per class (B = 72, in class order) -> an 8 x 9 grid (colour rows, cell cols)."""
    write_grid(images[: len(COLOR_NAMES) * len(CELL_NAMES)], path, cols=len(CELL_NAMES), pad=2)


def token_generator_config(
    cache: str, decoder: str, run_dir: str, steps: int = 0, batch_size: int = 0, seed: int = 0
):
    """``presets.demo_generation`` (72 colour x cell classes) sized to the tokens of ``cache``
    (a demo token cache: another model's tokens have another shape), decoding through the
    OpenVision 3 export ``decoder``; ``steps`` / ``batch_size`` 0 keep the preset's (a new batch
    keeps its peak LR)."""
    from openvision3.data.latents import read_cache_meta
    from openvision3.generation.presets import demo_generation

    cfg = demo_generation()
    cfg.run_dir, cfg.decoder, cfg.class_names = run_dir, decoder, CLASS_NAMES
    cfg.data.cache = cache
    n, d = read_cache_meta(cache, "train")["tokens"]["shape"]
    cfg.model.in_channels, cfg.model.input_size = d, math.isqrt(n)
    if d * n < flow.SHIFT_BASE:
        cfg.flow.shift = 1.0  # RAE's shift is >= 1
    stage = cfg.train.stages[0]
    if steps:
        stage.steps, stage.warmup_steps = steps, min(stage.warmup_steps, steps)
    if batch_size:
        stage.batch_size = batch_size  # the same peak LR at any batch
    cfg.train.seed = seed
    return cfg


def tune_scale(gen, scales, sample_steps: int) -> tuple[float, dict]:
    """The CFG scale among ``scales`` whose samples (one per class, noise seed 2: not the
    reported samples' seed 1) score best on the judge's worse gate ratio, min(colour / 0.625,
    cell / 0.333); returns (scale, {scale: score})."""
    labels = torch.arange(NUM_CLASSES)
    scores = {}
    for w in scales:
        r = score(
            pixels(gen.sample(labels, cfg_scale=w, steps=sample_steps, seed=2)), labels.numpy()
        )
        scores[w] = {**r, "ratio": min(r["color"] / GATES["color"], r["cell"] / GATES["cell"])}
    return max(scales, key=lambda w: scores[w]["ratio"]), scores


def run_generation_demo(
    run: str, out: str = "", steps: int = 0, cfg_scale: float = 0.0, sample_steps: int = 21,
    per_class: int = 2, train_size: int = 4096, val_size: int = 512,
) -> dict:  # fmt: skip
    """The whole demo on a finished ``ov3 demo`` run directory; returns the report dict and
    writes ``generation/report.md``, ``report.json`` and ``samples_grid.png`` under ``out``
    (default ``<run>/generation``). ``cfg_scale`` 0: tuned over ``TUNE_SCALES``
    (``tune_scale``)."""
    from openvision3.generation.pipeline import load_generator
    from openvision3.pretrained import load_pretrained
    from openvision3.train.trainer import Trainer

    start = time.perf_counter()
    final = os.path.join(run, "final")
    out = Path(out or os.path.join(run, "generation"))
    out.mkdir(parents=True, exist_ok=True)
    synthetic = run_world(run)
    model = load_pretrained(final, device="cpu")
    times = {}

    t0 = time.perf_counter()
    cache = cache_demo_tokens(model, synthetic, run_tokens(run), RESOLUTION, train_size, val_size)
    world = SyntheticWorld(synthetic.seed)
    times["cache_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = token_generator_config(cache, final, str(out / "run"), steps)
    if not (out / "run" / "final" / "model.safetensors").exists():
        Trainer(cfg).fit()
    times["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen = load_generator(str(out / "run" / "final"), device="cpu")
    tuning = {}
    if not cfg_scale:
        cfg_scale, tuning = tune_scale(gen, TUNE_SCALES, sample_steps)
    times["tune_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels = torch.arange(NUM_CLASSES).repeat(per_class)
    rng = np.random.default_rng(0)
    wrong = (labels.numpy() + rng.integers(1, NUM_CLASSES, len(labels))) % NUM_CLASSES
    null = torch.full_like(labels, NUM_CLASSES)
    sets = {}
    for name, lab, w in (("cfg", labels, cfg_scale), ("w1", labels, 1.0), ("w0", null, 1.0)):
        sets[name] = pixels(gen.sample(lab, cfg_scale=w, steps=sample_steps, seed=1))
    times["sample_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    val = [world.sample("val", i, RESOLUTION) for i in range(min(val_size, 256))]
    real = np.stack([s["image"] for s in val])
    val_labels = np.array([color_cell(world, s["key"]) for s in val])
    x = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        recon = pixels(model.reconstruct(x).float())
    lab = labels.numpy()
    table = {
        "real val images": score(real, val_labels),
        "OV3 reconstructions": score(recon, val_labels),
        f"CFG samples (w = {cfg_scale:g})": score(sets["cfg"], lab),
        "conditional samples (w = 1)": score(sets["w1"], lab),
        "unconditional samples (w = 0)": score(sets["w0"], lab),
        "CFG samples vs a wrong label": score(sets["cfg"], wrong),
    }
    grid_image(sets["cfg"][:NUM_CLASSES], out / "samples_grid.png")
    times["judge_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - start
    extra = {
        "judge": table,
        "times": times,
        "cfg_scale": cfg_scale,
        "tuning": {f"{w:g}": v for w, v in tuning.items()},
        "sample_steps": sample_steps,
        "train_steps": cfg.train.stages[0].steps,
    }
    return write_report(out, demo_checks(table, cfg_scale), extra)


def demo_checks(table: dict, cfg_scale: float) -> list[Check]:
    """The judge's scores (``table``: image set -> colour and cell accuracy) against the gates:
    guided samples well above chance, samples against a wrong label or without one near it."""
    guided = table[f"CFG samples (w = {cfg_scale:g})"]
    checks = [
        Check.compare("CFG colour >= 5x chance", guided["color"], ">=", GATES["color"]),
        Check.compare("CFG cell >= 3x chance", guided["cell"], ">=", GATES["cell"]),
    ]
    for name in ("CFG samples vs a wrong label", "unconditional samples (w = 0)"):
        for k in ("color", "cell"):
            checks.append(
                Check.compare(f"{name}: {k} <= 2x chance", table[name][k], "<=", 2 * CHANCE[k])
            )
    return checks


def write_report(out: Path, checks: list[Check], extra: dict) -> dict:
    """Write ``report.json`` (the checks beside ``extra``: judge, times, cfg_scale, tuning,
    sample_steps, train_steps) and ``report.md`` under ``out``; returns the JSON's dict."""
    title, context = "Generation demo: DiT-DH on the frozen demo tokens", report_context(extra)
    report = write_json(out / "report.json", title, context, checks, **extra)
    write_markdown(
        out / "report.md", title, context, checks, before=judge_section(extra),
        after=["Guided samples, one per class (rows: colours; columns: cells):", "",
               "![samples](samples_grid.png)"],
    )  # fmt: skip
    return report


def report_context(r: dict) -> list[str]:
    """The report's context line: classes, chance, steps and wall times."""
    t = r["times"]
    return [
        f"Class = main object colour x grid cell ({NUM_CLASSES} classes; chance "
        f"{CHANCE['color']:.3f} colour, {CHANCE['cell']:.3f} cell). "
        f"{r['train_steps']} training steps; Euler on {r['sample_steps']} shifted grid points. "
        f"Wall time {t['total_s'] / 60:.1f} min (cache {t['cache_s']:.0f} s, train "
        f"{t['train_s']:.0f} s, CFG tuning {t.get('tune_s', 0):.0f} s, sample "
        f"{t['sample_s']:.0f} s, judge {t['judge_s']:.0f} s)."
    ]


def judge_section(r: dict) -> list[str]:
    """The judge's table: colour and cell accuracy of each image set, and the CFG tuning."""
    lines = ["## Pixel judge", "", "| images | n | colour | cell |", "|---|---|---|---|"]
    lines += [
        f"| {k} | {v['n']} | {v['color']:.3f} | {v['cell']:.3f} |" for k, v in r["judge"].items()
    ]
    if r.get("tuning"):
        tried = ", ".join(
            f"w = {w}: {v['color']:.3f} / {v['cell']:.3f}" for w, v in r["tuning"].items()
        )
        lines += ["", f"CFG scale tuned on other samples (one per class, noise seed 2; colour / "
                  f"cell): {tried}; chosen w = {r['cfg_scale']:g}."]  # fmt: skip
    return lines
