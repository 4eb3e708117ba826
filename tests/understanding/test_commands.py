"""``ov3 vlm build | chat | answer`` and ``ov3 eval vqa`` on a tiny saved VLM."""

import json

import pytest

pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from openvision3.cli import main  # noqa: E402
from openvision3.pretrained import save_pretrained
from openvision3.understanding.command import vqa_scores  # noqa: E402


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from openvision3.understanding.tiny import mu_openvision3

    root = tmp_path_factory.mktemp("vlm")
    save_pretrained(mu_openvision3(), str(root / "ov3"))
    assert (
        main(
            [
                "vlm",
                "build",
                "--vision",
                str(root / "ov3"),
                "--llm",
                "tiny",
                "--out",
                str(root / "vlm"),
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    Image.new("RGB", (40, 24), (200, 30, 30)).save(root / "red.png")
    rows = [
        {"image": "red.png", "question": "what colour is it?", "answer": ["red", "red", "red"]}
    ] * 3
    (root / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_chat_answer_and_eval(vlm_dir, capsys):
    vlm = str(vlm_dir / "vlm")
    assert (
        main(
            ["vlm", "chat", vlm, str(vlm_dir / "red.png"), "what colour?", "--max-new-tokens", "2"]
        )
        == 0
    )
    out = vlm_dir / "answers.jsonl"
    assert (
        main(
            ["vlm", "answer", vlm, str(vlm_dir / "q.jsonl"), "--out", str(out), "--batch-size", "2"]
        )
        == 0
    )
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == [0, 1, 2] and len({a["answer"] for a in answers}) == 1
    capsys.readouterr()
    assert main(["eval", "vqa", vlm, str(vlm_dir / "q.jsonl"), "--max-new-tokens", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["count"] == 3 and 0 <= metrics["vqa_accuracy"] <= 1


def test_bad_input_is_one_line(vlm_dir, capsys):
    assert main(["vlm", "chat", str(vlm_dir / "vlm"), "missing.jpg", "q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jpg" in err[0]


def test_vqa_scores():
    assert vqa_scores("The Red.", ["red", "blue"]) == (1.0, 1 / 3)
    assert vqa_scores("red", ["red"] * 5) == (1.0, 1.0)
    assert vqa_scores("blue", ["red"]) == (0.0, 0.0)
