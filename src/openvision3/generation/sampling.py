"""``ov3 sample``: many samples to PNGs and an ADM-style npz, resumable and split over ranks."""

from __future__ import annotations

import os

import numpy as np
import torch


def write_grid(images: np.ndarray, path: str, cols: int = 8) -> None:
    """uint8 (B, H, W, 3) -> a grid PNG, ``cols`` per row."""
    from PIL import Image

    b, h, w, _ = images.shape
    rows = -(-b // cols)
    canvas = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    Image.fromarray(canvas).save(path)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounded (RAE's ``sample_ddp.py`` truncates)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_samples(args) -> dict:
    """Draw this rank's missing samples, then (rank 0, after every rank) pack the npz."""
    from PIL import Image

    from openvision3.distributed.process import barrier, init_process
    from openvision3.generation.pipeline import load_generator

    proc = init_process(args.device)
    gen = load_generator(
        args.generator, device=str(proc.device), decoder=args.decoder, guide=args.guide
    )
    num_classes = len(gen.class_names)
    os.makedirs(args.out, exist_ok=True)
    png = lambda i: os.path.join(args.out, f"{i:06d}.png")  # noqa: E731
    label = lambda i: (i // args.per_class) % num_classes  # noqa: E731
    todo = [i for i in range(proc.rank, args.num, proc.world_size) if not os.path.exists(png(i))]
    for start in range(0, len(todo), args.batch_size):
        ids = todo[start : start + args.batch_size]
        images = gen.sample(
            [label(i) for i in ids], cfg_scale=args.cfg_scale, steps=args.steps,
            sampler=args.sampler, seed=args.seed, ids=ids, interval=tuple(args.interval),
            guidance=args.guidance,
        )  # fmt: skip
        for i, a in zip(ids, to_uint8(images)):
            tmp = png(i) + ".tmp.png"
            Image.fromarray(a).save(tmp)
            os.replace(tmp, png(i))  # a PNG under its name is always complete
    barrier()
    npz = os.path.join(args.out, "samples.npz")
    if proc.is_main:
        arr = np.stack([np.asarray(Image.open(png(i)).convert("RGB")) for i in range(args.num)])
        np.savez(npz, arr_0=arr, arr_1=np.array([label(i) for i in range(args.num)]))
    return {"out": args.out, "npz": npz, "num": args.num, "drawn_here": len(todo)}
