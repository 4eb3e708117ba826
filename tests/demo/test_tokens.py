"""The demo run's one token cache (``<run>/tokens``), shared by the generation and understanding
demos: written once, kept when it matches, rebuilt when its size or resolution does not, each
sample labelled with its scene's colour x cell."""

import json
import types

from openvision3.data.latents import read_features
from openvision3.data.synthetic.tokens import (
    NUM_COLOR_CELLS,
    cache_demo_tokens,
    color_cell,
    run_tokens,
)
from openvision3.data.synthetic.world import CELL_NAMES, COLORS, SyntheticConfig, SyntheticWorld
from tests.generation.conftest import GridTokens, tiny_vae

RES = 32


def _model():
    return types.SimpleNamespace(vae=tiny_vae(), encoder=GridTokens())


def test_color_cell_labels_the_main_object():
    world = SyntheticWorld(0)
    assert NUM_COLOR_CELLS == len(COLORS) * len(CELL_NAMES) == 72
    for i in range(20):
        main = world.scene("train", i).objects[0]
        label = color_cell(world, f"train-{i:08d}")
        assert divmod(label, len(CELL_NAMES)) == (list(COLORS).index(main.color), main.cell)


def test_one_cache_per_run_kept_when_it_matches_and_rebuilt_when_not(tmp_path):
    syn, model = SyntheticConfig(seed=0), _model()
    out = run_tokens(str(tmp_path))
    assert out == str(tmp_path / "tokens")
    cache_demo_tokens(model, syn, out, RES, train=12, val=4)
    calls = model.encoder.calls
    assert calls >= 16
    cache_demo_tokens(model, syn, out, RES, train=12)  # the understanding demo: no val asked
    assert model.encoder.calls == calls  # nothing encoded again; the val split stays
    assert json.loads((tmp_path / "tokens" / "val-000.json").read_text())["written"] == 4
    feats = read_features(out, "train")
    world = SyntheticWorld(0)
    assert [r["color_cell"] for r in feats["records"]] == [
        color_cell(world, k) for k in feats["keys"]
    ]
    cache_demo_tokens(model, syn, out, RES, train=8)  # another size: the train split is rebuilt
    assert model.encoder.calls >= calls + 8
    assert len(read_features(out, "train")["keys"]) == 8
