"""OpenVision 3 on the engine's Task seam: freezing by name, stop-gradient at the tokens, and
``decoder_b2``: a decoder trained on a frozen encoder saved in the authors' released layout."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from openvision3.configs import get_preset
from openvision3.errors import ConfigError
from openvision3.losses.objective import Objective, ObjectiveConfig
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import read_released
from openvision3.train.trainer import Trainer
from tests.inference.test_released import upstream_vit, write_released


def _batch(n=4, res=32):
    g = torch.Generator().manual_seed(1)
    return {
        "images": torch.rand(n, 3, res, res, generator=g) * 2 - 1,
        "text": torch.randint(1, 400, (n, 8), generator=g),
        "caption": torch.randint(1, 400, (n, 8), generator=g),
    }


def _encoder_grads(model, objective, detach):
    model.zero_grad(set_to_none=True)
    loss, _ = objective(model(_batch(), detach=detach))
    loss.backward()
    return {n: p.grad for n, p in model.encoder.named_parameters()}


def test_stop_gradient_keeps_a_branch_off_the_encoder():
    torch.manual_seed(0)
    model = OpenVision3(model_config("ov3-mu"))
    full = Objective(ObjectiveConfig())
    und_only = Objective(ObjectiveConfig(rec_weight=0.0))
    # Reconstruction detached: the encoder's gradient is exactly the understanding losses'
    # (the decoder's noise is drawn after the encoder, so the draws match with the same seed).
    torch.manual_seed(1)
    stopped = _encoder_grads(model, full, ("reconstruction",))
    # The heads behind the stop still train: the decoder gets a gradient.
    assert model.decoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    torch.manual_seed(1)
    reference = _encoder_grads(model, und_only, ())
    for name in ("patch_embed.weight", "blocks.0.attn.qkv.weight"):
        torch.testing.assert_close(stopped[name], reference[name])
    torch.manual_seed(1)
    unstopped = _encoder_grads(model, full, ())  # without the stop the two differ
    assert not torch.allclose(unstopped["patch_embed.weight"], reference["patch_embed.weight"])
    # Every branch stopped: nothing reaches the blocks; the pooling norm and head still learn.
    grads = _encoder_grads(model, full, ("reconstruction", "contrastive", "caption"))
    assert all(grads[n] is None for n in grads if n.startswith(("blocks.", "patch_embed")))
    assert grads["head.weight"].abs().sum() > 0 and grads["norm.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="stop_gradient"):
        ObjectiveConfig(stop_gradient=("encoder",))


def _smoke(run_dir, **train):
    cfg = get_preset("demo_smoke")
    cfg.run_dir = str(run_dir)
    cfg.train.stages = cfg.train.stages[:1]
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_frozen_modules_are_bit_unchanged_and_hold_no_optimizer_state(tmp_path):
    cfg = _smoke(tmp_path)
    cfg.train.stages[0].freeze = ("encoder", "text.transformer.blocks.0")
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    frozen = [
        (n, p)
        for n, p in trainer.model.named_parameters()
        if n.startswith(("encoder.", "text.transformer.blocks.0."))
    ]
    assert frozen and not any(id(p) in in_optimizer for _, p in frozen)
    trainer.fit()
    after = trainer.model.state_dict()
    for name, _ in frozen:
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["decoder.head.weight"], after["decoder.head.weight"])
    assert not torch.equal(
        before["text.transformer.blocks.1.mlp.fc1.weight"],
        after["text.transformer.blocks.1.mlp.fc1.weight"],
    )
    with pytest.raises(ConfigError, match="freeze: no parameter under 'nothing'"):
        bad = _smoke(tmp_path / "bad")
        bad.train.stages[0].freeze = ("nothing",)
        Trainer(bad)


def _released_encoder(tmp_path):
    tmp_path.mkdir(parents=True)
    torch.manual_seed(0)
    return write_released(tmp_path, upstream_vit(width=64, layers=2, heads=1, grid=2, embed_dim=16))


def test_decoder_b2_smoke_trains_a_decoder_on_a_frozen_released_encoder(tmp_path):
    released = _released_encoder(tmp_path / "released")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "openvision3.cli", "train", "decoder_b2_smoke",
            "--train.init-from", str(released), "--run-dir", str(run)]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["encoder"]["pos_embed"] == "learned"  # the released architecture
    assert config["model"]["encoder"]["width"] == 64
    weights = load_file(run / "final" / "model.safetensors")
    _, sd = read_released(str(released))
    for key, value in sd.items():  # the encoder is the released one, bit for bit
        assert torch.equal(weights[f"encoder.{key}"], value), key
    assert any(k.startswith("decoder.") for k in weights)
    assert not any(k.startswith(("text.", "captioner.")) for k in weights)
    # The result reconstructs images through the inference command.
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(images / "red.png")
    out = tmp_path / "recon"
    proc = subprocess.run(
        [sys.executable, "-m", "openvision3.cli", "reconstruct", str(run / "final"), str(images),
         "--output", str(out), "--num-workers", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (recon,) = list(out.rglob("*.png"))
    assert Image.open(recon).size == (32, 32)  # the run's last (only) training resolution


def test_validate_changes_nothing_and_adopting_a_released_encoder_is_its_own_step(tmp_path):
    released = _released_encoder(tmp_path / "released")
    cfg = get_preset("decoder_b2_smoke")
    cfg.train.init_from = str(released)
    before = copy.deepcopy(cfg)
    cfg.validate()
    assert cfg == before
    cfg.resolve_inputs()  # what Trainer does once, before it builds the model
    assert cfg.model.encoder.width == 64 and cfg.model.encoder.pos_embed == "learned"
    assert cfg.model.caption.image_width == 64 and cfg.model.text.embed_dim == 16
    adopted = copy.deepcopy(cfg)
    cfg.resolve_inputs()  # once or twice: the same architecture
    assert cfg == adopted
