"""``ov3 demo``: train a small OpenVision 3 on the synthetic world, evaluate it, write a report.

Everything is offline: the synthetic world is rendered on the fly and the frozen VAE ships in
the package. The report (``<run_dir>/report.md``) states the learning checks the demo must pass:
zero-shot top-1 and retrieval recall@1 at least 10x chance, reconstruction PSNR at least 6 dB
above the untrained model's, and captions naming the main object's colour and shape for most
images.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import platform
import time
from pathlib import Path

import torch

from openvision3.config import ExperimentConfig
from openvision3.train.metrics import read_metrics
from openvision3.train.trainer import Trainer, prune_model_config

log = logging.getLogger(__name__)

CHECKS = (  # (name, metric, reference, factor or offset, kind)
    ("zero-shot top-1", "zero_shot_top1", "chance", 10.0, "x"),
    ("image->text recall@1", "retrieval_i2t_r1", "chance_retrieval", 10.0, "x"),
    ("text->image recall@1", "retrieval_t2i_r1", "chance_retrieval", 10.0, "x"),
    ("reconstruction PSNR (dB)", "rec_psnr", "untrained_psnr", 6.0, "+"),
    ("captions name colour + shape", "caption_attribute_accuracy", "half", 1.0, "x"),
)


def untrained_metrics(cfg: ExperimentConfig) -> dict:
    """Reconstruction metrics of the same architecture at initialisation (the PSNR baseline)."""
    from openvision3.evaluation.suite import evaluate_model
    from openvision3.models.openvision3 import OpenVision3

    torch.manual_seed(cfg.train.seed)
    model = OpenVision3(prune_model_config(cfg.model, cfg.objective)).eval()
    only_rec = dataclasses.replace(cfg.eval, zero_shot=False, retrieval=False, captioning=False)
    res = cfg.eval.resolution or cfg.train.stages[-1].resolution
    with torch.no_grad():
        return evaluate_model(model, cfg.data, only_rec, res)["metrics"]


def learning_checks(metrics: dict, refs: dict) -> list[dict]:
    rows = []
    for name, key, ref_key, amount, kind in CHECKS:
        value, ref = metrics.get(key), refs.get(ref_key)
        if value is None or ref is None:
            continue
        target = ref * amount if kind == "x" else ref + amount
        rows.append(
            {
                "check": name,
                "value": value,
                "reference": ref,
                "target": target,
                "passed": bool(value >= target),
                "kind": kind,
                "amount": amount,
                "ref_name": ref_key,
            }
        )
    return rows


def plot_losses(metrics_path: Path, out: Path, stage_steps: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    panels = [
        ("total loss", ["loss"]),
        ("reconstruction", ["pixel_l1", "latent_l1"]),
        ("contrastive", ["contrastive"]),
        ("caption", ["caption"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key)
        for s in stage_steps[:-1]:
            ax.axvline(s, color="grey", ls="--", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(
    cfg: ExperimentConfig, results: dict, refs: dict, timings: dict, n_params: dict
) -> Path:
    run = Path(cfg.run_dir)
    m = results["metrics"]
    stage_steps = list(itertools.accumulate(s.steps for s in cfg.train.stages))
    plot_losses(run / "metrics.jsonl", run / "loss_curves.png", stage_steps)
    checks = learning_checks(m, refs)
    lines = [
        "# OpenVision 3 demo report",
        "",
        f"Command: `ov3 demo`. Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
        f"Wall time: **{timings['total']:.0f} s** in all (training {timings['train']:.0f} s, "
        f"evaluation {timings['eval']:.0f} s, untrained baseline {timings['baseline']:.0f} s)."
        + (" Training resumed from an earlier run's checkpoint." if timings.get("resumed") else ""),
        "",
        "## What was trained",
        "",
        f"- Model `{cfg.model.name}`: encoder {n_params['encoder'] / 1e6:.2f}M, decoder "
        f"{n_params['decoder'] / 1e6:.2f}M, text encoder {n_params['text'] / 1e6:.2f}M, caption decoder "
        f"{n_params['captioner'] / 1e6:.2f}M parameters; frozen VAE `{cfg.model.vae.pretrained}` "
        f"({n_params['vae'] / 1e6:.2f}M, 8x down, 16 channels).",
        "- Losses: 0.5 (pixel L1 + 0.4 latent L1) + 1.0 (caption + contrastive). LPIPS is off: "
        "its VGG weights cannot be downloaded offline.",
        "- Stages: "
        + "; ".join(
            f"{s.resolution} px x {s.steps} steps, batch {s.batch_size}, base LR {s.base_lr:g}"
            for s in cfg.train.stages
        )
        + ".",
        f"- Data: the synthetic world ({cfg.data.synthetic.train_size} train scenes); evaluation on "
        f"{m.get('rec_count', m.get('zero_shot_count'))} held-out val images at "
        f"{results['settings']['resolution']} px.",
        "",
        "## Learning checks",
        "",
        "| check | trained | reference | target | passed |",
        "|---|---|---|---|---|",
    ]
    for c in checks:
        ref = f"{c['ref_name'].replace('_', ' ')} {c['reference']:.4g}"
        lines.append(
            f"| {c['check']} | {c['value']:.4g} | {ref} | >= {c['target']:.4g} | {'yes' if c['passed'] else '**no**'} |"
        )
    lines += [
        "",
        f"All checks passed: **{'yes' if checks and all(c['passed'] for c in checks) else 'no'}**.",
        "",
        "## Loss curves",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "Dashed lines: the stage switch (the encoder's sin-cos positions are re-gridded).",
        "",
        "## Reconstructions",
        "",
        "Best (top pair of rows) and worst (bottom pair) held-out images by PSNR; originals above "
        "reconstructions.",
        "",
        "![reconstructions](eval/reconstructions.png)",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items() if v is not None]
    lines += [
        "",
        "## Sample captions (greedy)",
        "",
        "| key | generated | true caption |",
        "|---|---|---|",
    ]
    for row in results.get("captions", []):
        lines.append(f"| {row['key']} | {row['generated']} | {row['reference']} |")
    lines += [
        "",
        "Per-image reconstruction metrics: `eval/reconstruction.csv`; every number and setting: "
        "`eval/results.json`.",
    ]
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_demo(cfg: ExperimentConfig) -> Path:
    """Train, evaluate against the untrained baseline and chance, write ``report.md``."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    resumed = trainer.step > 0
    results = trainer.fit()
    t1 = time.perf_counter()
    model = trainer.model
    n_params = {
        p: sum(x.numel() for x in getattr(model, p).parameters())
        if getattr(model, p) is not None
        else 0
        for p in ("encoder", "decoder", "text", "captioner", "vae")
    }
    if not trainer.proc.is_main:
        return Path(cfg.run_dir) / "report.md"
    base = untrained_metrics(cfg)
    t2 = time.perf_counter()
    m = results["metrics"]
    refs = {
        "chance": m.get("zero_shot_chance"),
        "untrained_psnr": base.get("rec_psnr"),
        "half": 0.5,
        "chance_retrieval": 1.0 / m["retrieval_count"] if m.get("retrieval_count") else None,
    }
    timings = {
        "total": t2 - t0,
        "train": trainer.train_seconds,
        "eval": t1 - t0 - trainer.train_seconds,
        "baseline": t2 - t1,
        "resumed": resumed,
    }
    return write_report(cfg, results, refs, timings, n_params)
