"""The understanding demo's questions, prior baseline and gates."""

import numpy as np
import pytest

pytest.importorskip("transformers")

from openvision3.data.synthetic.world import CELL_NAMES, SyntheticWorld  # noqa: E402
from openvision3.understanding.demo import _answer, gates  # noqa: E402
from openvision3.understanding.synthetic_vqa import (  # noqa: E402
    NUMBERS,
    QUESTION_TYPES,
    describe,
    scene_questions,
    vocabulary,
)


def test_answers_follow_the_scene():
    world, yes = SyntheticWorld(0), 0
    for i in range(200):
        scene = world.scene("val", i)
        qa = {k: (q, a) for k, q, a in scene_questions(scene, "val", i)}
        assert set(qa) == set(QUESTION_TYPES)
        main = scene.objects[0]
        assert qa["colour"][1] == main.color and qa["shape"][1] == main.shape
        assert qa["position"][1] == CELL_NAMES[main.cell]
        assert qa["count"][1] == NUMBERS[len(scene.objects) - 1]
        colour = qa["presence"][0].split()[3]
        present = colour in {o.color for o in scene.objects}
        assert qa["presence"][1] == ("yes" if present else "no")
        yes += present
        assert qa["background"][1] in (scene.background, scene.texture)
    assert 70 < yes < 130  # about half present, half absent
    assert scene_questions(world.scene("val", 3), "val", 3) == scene_questions(
        world.scene("val", 3), "val", 3
    )


def test_vocabulary_covers_every_question_answer_and_caption():
    words, world = set(vocabulary()), SyntheticWorld(0)
    for i in range(200):
        scene = world.scene("train", i)
        texts = [q + " " + a for _, q, a in scene_questions(scene, "train", i)]
        texts += [" ".join(describe(scene))]
        for text in texts:
            for p in "?,.":
                text = text.replace(p, f" {p} ")
            assert set(text.lower().split()) <= words, text


def test_gates():
    prior = dict.fromkeys(QUESTION_TYPES, 0.2) | {"presence": 0.5, "gated_mean": 0.28}
    good = {"colour": 0.9, "position": 0.8, "presence": 0.9, "count": 0.5, "background": 0.6}
    good |= {"shape": 0.1, "gated_mean": float(np.mean(list(good.values())))}
    acc = {"vlm": good, "prior": prior, "shuffled": dict(prior)}
    assert all(g.passed for g in gates(acc))
    acc["shuffled"] = good  # answers that do not depend on the image would fail
    assert gates(acc)[-1].passed is False
    acc["vlm"] = good | {"count": 0.2}
    assert [g for g in gates(acc) if g.name.startswith("count")][0].passed is False


def test_answer_normalisation():
    assert _answer(" Top Left.") == "top left" and _answer("yes?") == "yes"


def test_report_holds_the_gates_in_markdown_and_json(tmp_path):
    import json

    from openvision3.understanding.demo import write_report

    good = {"colour": 0.9, "position": 0.8, "presence": 0.9, "count": 0.5, "background": 0.6}
    good |= {"shape": 0.1, "gated_mean": 0.74}
    prior = dict.fromkeys(good, 0.2) | {"presence": 0.5, "gated_mean": 0.28}
    acc = {"vlm": good | {"position": 0.5}, "prior": prior, "shuffled": dict(prior)}
    result = {
        "accuracy": acc,
        "count": dict.fromkeys(QUESTION_TYPES, 8),
        "examples": [
            {"image": 0, "type": "colour", "question": "q?", "answer": "red", "vlm": "red"}
        ],
        "seconds": dict.fromkeys(("cache", "stage1", "stage2", "eval", "total"), 1.0),
        "val_size": 8,
        "resolution": 64,
    }
    text = write_report(tmp_path, result, gates(acc)).read_text()
    assert "| position accuracy | 0.5 | >= 0.556 | **no** |" in text
    assert "| colour accuracy | 0.9 | >= 0.625 | yes |" in text
    assert "All checks passed: **no**." in text and "| shape (not gated) |" in text
    out = json.loads((tmp_path / "report.json").read_text())
    assert out["passed"] is False and out["accuracy"] == acc
    by = {c["check"]: c for c in out["checks"]}
    assert by["position accuracy"]["passed"] is False and by["count above its prior"]["passed"]
