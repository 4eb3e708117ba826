"""``ov3 sample``: many samples to PNGs and an ADM-style npz, resumable and split over ranks.

The output folder is owned through ``openvision3.outputs.OutputDir``: the sampler settings are
recorded by the first run, a rerun with others (another ``--cfg-scale``, say) is refused rather
than mixing guided and unguided samples in one npz, and files the command did not write are
never replaced without ``--overwrite``."""

from __future__ import annotations

import os

import numpy as np


def sample_options(args) -> dict:
    """What shapes the samples (``--num`` and ``--batch-size`` do not: sample i is seeded by
    (seed, i), so a larger ``--num`` continues the same set)."""
    from openvision3.outputs import model_identity

    return {
        "generator": model_identity(args.generator),
        "decoder": model_identity(args.decoder) if args.decoder else "",
        "guide": model_identity(args.guide) if args.guide else "",
        "per_class": args.per_class,
        "cfg_scale": args.cfg_scale,
        "guidance": args.guidance,
        "interval": list(args.interval),
        "steps": args.steps,
        "sampler": args.sampler,
        "seed": args.seed,
    }


def write_samples(args) -> dict:
    """Draw this rank's missing samples, then (rank 0, after every rank) pack the npz."""
    from PIL import Image

    from openvision3.data.transforms import to_pil
    from openvision3.distributed.process import barrier, init_process
    from openvision3.files import atomic_write
    from openvision3.generation.pipeline import load_generator
    from openvision3.outputs import OutputDir

    proc = init_process(args.device)
    options = sample_options(args)
    name = lambda i: f"{i:06d}.png"  # noqa: E731
    # Rank 0 checks and records the folder; the others only draw their samples.
    run, missing = None, []
    if proc.is_main:
        outputs = ("[0-9]" * 6 + ".png", "samples.npz")  # 000000.png, ...: not any PNG
        run = OutputDir(args.out, "sample", options, outputs, args.overwrite, flag="--out")
        # A PNG under its name is complete (written then renamed); recorded ones are kept.
        run.claim([name(i) for i in range(args.num)] + ["samples.npz"])
        missing = [
            i for i in range(args.num) if not os.path.exists(os.path.join(args.out, name(i)))
        ]
    barrier()  # (a refusal on rank 0 ends the job: torchrun stops the other ranks)
    gen = load_generator(
        args.generator, device=str(proc.device), decoder=args.decoder, guide=args.guide
    )
    num_classes = len(gen.class_names)
    png = lambda i: os.path.join(args.out, name(i))  # noqa: E731
    label = lambda i: (i // args.per_class) % num_classes  # noqa: E731
    todo = [i for i in range(proc.rank, args.num, proc.world_size) if not os.path.exists(png(i))]
    for start in range(0, len(todo), args.batch_size):
        ids = todo[start : start + args.batch_size]
        images = gen.sample(
            [label(i) for i in ids], cfg_scale=args.cfg_scale, steps=args.steps,
            sampler=args.sampler, seed=args.seed, ids=ids, interval=tuple(args.interval),
            guidance=args.guidance,
        )  # fmt: skip
        # to_pil rounds (RAE's sample_ddp.py truncates, which darkens every pixel a half level)
        for i, im in zip(ids, to_pil(images)):
            atomic_write(png(i), lambda p, im=im: im.save(p))
    barrier()
    npz = os.path.join(args.out, "samples.npz")
    if proc.is_main:
        arr = np.stack([np.asarray(Image.open(png(i)).convert("RGB")) for i in range(args.num)])
        labels = np.array([label(i) for i in range(args.num)])
        atomic_write(npz, lambda p: np.savez(p, arr_0=arr, arr_1=labels))
        files = [name(i) for i in range(args.num)] + ["samples.npz"]
        run.record_done([name(i) for i in missing], files)  # every rank's, now on disk
        run.summary({"num": args.num})
    return {"out": args.out, "npz": npz, "num": args.num, "drawn_here": len(todo)}
