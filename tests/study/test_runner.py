"""The study runner on the engine: resumable, reproducible, equal samples, frozen trunk; the
command's one-line errors and skips."""

import json

import pytest
import torch
from safetensors.torch import load_file

from openvision3.errors import ConfigError
from openvision3.study.runner import missing_package, run_study, write_rules
from openvision3.study.studies import get_study, paper_small_smoke


def _tiny(run_dir, arms=("und-only", "frozen-init"), seeds=(0,)):
    study = paper_small_smoke()
    study.run_dir = str(run_dir)
    study.arms = [a for a in study.arms if a.name in arms]
    study.seeds = seeds
    study.claims, study.control.arm, study.control.baseline = [], arms[0], arms[-1]
    study.base.train.stages[0].resolution = 32
    study.base.train.stages[0].steps = 2
    study.eval.num_images, study.eval.every = 4, 1
    study.realism.kind = "none"
    return study


@pytest.mark.slow
def test_study_runs_resumes_and_reproduces(tmp_path):
    study = _tiny(tmp_path / "a")
    report = run_study(study)
    assert report.is_file()
    runs = {a: tmp_path / "a" / a / "seed0" for a in ("und-only", "frozen-init")}
    res = {a: json.loads((r / "results.json").read_text())["metrics"] for a, r in runs.items()}
    # Equal budgets: both arms trained on the same sample keys, in the same order.
    assert res["und-only"]["keys_digest"] == res["frozen-init"]["keys_digest"] != 0
    # frozen-init keeps the encoder trunk at its initialisation; und-only moves it.
    w = {a: load_file(str(r / "final" / "model.safetensors")) for a, r in runs.items()}
    torch.manual_seed(0)
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.study.arms import arm_run_config

    init = OpenVision3(arm_run_config(study, study.arm("frozen-init"), 0).model).state_dict()
    blocks = [k for k in w["frozen-init"] if k.startswith("encoder.blocks.")]
    assert all(torch.equal(w["frozen-init"][k], init[k]) for k in blocks)
    assert not all(torch.equal(w["und-only"][k], init[k]) for k in blocks)
    assert not torch.equal(w["frozen-init"]["encoder.head.weight"], init["encoder.head.weight"])
    # Resumable: a finished arm is not rerun.
    stamp = (runs["und-only"] / "results.json").stat().st_mtime_ns
    run_study(study)
    assert (runs["und-only"] / "results.json").stat().st_mtime_ns == stamp
    # Seed reproducibility: the same arm and seed in another folder gives the same numbers.
    again = _tiny(tmp_path / "b", arms=("und-only",))
    again.control.baseline = "und-only"
    run_study(again)
    res_b = json.loads((tmp_path / "b/und-only/seed0/results.json").read_text())["metrics"]
    assert res_b == pytest.approx(res["und-only"], rel=1e-6, abs=1e-9)


def test_rules_are_fixed_once_written(tmp_path):
    study = _tiny(tmp_path)
    write_rules(study)
    write_rules(study)  # same rules: fine
    study.control.direction = "higher"
    with pytest.raises(ConfigError, match="rules are fixed"):
        write_rules(study)


def test_generation_study_skips_without_its_package(capsys):
    study = get_study("paper-small-generation")
    assert study.needs == "generation"
    study.needs = "no_such_package_here"
    assert run_study(study) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "needs openvision3.no_such_package_here" in out[0]
    assert missing_package(get_study("paper-small")) == ""


@pytest.mark.slow
def test_generation_study_trains_a_generator_per_arm_and_decides_claim_4(tmp_path):
    """Each arm's tokens -> a DiT-DH -> samples through the arm's own decoder (pixels for the
    pixel ViT, the VAE for the latent ViT) -> generation_fd in the realism space; resumable."""
    study = get_study("paper-small-generation_smoke")
    study.run_dir, study.seeds = str(tmp_path), (0, 1)
    study.base.train.stages[0].resolution = 32
    study.base.train.stages[0].steps = 2
    study.eval.num_images, study.eval.every = 4, 1
    report = run_study(study)
    for arm in ("both", "frozen-init", "pixel-vit"):
        for seed in (0, 1):
            gen = tmp_path / arm / f"seed{seed}" / "generation"
            res = json.loads((gen / "results.json").read_text())
            assert res["samples"] == 72 and res["metrics"]["generation_fd"] > 0
            meta = json.loads((gen / "tokens" / "train-000.json").read_text())
            assert meta["written"] == 16
            assert json.loads((gen / "run" / "config.json").read_text())["train"]["seed"] == seed
    text = report.read_text()
    assert "claim 4 (generation)" in text and "generation_fd" in text
    stamp = (tmp_path / "both/seed0/generation/results.json").stat().st_mtime_ns
    run_study(study)  # finished generators are kept
    assert (tmp_path / "both/seed0/generation/results.json").stat().st_mtime_ns == stamp


def test_generation_study_needs_a_realism_space(tmp_path):
    from openvision3.study.generation import run_generation_stage

    with pytest.raises(ConfigError, match="realism"):
        run_generation_stage(get_study("paper-small-generation_smoke"), "")


def test_cli_unknown_study_is_one_line(capsys):
    from openvision3.cli import main

    assert main(["study", "no-such-study"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown study" in err[0] and "paper-small" in err[0]
