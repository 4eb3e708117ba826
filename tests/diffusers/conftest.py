"""Tiny exports for the diffusers tests: an ``ov3-mu`` tokenizer export (tiny VAE saved in
vae/, 32 px -> 2 x 2 tokens of 32) and a generator export beside it (a random DiT-DH with
mixed-sign statistics), written in the layouts ``save_pretrained`` / ``GenerationTask.export``
write."""

import json

import pytest
import torch
from safetensors.torch import save_file

from openvision3.artefacts import KIND_KEY
from openvision3.dataclass_io import to_dict
from openvision3.generation.models import DiTDH, DiTDHConfig
from openvision3.generation.task import STATS_NAME, FlowConfig, GenerationConfig
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.presets import model_config
from openvision3.pretrained import save_pretrained
from tests.generation.conftest import tiny_vae

RES, CLASSES = 32, 5
DIT = DiTDHConfig(
    in_channels=32, input_size=2, width=32, depth=2, heads=2, head_width=48, head_depth=1,
    head_heads=2, num_classes=CLASSES, class_init_std=0.5,
)  # fmt: skip


def write_generator(out, decoder: str, seed: int = 1, names=("a", "b", "c", "d", "e")) -> str:
    """A generator export at ``out`` whose decoder is the tokenizer export ``decoder``."""
    torch.manual_seed(seed)
    model = DiTDH(DIT)
    for p in model.parameters():  # RAE's zero-init adaLN would make every velocity 0
        p.data.add_(torch.randn_like(p) * 0.05)
    out.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors")
    )
    stats = {"mean": torch.randn(32, 2, 2), "var": torch.rand(32, 2, 2) + 0.25}
    save_file(stats, str(out / STATS_NAME))
    # s = sqrt(C h w / 32) = 2: a real time shift on the tiny grid
    cfg = GenerationConfig(model=DIT, flow=FlowConfig(shift_base=32), class_names=list(names))
    meta = {KIND_KEY: "generation", "config": to_dict(cfg), "decoder": decoder, "card": {}}
    (out / "config.json").write_text(json.dumps(meta))
    return str(out)


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """{"tokenizer": dir, "generator": dir, "guide": dir}."""
    root = tmp_path_factory.mktemp("ov3diff")
    torch.manual_seed(0)
    save_pretrained(OpenVision3(model_config("ov3-mu"), vae=tiny_vae()).eval(), str(root / "ov3"))
    gen = write_generator(root / "gen", "../ov3")
    guide = write_generator(root / "guide", "../ov3", seed=2)
    return {"tokenizer": str(root / "ov3"), "generator": gen, "guide": guide}
