"""``ov3 bench generation``: DiT-DH training step and sampling speed, in ``ov3 bench train``'s
JSON form (modes eager / fast, step_ms, images_per_s, tflop_per_s, mfu, memory, targets).

Training: the engine's own step (``Trainer.train_step``) of the generation task with RAE's
recipe (``dit_dh_xl_ov3_b2``: AdamW betas (0.9, 0.95) without weight decay, lr 2e-4, clip 1,
EMA 0.9995) on the task's synthetic batch of (C, H, W) tokens: per-sample flow draws, forward,
MSE, backward, clip, AdamW, schedule, EMA. ``eager`` = bf16 autocast on CUDA (fp32 on CPU), no
compile, foreach AdamW; ``fast`` = the trainer's options (compile per block, fused AdamW).
Sampling: one Euler step with CFG (a doubled batch) per image, timed and scaled to a 50-point
grid: ``eager`` in fp32 without compile, ``fast`` in bf16 autocast with the compiled blocks.
FLOPs from ``FlopCounterMode`` on the eager model; MFU against the matmul ceiling measured in
the same process (bf16 on CUDA, fp32 on CPU). Targets on an H100/H200: training MFU >= 40%
(fast, bf16) and sampling >= 1.5x the eager fp32 run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import sys
from pathlib import Path

import torch

from openvision3 import perf
from openvision3.configs.parse import DefaultsFormatter
from openvision3.generation.presets import MODEL_PRESETS, dit_dh_xl_ov3_b2
from openvision3.generation.task import GenerationConfig
from openvision3.train.config import StageConfig

TARGETS = {"mfu_fast": 0.40, "sampling_speedup": 1.5}


def _autocast(device, bf16: bool):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bench_run(args, mode: str, device: torch.device) -> GenerationConfig:
    """RAE's run (``dit_dh_xl_ov3_b2``) with the ``--model`` preset, one stage of ``--batch``
    at the recipe's peak LR (no warm-up, steps enough for any benchmark) and the mode's
    speed options."""
    run = dit_dh_xl_ov3_b2()
    run.model = MODEL_PRESETS[args.model]()
    tc = run.train
    tc.stages = [StageConfig(steps=1_000_000, batch_size=args.batch, lr=tc.stages[0].lr)]
    tc.device, tc.seed = str(device), 0
    fast = mode == "fast"
    tc.compile = fast and device.type == "cuda" and not args.no_compile
    tc.optim = dataclasses.replace(tc.optim, fused=None if fast else False)
    return run


def _sample_step(model, x, y, bf16, device):
    null = torch.full_like(y, model.cfg.num_classes)
    t = torch.full((2 * len(y),), 0.5, device=device)

    @torch.no_grad()
    def step():
        with _autocast(device, bf16):
            return model(torch.cat([x, x]), t, torch.cat([y, null]))

    return step


def bench_generation(args) -> dict:
    from openvision3.distributed.process import pick_device
    from openvision3.train.trainer import synthetic_engine

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    trainer, batch = synthetic_engine(bench_run(args, "eager", device), device)
    model, b = trainer.model, args.batch
    ceiling = perf.matmul_ceiling(device, torch.bfloat16 if cuda else torch.float32)
    _, train_flops = perf.count_flops(lambda: trainer.train_step(batch))
    sample_b = args.sample_batch
    x, y = batch["x"][:sample_b], batch["y"][:sample_b]
    _, sample_flops = perf.count_flops(_sample_step(model, x, y, False, device))
    result = {
        "model": args.model,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "tokens": list(batch["x"].shape[1:]),
        "device": perf.device_name(device),
        "batch": b,
        "matmul_ceiling_tflop_per_s": round(ceiling / 1e12, 2),
        "train_gflop_per_image": round(train_flops / b / 1e9, 2),
        "modes": {},
        "sampling": {},
    }
    grid = args.grid_points - 1  # Euler steps a sample takes
    for mode in ("eager", "fast"):
        if mode == "fast":  # its own engine (compiled blocks, fused AdamW), the same weights
            trainer = batch = model = None
            gc.collect()
            trainer, batch = synthetic_engine(bench_run(args, mode, device), device)
            model = trainer.model
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        step = lambda t=trainer, d=batch: t.train_step(d)["loss"]  # noqa: E731
        loss, times, warm = perf.benchmark(step, args.steps, args.warmup, device)
        sec = perf.median(times)
        result["modes"][mode] = {
            "step_ms": round(sec * 1e3, 3),
            "first_step_s": round(warm[0], 2) if warm else None,
            "images_per_s": round(b / sec, 2),
            "tflop_per_s": float(f"{train_flops / sec / 1e12:.4g}"),
            "mfu": float(f"{train_flops / sec / ceiling:.4g}"),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            if cuda
            else None,
            "loss_finite": bool(torch.isfinite(loss)),
        }
        bf16 = mode == "fast" and cuda
        fn = _sample_step(model, batch["x"][:sample_b], batch["y"][:sample_b], bf16, device)
        _, times, _ = perf.benchmark(fn, args.steps, args.warmup, device)
        sec = perf.median(times)
        result["sampling"][mode] = {
            "precision": "bf16" if bf16 else "fp32",
            "nfe_ms": round(sec * 1e3, 3),
            "images_per_s": round(sample_b / (sec * grid), 3),
            "tflop_per_s": float(f"{sample_flops / sec / 1e12:.4g}"),
        }
    speedup = (
        result["sampling"]["fast"]["images_per_s"] / result["sampling"]["eager"]["images_per_s"]
    )
    mfu = result["modes"]["fast"]["mfu"]
    result["targets"] = {
        "mfu_fast": {"target": TARGETS["mfu_fast"], "measured": mfu, "met": mfu >= 0.40},
        "sampling_speedup": {
            "target": TARGETS["sampling_speedup"],
            "measured": round(speedup, 3),
            "met": speedup >= TARGETS["sampling_speedup"],
        },
        "applies": cuda,
    }
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ov3 bench generation",
        description="Speed of a DiT-DH training step and of sampling, on random tokens. JSON on "
        "stdout (and in --out).",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "--model", default="dit-dh-xl", choices=sorted(MODEL_PRESETS), metavar="PRESET",
        help=f"DiT-DH model preset: {', '.join(sorted(MODEL_PRESETS))}",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=64, help="training batch")
    p.add_argument("--sample-batch", type=int, default=64, help="samples per sampling forward")
    p.add_argument("--grid-points", type=int, default=50, help="sampler grid points (RAE: 50)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    result = bench_generation(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0
