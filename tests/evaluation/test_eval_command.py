import json

import numpy as np
import pytest
import torch
from PIL import Image

from openvision3 import cli
from openvision3.evaluation.pairs import pair_batches, read_pairs
from openvision3.evaluation.retrieval import MultiCaptionRetrievalEvaluator
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import save_pretrained
from tests.evaluation._eval_fakes import TableModel, index_images


def _write_images(root, names, size=20):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        arr = np.full((size, size + 4, 3), 10 * i, dtype=np.uint8)
        Image.fromarray(arr).save(root / name)


def test_readers_agree_on_karpathy_coco_and_jsonl(tmp_path):
    _write_images(tmp_path / "val2014", ["a.jpg", "b.jpg", "c.jpg"])
    karpathy = {
        "images": [
            {"filepath": "val2014", "filename": "a.jpg", "split": "test",
             "sentences": [{"raw": "A dog."}, {"raw": "A brown dog. "}]},
            {"filepath": "val2014", "filename": "b.jpg", "split": "train",
             "sentences": [{"raw": "skip me"}]},
            {"filepath": "val2014", "filename": "c.jpg", "split": "test",
             "sentences": [{"raw": "A cat."}]},
        ]
    }  # fmt: skip
    coco = {
        "images": [
            {"id": 7, "file_name": "val2014/c.jpg"},
            {"id": 3, "file_name": "val2014/a.jpg"},
        ],
        "annotations": [
            {"image_id": 3, "caption": "A dog."},
            {"image_id": 7, "caption": "A cat."},
            {"image_id": 3, "caption": "A brown dog."},
        ],
    }
    (tmp_path / "karpathy.json").write_text(json.dumps(karpathy))
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    lines = [
        {"image": "val2014/a.jpg", "captions": ["A dog.", "A brown dog."]},
        {"image": "val2014/c.jpg", "caption": "A cat."},
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    expected = [("val2014/a.jpg", ("A dog.", "A brown dog.")), ("val2014/c.jpg", ("A cat.",))]
    for name in ("karpathy.json", "coco.json", "pairs.jsonl"):
        rows = read_pairs(str(tmp_path / name))
        assert [(r.key, r.captions) for r in rows] == expected, name
    rows = read_pairs(str(tmp_path / "karpathy.json"), split="")
    assert len(rows) == 3
    # Rank 1 of 2 takes image 1; images are short-side resized and centre-cropped.
    (batch,) = list(pair_batches(rows, 16, 4, rank=1, world_size=2))
    assert batch["images"].shape == (1, 3, 16, 16) and batch["index"].tolist() == [1]
    assert batch["key"] == ["val2014/b.jpg"] and batch["captions"] == [["skip me"]]


class _IdTokenizer:
    """``"t<j>"`` -> ids [[j]] (text j's row of the table)."""

    def __call__(self, texts):
        return torch.tensor([[int(t[1:])] for t in texts])


def test_multi_caption_retrieval_exact_on_identity_embeddings():
    e = torch.eye(4)
    # Image i -> e_i; captions (owner): t0 (0) = e0, t1 (0) = e1, t2 (1) = e1, t3 (2) = e3,
    # t4 (3) = e3. text->image: t1 ranks image 1 above its image 0, t3 ranks image 3 above
    # image 2 (rank 1 each); the rest rank 0. image->text: every image's best caption has no
    # caption strictly above it (image 1: t1 ties t2; image 2: all captions score 0).
    texts = torch.stack([e[0], e[1], e[1], e[3], e[3]])
    model = TableModel(e, texts)
    owner = [[0, 1], [2], [3], [4]]
    batches = [
        {"images": index_images([2, 0]), "index": torch.tensor([2, 0]),
         "captions": [[f"t{j}" for j in owner[2]], [f"t{j}" for j in owner[0]]]},
        {"images": index_images([3, 1]), "index": torch.tensor([3, 1]),
         "captions": [[f"t{j}" for j in owner[3]], [f"t{j}" for j in owner[1]]]},
    ]  # fmt: skip
    out = MultiCaptionRetrievalEvaluator(_IdTokenizer(), ks=(1, 2)).run(model, batches)
    assert out == {
        "i2t_r1": 1.0,
        "i2t_r2": 1.0,
        "t2i_r1": 3 / 5,
        "t2i_r2": 1.0,
        "count": 4,
        "captions": 5,
    }


def test_eval_all_end_to_end(tmp_path, random_inception):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    save_pretrained(OpenVision3(model_config("ov3-mu")), str(model_dir))
    argv = ["eval", "all", "--model", str(model_dir), "--device", "cpu",
            "--data.source", "synthetic", "--resolution", "32", "--batch-size", "3",
            "--num-images", "6", "--out-dir", str(out),
            "--reconstruction.lpips", "off", "--reconstruction.grid", "3",
            "--reconstruction.inception-weights", random_inception,
            "--reconstruction.stats-cache", str(tmp_path / "cache"),
            "--linear-probe.train-images", "16", "--linear-probe.probe.max-iter", "20"]  # fmt: skip
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {
        "reconstruction",
        "zero-shot",
        "retrieval",
        "captioning",
        "linear-probe",
    }
    assert results["skipped"] == {}
    rec = results["tasks"]["reconstruction"]["metrics"]
    assert rec["count"] == 6 and np.isfinite(rec["rfid"]) and 0 < rec["ssim"] < 1
    assert results["tasks"]["zero-shot"]["metrics"]["count"] == 6
    assert results["tasks"]["linear-probe"]["metrics"]["train_count"] == 16
    assert results["tasks"]["captioning"]["settings"]["decoding"] == "greedy"
    assert (
        results["model"]["config_name"] == "ov3-mu"
        and len(results["model"]["weights"]["sha256"]) == 64
    )
    assert results["model"]["model_card"]["model"] == "ov3-mu"
    assert results["data"]["source"] == "synthetic" and results["config"]["resolution"] == 32
    report = (out / "report.md").read_text()
    for png in ("reconstructions.png", "psnr_hist.png", "zero_shot_per_class.png", "retrieval.png",
                "linear_probe_l2.png"):  # fmt: skip
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert len((out / "reconstruction.csv").read_text().splitlines()) == 7
    assert len(list((tmp_path / "cache").glob("fid-ref-synthetic-*.npz"))) == 1


def test_named_task_the_model_cannot_do_is_an_error(tmp_path):
    cfg = model_config("ov3-mu")
    cfg.decoder = None
    save_pretrained(OpenVision3(cfg), str(tmp_path / "model"))
    argv = ["eval", "reconstruction", "--model", str(tmp_path / "model"), "--device", "cpu",
            "--resolution", "32", "--num-images", "2", "--out-dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ValueError, match="no decoder"):
        cli.main(argv)


def test_eval_reruns_into_one_out_dir(tmp_path, capsys):
    """Same options: replaced; other options or the user's file: refused in one line."""
    model_dir, out = tmp_path / "model", tmp_path / "out"
    save_pretrained(OpenVision3(model_config("ov3-mu")), str(model_dir))
    argv = ["eval", "zero-shot", "--model", str(model_dir), "--device", "cpu",
            "--data.source", "synthetic", "--batch-size", "3", "--num-images", "3",
            "--out-dir", str(out)]  # fmt: skip
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    assert cli.main([*argv[:-1], str(mine), "--resolution", "32"]) == 2
    assert (mine / "report.md").read_text() == "my notes"
    assert cli.main([*argv, "--resolution", "32"]) == 0
    assert cli.main([*argv, "--resolution", "32"]) == 0  # same options: computed again
    capsys.readouterr()
    assert cli.main([*argv, "--resolution", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resolution 32 -> 64" in err[0] and "--overwrite" in err[0], err
    assert json.loads((out / "results.json").read_text())["config"]["resolution"] == 32
    assert cli.main([*argv, "--resolution", "64", "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["resolution"] == 64
