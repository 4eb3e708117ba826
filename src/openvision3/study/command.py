"""``ov3 study <name> [--base-preset P] [--overrides]``: run a named study, write its report.

Overrides (tyro) reach the base experiment (``--base.data.path``, ``--base.train.stages.0.steps``,
``--base.model...``), the seeds, the held-out evaluation, realism, the generation stage
(``--generation.steps``) and the run folder; the arms and the claims' rules are the named
study's. ``--base-preset NAME`` first swaps the base experiment for an experiment preset
(``pretrain_b2``, ...): the way to run the same study at scale;
``--model-preset NAME`` swaps the base's model for a model preset (``ov3-mu``, ``ov3-B/2``).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

from openvision3.ov3.config import ExperimentConfig
from openvision3.study.config import GenerationStageConfig, ProbeEvalConfig, RealismConfig


@dataclass
class StudyArgs:
    """The parts of a study the command line may change."""

    base: ExperimentConfig = field(default_factory=ExperimentConfig)
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds each arm runs with
    run_dir: str = ""  # the study's folder ("" = runs/study-<name>)
    eval: ProbeEvalConfig = field(default_factory=ProbeEvalConfig)
    realism: RealismConfig = field(default_factory=RealismConfig)
    generation: GenerationStageConfig = field(default_factory=GenerationStageConfig)  # needs it
    report_only: bool = False  # write the report from the finished runs; train nothing


PRESET_FLAGS = (
    "--base-preset NAME swaps the base experiment for an experiment preset (`ov3 train --help` "
    "lists them): the way to run the same study at scale. --model-preset NAME swaps the base's "
    "model for a model preset (ov3-mu, ov3-B/2, ...). Both apply before the other flags."
)


def study_summaries() -> dict[str, str]:
    """Study name -> the first sentence of its docstring (``ov3 study --help``)."""
    from openvision3.study.studies import STUDIES

    return {
        name: " ".join((make.__doc__ or "").split()).replace("``", "`")
        for name, make in STUDIES.items()
    }


def main(argv: list[str]) -> int:
    import tyro

    from openvision3.configs.parse import pop_flag, tyro_config
    from openvision3.study.runner import run_study
    from openvision3.study.studies import STUDIES, get_study

    if not argv or argv[0].startswith("-"):
        print(f"usage: ov3 study <name> [--overrides]; studies: {sorted(STUDIES)}", file=sys.stderr)
        return 2
    study = get_study(argv[0])
    base_preset, argv = pop_flag(argv[1:], "--base-preset")
    model_preset, argv = pop_flag(argv, "--model-preset")
    if base_preset or model_preset:
        from openvision3.configs import get_preset

        study.base = get_preset(base_preset, model_preset) if base_preset else study.base
        if model_preset and not base_preset:
            study.base.model = get_preset("demo", model_preset).model
    default = StudyArgs(
        study.base, study.seeds, study.run_dir, study.eval, study.realism, study.generation
    )
    args = tyro.cli(
        StudyArgs,
        default=default,
        args=argv,
        prog=f"ov3 study {study.name}",
        description=inspect.cleandoc(STUDIES[study.name].__doc__ or "").replace("``", "`")
        + "\n\n"
        + PRESET_FLAGS,
        config=tyro_config(),
    )
    args.base.validate()
    study.base, study.seeds, study.eval, study.realism, study.generation = (
        args.base,
        tuple(args.seeds),
        args.eval,
        args.realism,
        args.generation,
    )
    study.run_dir = args.run_dir or study.run_dir
    study.__post_init__()  # re-check the seeds and arms after the overrides
    report = run_study(study, report_only=args.report_only)
    if report is not None:
        print(f"report: {report}")
    return 0
