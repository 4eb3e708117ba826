"""Real photographs end to end through the command line: train both stages of the paper's
recipe (shrunk), export, evaluate every task, then encode / reconstruct / caption / classify.

The photos are scikit-image's (tests/photos.py) in the documented layouts; each output is
checked for its shapes, counts, files and finite numbers, not only the exit code.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.photos import PHOTOS, WNIDS

pytestmark = pytest.mark.slow

RES = 64  # inference and evaluation resolution: a 4 x 4 token grid


def ov3(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "openvision3.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )
    assert proc.returncode == 0, f"ov3 {args[0]}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def finite_numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in finite_numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in finite_numbers(v)]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        assert math.isfinite(tree), tree
        return [float(tree)]
    return []


def test_train_two_stages(photo_run):
    rows = [json.loads(line) for line in (photo_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses][-1] == 4
    assert all(math.isfinite(r["loss"]) for r in losses)
    # The second stage (256 px) ran LPIPS (with random VGG weights, as the test's stand-in).
    assert any(r.get("lpips", 0) > 0 for r in losses if r["step"] > 2)
    config = json.loads((photo_run / "config.json").read_text())
    assert [s["resolution"] for s in config["train"]["stages"]] == [128, 256]
    assert config["data"]["source"] == "webdataset"
    final = load_file(photo_run / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())
    results = json.loads((photo_run / "results.json").read_text())
    assert finite_numbers(results["metrics"])


def test_export_equals_final(photo_run, tmp_path):
    ckpts = sorted((photo_run / "checkpoints").glob("step_*"))
    assert ckpts, "no checkpoint"
    ov3("export", ckpts[-1], tmp_path / "export")
    exported = load_file(tmp_path / "export" / "model.safetensors")
    final = load_file(photo_run / "final" / "model.safetensors")
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[k], final[k]) for k in final)


def test_eval_all(photo_run, photo_data, fake_torch_home, tmp_path):
    out = tmp_path / "eval"
    ov3(
        "eval", "all", "--model", photo_run / "final", "--out-dir", out,
        "--data.source", "folder", "--data.path", photo_data / "imagenet", "--split", "val",
        "--resolution", RES, "--batch-size", 4, "--linear-probe.train-split", "train",
        "--linear-probe.train-images", 0, "--reconstruction.lpips", "on",
        "--reconstruction.rfid", "on",
        env={"TORCH_HOME": str(fake_torch_home)},
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    n_val = 4 * len(WNIDS)
    assert m["zero_shot_count"] == n_val and m["rec_count"] == n_val
    assert 0.0 <= m["zero_shot_top1"] <= 1.0
    assert 0.0 <= m["linear_probe_top1"] <= 1.0
    for key in ("rec_psnr", "rec_ssim", "rec_lpips", "rec_rfid"):
        assert math.isfinite(m[key]), key
    assert finite_numbers(m)
    assert (out / "report.md").is_file()


def test_eval_pairs(photo_run, photo_data, tmp_path):
    coco = photo_data / "coco"
    for task, extra in (("retrieval", []), ("captioning", ["--captioning.beam-size", 2])):
        out = tmp_path / task
        ov3(
            "eval", task, "--model", photo_run / "final", "--out-dir", out,
            "--pairs.annotations", coco / "dataset_coco.json", "--pairs.images-root", coco,
            "--pairs.split", "test", "--resolution", RES, "--batch-size", 4, *extra,
        )  # fmt: skip
        m = json.loads((out / "results.json").read_text())["metrics"]
        assert finite_numbers(m)
        if task == "retrieval":
            assert 0.0 <= m["retrieval_i2t_r1"] <= m["retrieval_i2t_r5"] <= 1.0
        else:
            assert m["caption_count"] == 8  # the Karpathy "test" rows of the fixture


def test_inference_commands(photo_run, photo_data, tmp_path):
    model, images, n = photo_run / "final", photo_data / "images", len(PHOTOS)
    common = ["--resolution", RES, "--batch-size", 4, "--num-workers", 0]

    ov3("encode", model, images, "--output", tmp_path / "tokens", "--pooled", *common)
    shards = sorted((tmp_path / "tokens").glob("*.safetensors"))
    tokens = [load_file(s) for s in shards]
    count = sum(t["tokens"].shape[0] for t in tokens)
    assert count == n
    assert {tuple(t["tokens"].shape[1:]) for t in tokens} == {((RES // 16) ** 2, 32)}
    assert all(torch.isfinite(t["tokens"]).all() and "pooled" in t for t in tokens)

    ov3("reconstruct", model, images, "--output", tmp_path / "recon", *common)
    outs = sorted(p for p in (tmp_path / "recon").rglob("*.png"))
    assert len(outs) == n
    assert {Image.open(p).size for p in outs} == {(RES, RES)}

    ov3("caption", model, images, "--output", tmp_path / "captions", *common)
    rows = [
        json.loads(x) for x in (tmp_path / "captions" / "captions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == n and len({r["key"] for r in rows}) == n
    assert all(isinstance(r["caption"], str) for r in rows)

    labels = ["cat", "coffee", "rocket", "astronaut"]
    ov3("classify", model, images, "--output", tmp_path / "preds", "--labels", *labels,
        "--topk", len(labels), *common)  # fmt: skip
    preds = [
        json.loads(x) for x in (tmp_path / "preds" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(preds) == n
    for p in preds:
        assert {t["label"] for t in p["top"]} == set(labels)
        assert sum(t["prob"] for t in p["top"]) == pytest.approx(1.0, abs=1e-4)
    summary = json.loads((tmp_path / "preds" / "summary.json").read_text())
    assert not summary.get("skipped")
