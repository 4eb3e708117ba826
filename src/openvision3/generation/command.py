"""Command lines of generation: ``ov3 demo --generation``, ``ov3 sample``, ``ov3 eval
generation`` and ``ov3 bench generation`` (argument parsing only; the work is elsewhere)."""

from __future__ import annotations

import argparse
import json

from openvision3.configs.parse import DefaultsFormatter


def demo_main(argv: list[str]) -> int:
    """``ov3 demo --generation --run DIR``: on a finished demo run (``ov3 demo --generation``
    without ``--run`` runs ``ov3 demo`` first, ``cli.cmd_demo``)."""
    p = argparse.ArgumentParser(
        prog="ov3 demo --generation",
        description="Train the demo's DiT-DH on the frozen tokens of a demo run, sample it and "
        "judge the samples in pixels; writes RUN/generation/report.md. Without --run, the demo "
        "(`ov3 demo`) runs first, the other flags are its preset's and these keep their defaults.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--run", required=True, help="a finished `ov3 demo` run")
    p.add_argument("--out", default="", help="output folder (default: RUN/generation)")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: the preset's)")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="0: tuned over 2, 4, 6")
    p.add_argument("--sample-steps", type=int, default=21, help="Euler grid points")
    p.add_argument("--train-size", type=int, default=4096, help="images whose tokens train it")
    p.add_argument("--val-size", type=int, default=512, help="held-out images for the judge")
    p.add_argument("--per-class", type=int, default=2, help="samples per class in the grid")
    args = p.parse_args(argv)
    from openvision3.generation.demo import run_generation_demo

    report = run_generation_demo(
        args.run, args.out, args.steps, args.cfg_scale, args.sample_steps, args.per_class,
        args.train_size, args.val_size,
    )  # fmt: skip
    print(json.dumps({"passed": report["passed"], "judge": report["judge"]}, indent=1))
    return 0


def sample_main(argv: list[str]) -> int:
    """``ov3 sample GENERATOR --out DIR``: PNGs ``{i:06d}.png`` and ``samples.npz`` (``arr_0``
    uint8 (N, H, W, 3), ``arr_1`` labels); batched, resumable (its PNGs are kept; other sampler
    settings into the same --out are refused), and
    split over ``torchrun`` ranks (rank r draws samples r, r + w, ...). Sample i has class
    ``i // per_class`` (ADM's equal label sampling) and noise seeded by (seed, i)."""
    p = argparse.ArgumentParser(
        prog="ov3 sample",
        description="Class-conditional samples of a generator: OUT/{i:06d}.png and "
        "OUT/samples.npz (arr_0 uint8 (N, H, W, 3), arr_1 labels), for `ov3 eval generation`. "
        "Sample i has class i // per-class and noise seeded by (seed, i); under torchrun, rank r "
        "draws samples r, r + world, ...",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("generator", help="a generator export (a run's final/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, default=50_000, help="samples in all (ADM's 50K)")
    p.add_argument("--per-class", type=int, default=50, help="consecutive samples per class")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale; 1 = unguided")
    p.add_argument(
        "--guidance", choices=("cfg", "autoguidance"), default="cfg",
        help="cfg: against the null class; autoguidance: against --guide",
    )  # fmt: skip
    p.add_argument("--guide", default="", help="AutoGuidance: the weaker generator export")
    p.add_argument(
        "--interval", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
        help="guide only at times t in [LO, HI] (guidance interval)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=50, help="grid points (RAE: 50)")
    p.add_argument(
        "--sampler", choices=("euler", "heun"), default="euler", help="ODE solver of the flow"
    )
    p.add_argument("--batch-size", type=int, default=64, help="samples per forward, per rank")
    p.add_argument("--seed", type=int, default=0, help="seeds every sample's noise")
    p.add_argument("--decoder", default="", help="OpenVision 3 export (default: the recorded one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again: delete this command's earlier samples in --out and replace any "
        "file in the way (without it, a rerun with the same settings continues, with others "
        "is refused)",
    )
    args = p.parse_args(argv)
    from openvision3.generation.sampling import write_samples

    print(json.dumps(write_samples(args), indent=1))
    return 0


def eval_main(argv: list[str]) -> int:
    """``ov3 eval generation SAMPLES --reference REF``: results.json + report.md (+ grid)."""
    p = argparse.ArgumentParser(
        prog="ov3 eval generation",
        description="gFID, Inception Score and precision / recall of samples against reference "
        "images (torch-fidelity's Inception); writes results.json, report.md and a sample grid.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("samples", help="a folder of images or an .npz (arr_0)")
    p.add_argument("--reference", required=True, help="folder, .npz, or ADM's VIRTUAL_*.npz")
    p.add_argument("--inception-weights", default="", help="torch-fidelity's Inception file")
    p.add_argument("--out", default="", help="results folder (default: next to the samples)")
    p.add_argument("--k", type=int, default=3, help="neighbours of precision / recall (k-NN)")
    p.add_argument("--batch-size", type=int, default=100, help="images per Inception forward")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--max-reference", type=int, default=0, help="use the first N reference images (0 = all)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results in --out that another evaluation or the user wrote",
    )
    args = p.parse_args(argv)
    import os

    from openvision3.data.transforms import write_grid
    from openvision3.distributed.process import pick_device
    from openvision3.files import atomic_write, write_json
    from openvision3.generation.metrics import evaluate_generation, load_images
    from openvision3.outputs import OutputDir, model_identity

    out = args.out or (os.path.dirname(args.samples.rstrip("/")) or ".")
    files = ("results.json", "report.md", "samples_grid.png")
    data = lambda path: model_identity(path, (".npz", ".png", ".jpg", ".jpeg"), files)  # noqa: E731
    options = {
        "samples": data(args.samples), "reference": data(args.reference),
        "inception_weights": args.inception_weights, "k": args.k,
        "max_reference": args.max_reference,
    }  # fmt: skip
    # Its own record: the default --out is the samples' folder, which holds ``ov3 sample``'s.
    record = OutputDir(out, "eval generation", options, files, args.overwrite,
                       record="eval-generation.progress.jsonl", flag="--out", summary=False)  # fmt: skip
    record.claim(files)

    results = evaluate_generation(
        args.samples, args.reference, args.inception_weights, args.k, args.batch_size,
        str(pick_device(args.device)), args.max_reference,
    )  # fmt: skip
    write_json(os.path.join(out, "results.json"), results)
    grid = load_images(args.samples)[:64]
    atomic_write(os.path.join(out, "samples_grid.png"), lambda p: write_grid(grid, str(p)))
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in results.items() if isinstance(v, float))
    report = (
        f"# Generation: {args.samples} against {args.reference}\n\n| metric | value |\n"
        f"|---|---|\n{rows}\n\n![samples](samples_grid.png)\n"
    )
    atomic_write(os.path.join(out, "report.md"), lambda p: p.write_text(report))
    record.record_done([args.samples], list(files))
    print(json.dumps(results, indent=1))
    return 0
