"""The trainer's evaluation and ``ov3 eval`` are one protocol: on the same model and images they
report the same numbers under the same names.

The training side runs as the trainer does (``Trainer.fit`` -> export ``final/``, then
``OpenVision3Task.evaluate`` inside the trainer's bf16 autocast) with tokenisation settings of
its own (short text and caption contexts); ``ov3 eval`` gets only the data's identity and the
image count, as a user would pass them.
"""

import json
import math

import numpy as np
from PIL import Image

from openvision3.configs import get_preset
from openvision3.data.loader import DataConfig
from openvision3.data.synthetic.world import SyntheticWorld
from openvision3.evaluation import command
from openvision3.evaluation.captioning import normalize_caption
from openvision3.evaluation.runner import flat_metrics
from openvision3.evaluation.suite import evaluate_model
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.ov3.config import OV3StageConfig, peak_lr
from openvision3.ov3.task import OpenVision3Task
from openvision3.pretrained import save_pretrained
from openvision3.train.trainer import Trainer

NUM_IMAGES, BATCH = 6, 4  # 4 + 2: a short last batch


def _same(a: dict, b: dict, keys) -> None:
    """Equal values (NaN in memory is None in results.json)."""
    nan_as_none = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    for k in keys:
        assert nan_as_none(a[k]) == nan_as_none(b[k]), (k, a[k], b[k])


# An untrained model's captions share no word with the references, so every caption score is
# 0 whatever the references are. Both paths here extend each real greedy caption (decoded as
# usual, from the image) with a sentence of the world's grammar, so BLEU-4 and CIDEr are
# positive and move with the references.
WORLD_SENTENCE = (
    "there is a large orange heart in the top right , a small red hexagon below and to the "
    "left of it , on a striped grey background ."
)


def _wordy_captions(monkeypatch):
    caption = OpenVision3.caption

    def wordy(self, images, max_len=None, beam_size=1):
        return [f"{c} {WORLD_SENTENCE}" for c in caption(self, images, max_len, beam_size)]

    monkeypatch.setattr(OpenVision3, "caption", wordy)


def _train(run):
    """A 2-step smoke run (bf16 autocast, texts cut to 16 tokens) and its final evaluation."""
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run)
    cfg.train.stages = [
        OV3StageConfig(resolution=32, steps=2, batch_size=4, lr=peak_lr(0.05, 4), warmup_steps=1)
    ]
    cfg.train.precision = "bf16"  # the trainer evaluates inside this autocast
    cfg.train.ckpt_every = 2
    cfg.data.text_context = cfg.data.caption_context = 16  # synthetic captions are longer
    cfg.eval.num_images, cfg.eval.batch_size = NUM_IMAGES, BATCH
    return cfg, Trainer(cfg).fit()


def test_training_evaluation_equals_ov3_eval(tmp_path, monkeypatch):
    _wordy_captions(monkeypatch)
    run = tmp_path / "run"
    cfg, in_training = _train(run)
    out = tmp_path / "eval"
    argv = ["all", "--model", str(run / "final"), "--device", "cpu", "--out-dir", str(out),
            "--data.source", "synthetic",
            "--data.synthetic.train-size", str(cfg.data.synthetic.train_size),
            "--data.synthetic.val-size", str(cfg.data.synthetic.val_size),
            "--num-images", str(NUM_IMAGES), "--batch-size", str(BATCH),
            "--reconstruction.lpips", "off", "--reconstruction.rfid", "off",
            "--linear-probe.train-images", "8", "--linear-probe.probe.max-iter", "5"]  # fmt: skip
    assert command.main(argv) == 0
    standalone = json.loads((out / "results.json").read_text())
    train_m, eval_m = in_training["metrics"], standalone["metrics"]
    expected = {
        "zero_shot_top1", "zero_shot_top5", "retrieval_i2t_r1", "retrieval_t2i_r1",
        "retrieval_i2t_r10", "rec_psnr", "rec_ssim", "caption_bleu4", "caption_cider",
        "caption_colour_accuracy", "caption_shape_accuracy",
    }  # fmt: skip
    assert expected <= set(train_m), sorted(train_m)
    # Every in-training name is an ``ov3 eval`` name (eval adds the linear probe).
    assert set(train_m) <= set(eval_m), sorted(set(train_m) - set(eval_m))
    assert train_m["rec_count"] == train_m["caption_count"] == NUM_IMAGES
    assert train_m["caption_bleu4"] > 0 and train_m["caption_cider"] > 0
    _same(train_m, eval_m, set(train_m))
    # The same protocol, not merely the same numbers: the settings of every task agree.
    for task, result in in_training["tasks"].items():
        assert result["settings"] == standalone["tasks"][task]["settings"], task
    assert in_training["settings"]["resolution"] == standalone["config"]["resolution"] == 32
    assert in_training["captions"] == standalone["tasks"]["captioning"]["samples"][:2]
    # The in-training files are ``ov3 eval``'s: the same results.json keys and report.
    written = json.loads((run / "eval" / "results.json").read_text())
    assert written["metrics"].keys() == train_m.keys()
    assert (run / "eval" / "report.md").is_file()


