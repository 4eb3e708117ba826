"""``Task.synthetic_batch`` (what ``ov3 bench`` feeds the engine) has the keys, shapes and dtypes
of the batches each family's real loader yields; and the benchmarks' engine
(``synthetic_engine``) takes the trainer's own step: the same loss and the same weights after
it, on the same batch and seed."""

import dataclasses
import json

import pytest
import torch

from openvision3.configs import get_preset
from openvision3.train.trainer import Trainer, synthetic_engine


def structure(batch: dict) -> dict:
    """key -> (shape, dtype) of a tensor, or (list, length)."""
    return {
        k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else (type(v).__name__, len(v))
        for k, v in batch.items()
    }


def ov3_smoke(run_dir) -> object:
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run_dir)
    stage = dataclasses.replace(cfg.train.stages[0], steps=1, batch_size=2, warmup_steps=0)
    cfg.train.stages, cfg.train.log_every, cfg.train.ema_decay = [stage], 1, 0.9
    return cfg


def test_ov3_synthetic_batch_is_the_loaders(tmp_path):
    cfg = ov3_smoke(tmp_path / "run")
    task, stage = cfg.build_task(), cfg.train.stages[0]
    real = next(iter(task.build_loader(stage, 2, 0, 1)))
    real.pop("label", None)  # the synthetic world's class, read by evaluation only
    fake = task.synthetic_batch(stage)
    assert structure(fake) == structure(real)
    assert fake["images"].min() >= -1 and fake["images"].max() <= 1
    assert (fake["text"][:, 0] == real["text"][:, 0]).all()  # SOT first, as the tokenizer
    assert not torch.equal(fake["images"], task.synthetic_batch(stage, seed=1)["images"])


def test_generation_synthetic_batch_is_the_token_loaders(tmp_path):
    from tests.generation.conftest import write_cache
    from tests.generation.test_task import smoke

    write_cache(tmp_path / "tokens")
    cfg = smoke(tmp_path / "run", tmp_path / "tokens")
    task, stage = cfg.build_task(), cfg.train.stages[0]
    real = next(iter(task.build_loader(stage, 3, 0, 1)))
    fake = task.synthetic_batch(stage, 3)
    assert structure(fake) == structure(real)
    assert fake["y"].max() < cfg.model.num_classes


def test_llava_synthetic_batch_is_the_collated_conversations():
    pytest.importorskip("transformers")
    from openvision3.understanding.templates import IGNORE_INDEX

    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    task, stage = cfg.build_task(), cfg.train.stages[0]
    model = task.build_model()
    real = next(iter(task.build_loader(stage, 2, 0, 1)))
    fake = task.synthetic_batch(stage, 2)
    have, want = structure(fake), structure(real)
    assert have.keys() == want.keys()
    for k in have:  # conversations are padded to the longest: L is the data's limit here
        (fake_shape, fake_dtype), (real_shape, real_dtype) = have[k], want[k]
        assert fake_dtype == real_dtype and len(fake_shape) == len(real_shape), k
        assert fake_shape[0] == real_shape[0] and fake_shape[2:] == real_shape[2:], k
    assert fake["input_ids"].shape[1] == cfg.data.max_length >= real["input_ids"].shape[1]
    image = model.config.image_token_id
    n = model.config.vision_config.num_image_tokens
    assert ((fake["input_ids"] == image).sum(1) == (real["input_ids"] == image).sum(1)).all()
    assert (fake["labels"][:, : 1 + n] == IGNORE_INDEX).all()
    with torch.no_grad():  # the model takes it as it is
        out = model(**{k: v for k, v in fake.items() if k != "labels"})
    assert out.logits.shape[:2] == fake["input_ids"].shape


def test_the_benchmarks_step_is_the_trainers_step(tmp_path):
    """One step of ``Trainer.fit`` and one ``train_step`` of the benchmarks' engine on the
    same first batch of the loader: the same loss and bit-identical weights."""
    cfg = ov3_smoke(tmp_path / "run")
    cfg.train.stop_at = 1  # stop after the step: no export or evaluation
    trained = Trainer(cfg)
    trained.fit()
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])

    bench, _ = synthetic_engine(ov3_smoke(tmp_path / "bench"), torch.device("cpu"))
    stage = bench.cfg.train.stages[0]
    batch = next(iter(bench.task.build_loader(stage, stage.batch_size, 0, 1)))
    loss = bench.train_step(batch)["loss"]
    assert loss.item() == pytest.approx(logged["loss"], rel=1e-6)
    start = dict(Trainer(ov3_smoke(tmp_path / "start"), synthetic=True).model.named_parameters())
    pairs = zip(trained.model.named_parameters(), bench.model.named_parameters())
    for (name, a), (_, b) in pairs:
        assert torch.equal(a, b), name
    moved = [n for n, p in bench.model.named_parameters() if not torch.equal(p, start[n])]
    assert moved  # the step did update the weights
    assert trained.ema.num_updates == bench.ema.num_updates == 1
    for name, shadow in trained.ema.params.items():
        assert torch.equal(shadow, bench.ema.params[name]), name
    assert not (tmp_path / "bench").exists()  # the benchmarks' engine writes nothing
