"""``ov3 study <name>``: write the rules, train every arm x seed on the engine (an arm whose run
finished is not rerun; a run cut short resumes from its checkpoint), then decide each claim and
write ``<run_dir>/report.md``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

from openvision3.dataclass_io import to_dict
from openvision3.distributed.process import barrier, init_process
from openvision3.errors import ConfigError
from openvision3.files import write_json
from openvision3.study.arms import arm_run_config
from openvision3.study.config import StudyConfig
from openvision3.train.metrics import read_metrics

log = logging.getLogger(__name__)
RULES_FILE = "study.json"


def missing_package(study: StudyConfig) -> str:
    """One line when the study needs a package that is absent, else ""."""
    if not study.needs:
        return ""
    if importlib.util.find_spec(f"openvision3.{study.needs}") is None:
        return (
            f"study {study.name!r} skipped: it needs openvision3.{study.needs}, which is not "
            "installed in this checkout"
        )
    return ""


def rules_of(study: StudyConfig) -> dict:
    """What a study decides by, fixed before its first run."""
    d = to_dict(study)
    keys = ["arms", "seeds", "claims", "control", "eval", "base", "realism"]
    return {k: d[k] for k in keys + (["generation"] if study.needs == "generation" else [])}


def write_rules(study: StudyConfig) -> None:
    """Write ``study.json`` before any run; a later call with other rules is an error (a study
    cannot change its rules after it has started)."""
    path = Path(study.run_dir) / RULES_FILE
    rules = rules_of(study)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("rules") != json.loads(json.dumps(rules)):
            raise ConfigError(
                f"{path} holds other rules than this study's: the rules are fixed once the "
                "study has started; use another --run-dir to change them"
            )
        return
    write_json(path, {"name": study.name, "written": time.time(), "rules": rules})


def realism_spec(study: StudyConfig) -> tuple[str, str]:
    """(extractor spec for the runs, a sentence for the report) from ``study.realism.kind``."""
    from openvision3.evaluation.fid import default_inception_path

    kind = study.realism.kind
    synthetic = study.base.data.source == "synthetic"
    if kind == "auto":
        has_inception = Path(default_inception_path()).is_file()
        kind = "inception" if has_inception else "features" if synthetic else "none"
    if kind == "none":
        return "", "no realism metric (no Inception weights, and the data is not synthetic)"
    if kind == "inception":
        return "inception", "rFID: Frechet distance of Inception-v3 pool3 features"
    if not synthetic:
        raise ConfigError("--realism.kind features needs the synthetic world (--base.data.source)")
    from openvision3.study.realism import cached_feature_net

    res = study.base.train.stages[-1].resolution
    seed = study.base.data.synthetic.seed
    path = cached_feature_net(study.realism, seed, res, Path(study.run_dir) / "realism")
    return path, (
        "Frechet distance in the feature space of a small network trained on the synthetic "
        "world's labels (main object's colour, shape, cell), not Inception"
    )


def finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "results.json").is_file()


def run_arms(study: StudyConfig, realism: str) -> None:
    """Train every arm x seed not finished yet, seed by seed (a partial study holds every arm
    of its first seeds). Wall time per run goes to ``<run>/wall.json``."""
    from openvision3.train.trainer import Trainer

    for seed in study.seeds:
        for arm in study.arms:
            cfg = arm_run_config(study, arm, seed, realism)
            if finished(cfg.run_dir):
                log.info("study %s: %s seed %d finished, not rerun", study.name, arm.name, seed)
                continue
            log.info("study %s: training %s seed %d", study.name, arm.name, seed)
            t0 = time.perf_counter()
            trainer = Trainer(cfg)
            trainer.fit()
            if trainer.proc.is_main:
                write_json(Path(cfg.run_dir) / "wall.json", {"seconds": time.perf_counter() - t0})


def eval_curve(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] of the held-out evaluations logged during a run (the last
    record of a step wins, so a resumed run counts each step once)."""
    by_step: dict[int, dict] = {}
    for r in read_metrics(run_dir):
        values = {k[5:]: v for k, v in r.items() if k.startswith("eval/")}
        if values:
            by_step.setdefault(r["step"], {}).update(values)
    curves: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(by_step):
        for k, v in by_step[step].items():
            curves.setdefault(k, []).append((step, v))
    return curves


def collect(study: StudyConfig) -> dict:
    """Per arm: finals[metric] = per-seed final values (seed order), curves per seed, wall."""
    out = {}
    for arm in study.arms:
        finals: dict[str, list[float]] = {}
        curves, walls = [], []
        for seed in study.seeds:
            run = Path(study.run_dir) / arm.name / f"seed{seed}"
            metrics = {}
            if finished(run):
                metrics = json.loads((run / "results.json").read_text()).get("metrics", {})
                curves.append(eval_curve(run))
                if (run / "wall.json").is_file():
                    walls.append(json.loads((run / "wall.json").read_text())["seconds"])
            if study.needs == "generation":
                from openvision3.study.generation import generation_metrics

                metrics = {**metrics, **generation_metrics(run)}
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    finals.setdefault(k, []).append(float(v))
        out[arm.name] = {"finals": finals, "curves": curves, "wall": walls}
    return out


def run_study(study: StudyConfig, report_only: bool = False) -> Path | None:
    """Run (or resume) the study and write its report; None when a needed package is absent."""
    skip = missing_package(study)
    if skip:
        print(skip)
        return None
    proc = init_process(study.base.train.device)
    t0 = time.perf_counter()
    if proc.is_main:
        write_rules(study)
        realism, realism_text = realism_spec(study)
    barrier()
    if not proc.is_main:
        realism, realism_text = realism_spec(study)  # rank 0 trained and cached it
    if not report_only:
        run_arms(study, realism)
    if not proc.is_main:
        return None
    if study.needs == "generation" and not report_only:
        from openvision3.study.generation import run_generation_stage

        run_generation_stage(study, realism)  # one process: the generators are small
    from openvision3.study.report import write_report

    return write_report(study, collect(study), realism_text, time.perf_counter() - t0)
