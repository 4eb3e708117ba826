"""The demo must show real learning (slow: several minutes on 2 CPU cores; `pytest -m slow`)."""

import json

import pytest

from openvision3.configs import get_preset
from openvision3.train.demo import learning_checks, run_demo


@pytest.mark.slow
def test_shortened_demo_learns(tmp_path):
    cfg = get_preset("demo")
    cfg.run_dir = str(tmp_path / "demo")
    # Shortened: about half the demo's steps, evaluated on fewer images.
    for stage in cfg.train.stages:
        stage.steps = max(20, stage.steps // 2)
    cfg.eval.num_images = 300
    report = run_demo(cfg)
    text = report.read_text()
    results = json.loads((tmp_path / "demo" / "eval" / "results.json").read_text())
    m = results["metrics"]
    assert m["zero_shot_top1"] >= 10 * m["zero_shot_chance"], m
    assert m["retrieval_i2t_r1"] >= 10 / m["retrieval_count"], m
    assert m["retrieval_t2i_r1"] >= 10 / m["retrieval_count"], m
    assert m["caption_attribute_accuracy"] > 0.5, m
    assert "All checks passed: **yes**" in text, text


def test_learning_checks_targets():
    rows = learning_checks(
        {"zero_shot_top1": 0.2, "rec_psnr": 20.0, "retrieval_i2t_r1": 0.01},
        {"chance": 1 / 64, "untrained_psnr": 15.0, "chance_retrieval": 1 / 500},
    )
    by = {r["check"]: r for r in rows}
    assert by["zero-shot top-1"]["passed"] and by["zero-shot top-1"]["target"] == pytest.approx(
        10 / 64
    )
    assert not by["reconstruction PSNR (dB)"]["passed"]  # 20 < 15 + 6
    assert by["image->text recall@1"]["passed"] is False  # 0.01 < 0.02
    assert "captions name colour + shape" not in by  # no value: no row
