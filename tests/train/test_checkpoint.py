import copy
import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from openvision3.train.checkpoint import (
    clean_key,
    decode,
    encode,
    find_latest,
    load_checkpoint,
    save_checkpoint,
    store,
)
from openvision3.train.ema import EMA
from openvision3.train.optim import OptimConfig, build_optimizer, build_scheduler
from openvision3.wrappers import unwrap_model

FILES = {
    "model.safetensors",
    "optimizer.safetensors",
    "optimizer.json",
    "ema.safetensors",
    "ema.json",
    "state.json",
}


class Toy(nn.Module):
    """Tied embedding/head, dropout (consumes RNG), a norm and a persistent buffer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.norm = nn.LayerNorm(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, ids):
        self.seen += ids.numel()
        return self.head(self.drop(self.norm(self.embed(ids))))


def _setup():
    model = Toy()
    opt = build_optimizer(model, OptimConfig(), lr=1e-2)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    return model, opt, sched, EMA(model, decay=0.9)


def _train(model, opt, sched, ema, steps):
    ids = torch.arange(12).remainder(6).view(3, 4)
    for _ in range(steps):
        loss = model(ids).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)


def _draws():
    return torch.rand(3), random.random(), np.random.rand(2)


def _assert_same(a, b):
    """Deep equality with exact tensors and exact container types (tuple stays tuple)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_save_load_restores_everything_exactly(tmp_path):
    model, opt, sched, ema = _setup()
    _train(model, opt, sched, ema, 3)
    state = {
        "samples_seen": 36,
        "stage": 0,
        "data": {"shard": 2, "offset": 5},
        "config": {"a": [1]},
    }
    path = save_checkpoint(tmp_path, 3, model, opt, sched, ema, state=state)
    saved = copy.deepcopy(
        (model.state_dict(), opt.state_dict(), sched.state_dict(), ema.state_dict())
    )
    draws = _draws()
    _train(model, opt, sched, ema, 2)  # dropout consumes RNG: resume must restore it
    reference = copy.deepcopy(model.state_dict())

    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    model2, opt2, sched2, ema2 = _setup()
    got = load_checkpoint(path, model2, opt2, sched2, ema2)
    assert got == {"step": 3, **state}
    _assert_same(model2.state_dict(), saved[0])
    _assert_same(opt2.state_dict(), saved[1])
    _assert_same(sched2.state_dict(), saved[2])
    _assert_same(ema2.state_dict(), saved[3])
    assert model2.head.weight is model2.embed.weight  # tying survives
    draws2 = _draws()
    assert torch.equal(draws[0], draws2[0]) and draws[1] == draws2[1]
    assert np.array_equal(draws[2], draws2[2])
    _train(model2, opt2, sched2, ema2, 2)
    _assert_same(model2.state_dict(), reference)  # 3 + 2 steps == 5 steps


def test_checkpoint_holds_only_tensors_and_json(tmp_path):
    model, opt, sched, ema = _setup()
    path = save_checkpoint(tmp_path, 7, model, opt, sched, ema, state={"samples_seen": 0})
    assert path == tmp_path / "checkpoints" / "step_00000007"
    assert {p.name for p in path.iterdir()} == FILES
    for f in path.iterdir():
        if f.suffix == ".json":
            json.loads(f.read_text())
        else:
            load_file(str(f))
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000007"
    assert json.loads((path / "state.json").read_text())["format"] == "single"


def test_optimizer_round_trip_identical_next_step(tmp_path):
    model, opt, sched, ema = _setup()
    _train(model, opt, sched, ema, 2)
    tensors = {}
    tree = json.loads(json.dumps(encode(opt.state_dict(), tensors)))
    model2 = copy.deepcopy(model)
    opt2 = build_optimizer(model2, OptimConfig(), lr=1.0)
    opt2.load_state_dict(decode(tree, {k: v.clone() for k, v in tensors.items()}))
    _assert_same(opt2.state_dict(), opt.state_dict())
    for m, o in ((model, opt), (model2, opt2)):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        o.step()
    _assert_same(model2.state_dict(), model.state_dict())


def test_encode_decode_tags():
    obj = {"t": (1, 2.5), 3: [None, True, "s"], "__x": torch.ones(2)}
    tensors = {}
    tree = json.loads(json.dumps(encode(obj, tensors)))
    assert list(tensors) == ["__x"]
    _assert_same(decode(tree, tensors), obj)
    with pytest.raises(TypeError):
        encode({"f": object()}, {})