def test_references_are_whole_captions_whatever_the_training_context(tmp_path):
    """The training run's caption_context (the demo's 24 tokens) does not cut the references."""
    model = OpenVision3(model_config("ov3-mu"))
    cfg = get_preset("demo_smoke").eval
    cfg.num_images, cfg.batch_size = NUM_IMAGES, BATCH
    cfg.zero_shot = cfg.reconstruction = False
    cfg.caption_samples = NUM_IMAGES
    runs = []
    for context in (8, 32):
        data = DataConfig(source="synthetic", text_context=context, caption_context=context)
        runs.append(evaluate_model(model, data, cfg, 32))
    short, long = runs
    _same(short["metrics"], long["metrics"], set(short["metrics"]))
    world = SyntheticWorld(data.synthetic.seed)
    whole = [normalize_caption(world.sample("val", i, 32)["caption"]) for i in range(NUM_IMAGES)]
    assert [normalize_caption(s["reference"]) for s in short["captions"]] == whole
    assert len(whole[0].split()) > 8  # longer than the short context


def _image_folder(root, classes, per_class=3):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "val" / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "val" / c / f"{i}.png")


def test_folder_zero_shot_uses_ov3_evals_names_and_templates(tmp_path):
    """On a labelled folder the trainer used raw folder names and one template; now both paths
    use ``ov3 eval``'s ("golden retriever", OpenAI's 80 templates) and skip the text tasks."""
    _image_folder(tmp_path / "data", ["golden_retriever", "tabby_cat", "tree_frog"])
    model = OpenVision3(model_config("ov3-mu"))
    save_pretrained(model, str(tmp_path / "model"), resolution=32)
    cfg = get_preset("demo_smoke").eval
    cfg.num_images, cfg.batch_size = 0, BATCH
    data = DataConfig(source="folder", path=str(tmp_path / "data"))
    task_cfg = get_preset("demo_smoke")
    task_cfg.data, task_cfg.eval = data, cfg
    task_cfg.train.stages = [
        OV3StageConfig(resolution=32, steps=1, batch_size=4, lr=peak_lr(0.1, 4))
    ]
    in_training = OpenVision3Task(task_cfg).evaluate(model, None, None)
    out = tmp_path / "eval"
    argv = ["all", "--model", str(tmp_path / "model"), "--device", "cpu", "--out-dir", str(out),
            "--data.source", "folder", "--data.path", str(tmp_path / "data"),
            "--batch-size", str(BATCH), "--reconstruction.lpips", "off",
            "--reconstruction.rfid", "off"]  # fmt: skip
    assert command.main(argv) == 0
    standalone = json.loads((out / "results.json").read_text())
    zs = in_training["tasks"]["zero-shot"]
    assert zs["settings"] == standalone["tasks"]["zero-shot"]["settings"]
    assert zs["settings"]["classes"] == 3 and len(zs["settings"]["templates"]) == 80
    assert "folder names" in zs["settings"]["metadata"]
    assert list(zs["per_class"]) == ["golden retriever", "tabby cat", "tree frog"]
    assert set(in_training["skipped"]) == {"retrieval", "captioning"}
    _same(in_training["metrics"], standalone["metrics"], set(in_training["metrics"]))
    assert in_training["metrics"]["zero_shot_count"] == 9


def test_flat_metrics_names():
    tasks = {
        "reconstruction": {"metrics": {"psnr": 30.0}},
        "zero-shot": {"metrics": {"top1": 0.5}},
        "captioning": {"metrics": {"bleu4": 0.1}},
        "linear-probe": {"metrics": {"top1": 0.2}},
    }
    assert flat_metrics(tasks) == {
        "rec_psnr": 30.0,
        "zero_shot_top1": 0.5,
        "caption_bleu4": 0.1,
        "linear_probe_top1": 0.2,
    }
