"""``ov3 eval <task> --model PATH [--overrides]``: the command line of ``run_eval``.

Tasks: reconstruction, zero-shot, retrieval, captioning, linear-probe, or all (every task the
model and the data allow). Overrides are the dotted fields of ``EvalRunConfig`` (tyro), e.g.

    ov3 eval all --model runs/demo/final --data.source synthetic --resolution 128
    ov3 eval reconstruction --model DIR --data.source folder --data.path /data/imagenet \\
        --reconstruction.inception-weights /weights/weights-inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import sys

DESCRIPTION = (
    "Evaluate an OpenVision 3 export, a released encoder or a hub id (--model) on held-out "
    "data: labelled images from --data.* (zero-shot, linear probe) and image-caption pairs from "
    "--pairs.* (reconstruction, retrieval, captioning; the --data texts when "
    "--pairs.annotations is empty). Writes results.json and report.md into --out-dir. `all` "
    "runs every task the model and the data allow and says why it skipped the others."
)
CHOICES = ("reconstruction", "zero-shot", "retrieval", "captioning", "linear-probe", "all")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in CHOICES:
        print(__doc__, file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import tyro

    from openvision3.evaluation.runner import EvalRunConfig, run_eval

    task, rest = argv[0], argv[1:]
    cfg = tyro.cli(EvalRunConfig, args=rest, prog=f"ov3 eval {task}", description=DESCRIPTION)
    results = run_eval(cfg, [task])
    print(f"results: {cfg.out_dir}/results.json, report: {cfg.out_dir}/report.md")
    if results["skipped"]:
        print("skipped: " + "; ".join(f"{t} ({r})" for t, r in results["skipped"].items()))
    return 0
