"""The generation demo's pixel judge (no OpenVision 3 inside) and its CFG-scale tuning."""

import numpy as np
import pytest
import torch

from openvision3.data.synthetic.tokens import color_cell
from openvision3.data.synthetic.world import SyntheticWorld
from openvision3.generation.demo import (
    CELL_NAMES,
    GATES,
    NUM_CLASSES,
    judge,
    score,
    tune_scale,
)


def _real(n=24, res=128):
    world = SyntheticWorld(0)
    samples = [world.sample("val", i, res) for i in range(n)]
    labels = np.array([color_cell(world, s["key"]) for s in samples])
    return np.stack([s["image"] for s in samples]), labels


def test_judge_reads_colour_and_cell_of_real_scenes():
    images, labels = _real()
    colors, cells = judge(images)
    assert (colors == labels // len(CELL_NAMES)).mean() >= 0.95
    assert (cells == labels % len(CELL_NAMES)).mean() >= 0.95
    blank = np.full((2, 64, 64, 3), 128, np.uint8)  # background only: no object colour
    assert judge(blank)[0].tolist() == [-1, -1]
    shuffled = score(images, np.roll(labels, 1))
    assert shuffled["color"] < 0.5 and shuffled["n"] == len(labels)


class _FakeGenerator:
    """Draws real scenes of the asked class when w >= 4, of the next class otherwise."""

    def __init__(self):
        self.world, self.pool = SyntheticWorld(0), {}
        for i in range(2000):
            s = self.world.sample("train", i, 64)
            self.pool.setdefault(color_cell(self.world, s["key"]), s["image"])
            if len(self.pool) == NUM_CLASSES:
                break

    def sample(self, labels, cfg_scale, steps, seed):
        shift = 0 if cfg_scale >= 4 else 1
        x = np.stack([self.pool[(int(y) + shift) % NUM_CLASSES] for y in labels])
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1  # as Generator: [-1, 1]


def test_tune_scale_keeps_the_scale_whose_samples_follow_their_labels():
    gen = _FakeGenerator()
    if len(gen.pool) < NUM_CLASSES:
        pytest.skip("the first 2000 train scenes miss a class")
    w, scores = tune_scale(gen, (2.0, 4.0), sample_steps=3)
    assert w == 4.0
    assert scores[4.0]["ratio"] > 1.0 > scores[2.0]["ratio"]
    assert scores[4.0]["color"] >= GATES["color"]


def test_report_gates_guided_samples_and_the_chance_controls(tmp_path):
    import json

    from openvision3.generation.demo import CHANCE, demo_checks, write_report

    table = {
        "real val images": {"color": 1.0, "cell": 0.99, "n": 8},
        "CFG samples (w = 4)": {"color": 0.9, "cell": 0.3, "n": 8},  # cell below 3x chance
        "conditional samples (w = 1)": {"color": 0.5, "cell": 0.2, "n": 8},
        "unconditional samples (w = 0)": {"color": 0.1, "cell": 0.1, "n": 8},
        "CFG samples vs a wrong label": {"color": 0.3, "cell": 0.1, "n": 8},  # colour > 2x
    }
    times = dict.fromkeys(("cache_s", "train_s", "tune_s", "sample_s", "judge_s"), 1.0)
    extra = {"judge": table, "times": times | {"total_s": 5.0}, "cfg_scale": 4.0, "tuning": {},
             "sample_steps": 3, "train_steps": 2}  # fmt: skip
    report = write_report(tmp_path, demo_checks(table, 4.0), extra)
    assert report["passed"] is False and report["judge"] == table
    passed = {c["check"]: c["passed"] for c in report["checks"]}
    assert passed == {
        "CFG colour >= 5x chance": True,
        "CFG cell >= 3x chance": False,
        "CFG samples vs a wrong label: color <= 2x chance": False,
        "CFG samples vs a wrong label: cell <= 2x chance": True,
        "unconditional samples (w = 0): color <= 2x chance": True,
        "unconditional samples (w = 0): cell <= 2x chance": True,
    }
    assert json.loads((tmp_path / "report.json").read_text()) == report
    text = (tmp_path / "report.md").read_text()
    assert f"| CFG cell >= 3x chance | 0.3 | >= {3 * CHANCE['cell']:.4g} | **no** |" in text
    assert "| CFG samples (w = 4) | 8 | 0.900 | 0.300 |" in text and "samples_grid.png" in text
