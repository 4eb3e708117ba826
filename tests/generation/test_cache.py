"""The feature cache with tokens: round trip (tokens equal the encoder's, labels and extra
fields kept), and an interrupted part resumes after its complete shards without re-encoding."""

import os

import torch
from PIL import Image

from openvision3.data.latents import FeatureCache, read_features
from openvision3.data.synthetic.source import SyntheticSource
from openvision3.data.synthetic.world import SyntheticConfig
from openvision3.data.transforms import pil_to_tensor
from tests.generation.conftest import GridTokens, tiny_vae, write_cache


def test_round_trip(token_cache):
    d = read_features(str(token_cache), "train")
    assert d["tokens"].shape == (24, 16, 16)
    assert d["meta"]["tokens"]["grid"] == [4, 4] and d["meta"]["images"] is False
    assert d["keys"][:2] == ["train-00000000", "train-00000001"]
    assert [r["small_label"] for r in d["records"]] == [i % 5 for i in range(24)]
    source = SyntheticSource(SyntheticConfig(train_size=24, val_size=8), "train", 32)
    x = torch.stack([pil_to_tensor(Image.fromarray(source.load(i)["image"])) for i in (0, 13)])
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        want = GridTokens()(tiny_vae().encode(x))
    torch.testing.assert_close(d["tokens"][[0, 13]], want, rtol=1e-4, atol=1e-4)
    assert d["captions"][0] and d["alt_texts"][0]
    cache = FeatureCache(str(token_cache), "train")
    assert len(cache) == 24 and torch.equal(cache[5]["tokens"], d["tokens"][5])


def test_interrupted_part_resumes(tmp_path):
    full = write_cache(tmp_path / "full")
    part = tmp_path / "part"
    write_cache(part)
    os.remove(part / "train-000.json")  # interrupted: no meta, and the last shard lost
    os.remove(part / "train-000-000002.tar")
    enc = GridTokens()
    meta = write_cache(part, encoder=enc)
    assert enc.calls == 8 + 1  # the lost shard's samples again, and the one-sample shape probe
    assert meta["written"] == full["written"] == 24 and meta["shards"] == full["shards"]
    a, b = read_features(str(tmp_path / "full"), "train"), read_features(str(part), "train")
    assert a["keys"] == b["keys"] and torch.equal(a["tokens"], b["tokens"])
