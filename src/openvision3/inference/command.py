"""Parse and dispatch the inference commands of ``ov3``; the work lives in ``runs.py`` / ``bench.py``.

ov3 encode MODEL INPUT --output DIR [--format safetensors|npz|webdataset] [--pooled] [--layout grid]
ov3 reconstruct MODEL INPUT --output DIR [--side-by-side]   (sub/a.jpg -> DIR/sub/a.jpg.png)
ov3 caption MODEL INPUT --output DIR
ov3 classify MODEL INPUT --output DIR --labels cat dog ... [--topk 5]
ov3 latent-stats MODEL INPUT --output DIR
ov3 bench encode [--model PATH | --preset ov3-B/2] [--batch-size 32] [--output bench.json]
"""

from __future__ import annotations

import json
import sys


def _commands() -> dict:
    from openvision3.inference import bench, runs

    return {
        "encode": (runs.EncodeConfig, runs.run_encode),
        "reconstruct": (runs.ReconstructConfig, runs.run_reconstruct),
        "caption": (runs.CaptionConfig, runs.run_caption),
        "classify": (runs.ClassifyConfig, runs.run_classify),
        "latent-stats": (runs.TokenStatsConfig, runs.run_token_stats),
        "bench encode": (bench.BenchConfig, _bench_encode),
    }


def _bench_encode(cfg) -> int:
    from openvision3.inference.bench import bench_encode

    result = json.dumps(bench_encode(cfg), indent=2)
    print(result)
    if cfg.output:
        with open(cfg.output, "w") as f:
            f.write(result + "\n")
    return 0


def main(name: str, argv: list[str]) -> int:
    """``ov3 <name> <argv>`` for the inference commands -> exit code."""
    import tyro

    if name == "bench":
        if not argv or argv[0] != "encode":
            print("usage: ov3 bench encode [--help]", file=sys.stderr)
            return 2
        name, argv = "bench encode", argv[1:]
    commands = _commands()
    if name not in commands:
        print(f"unknown inference command {name!r}; one of {sorted(commands)}", file=sys.stderr)
        return 2
    config_cls, run = commands[name]
    try:  # tyro prints usage errors and failed __post_init__ checks, then exits
        cfg = tyro.cli(config_cls, args=argv, prog=f"ov3 {name}")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    from openvision3.errors import ConfigError

    try:
        return run(cfg)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        # ConfigError (an output folder written with other options, a file in the way): 2,
        # as ``ov3`` exits for every usage error; unreadable inputs: 1.
        print(f"ov3 {name}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