def test_prefixes_stripped_and_wrapped_load(tmp_path):
    model = Toy()
    wrapped = nn.DataParallel(torch.compile(model))
    assert unwrap_model(wrapped) is model
    assert clean_key("module._orig_mod.blocks.0._orig_mod.attn.weight") == "blocks.0.attn.weight"
    assert clean_key("layers.0._checkpoint_wrapped_module.fc.bias") == "layers.0.fc.bias"
    path = save_checkpoint(tmp_path, 1, wrapped)
    keys = set(load_file(str(path / "model.safetensors")))
    assert keys == set(Toy().state_dict())  # both tied names, no wrapper prefixes
    # A model whose inner block is compiled on its own (names "..._orig_mod...") still loads.
    target = Toy()
    target.norm = torch.compile(target.norm)
    assert "norm._orig_mod.weight" in target.state_dict()
    load_checkpoint(path, target)
    assert torch.equal(target.norm._orig_mod.weight, model.norm.weight)
    assert torch.equal(target.embed.weight, model.embed.weight)


def test_interrupted_save_is_ignored(tmp_path, monkeypatch):
    model, opt, sched, ema = _setup()
    save_checkpoint(tmp_path, 2, model, opt, sched, ema)
    # A crash while writing state.json of step 4 ...
    real = store.write_json

    def crash(path, obj):
        if path.name == "state.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(store, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, model, opt, sched, ema)
    monkeypatch.undo()
    # ... and a leftover half-written directory of another process.
    junk = tmp_path / "checkpoints" / "step_00000006.tmp-999"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\x00\x01half")
    (tmp_path / "checkpoints" / "step_00000008").mkdir()  # partial copy: no state.json
    names = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert any(n.startswith("step_00000004.tmp-") for n in names)
    assert find_latest(tmp_path) == tmp_path / "checkpoints" / "step_00000002"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert find_latest(tmp_path / "nowhere") is None


def test_keep_last_prunes_and_resave(tmp_path):
    model = Toy()
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, model, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000003", "step_00000004"]
    with torch.no_grad():
        model.norm.weight.fill_(3.0)
    save_checkpoint(tmp_path, 4, model, keep_last=2)  # same step again replaces it
    assert torch.equal(
        load_file(str(find_latest(tmp_path) / "model.safetensors"))["norm.weight"],
        torch.full((4,), 3.0),
    )


def test_bad_arguments(tmp_path):
    model = Toy()
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, model, state={"x": object()})
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        save_checkpoint(tmp_path, 1, model, format="zip")
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, 1, model, keep_last=0)
    assert find_latest(tmp_path) is None
    path = save_checkpoint(tmp_path, 1, model)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path, Toy(), ema=EMA(Toy()))


def test_exports_load_at_the_resolution_they_were_last_trained_at(tmp_path):
    """The trainer's ``final`` export and ``ov3 export`` of each checkpoint record the
    resolution of the last stage that ran; ``load`` runs there, not at the position grid's
    default (256 px for ov3-mu)."""
    from openvision3.configs import get_preset
    from openvision3.inference.api import load
    from openvision3.ov3.config import EvalConfig, OV3StageConfig, peak_lr
    from openvision3.train.export import export_checkpoint
    from openvision3.train.trainer import Trainer

    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(tmp_path / "run")
    cfg.train.stages = [
        OV3StageConfig(resolution=32, steps=1, batch_size=2, lr=peak_lr(0.05, 2)),
        OV3StageConfig(resolution=64, steps=1, batch_size=2, lr=peak_lr(0.05, 2)),
    ]
    cfg.train.ckpt_every, cfg.train.keep_last = 1, 2
    cfg.eval = EvalConfig(
        num_images=2, zero_shot=False, retrieval=False, reconstruction=False, captioning=False
    )
    Trainer(cfg).fit()
    first, last = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    exports = {
        tmp_path / "run" / "final": 64,
        export_checkpoint(last, tmp_path / "last"): 64,
        export_checkpoint(first, tmp_path / "first"): 32,  # stopped after the 32 px stage
    }
    for path, resolution in exports.items():
        pipe = load(str(path), device="cpu")
        assert pipe.resolution == resolution, path
        tokens = pipe.encode(torch.rand(1, 3, 40, 48) * 2 - 1)
        assert tokens.shape[1] == (resolution // 16) ** 2
