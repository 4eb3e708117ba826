"""``ov3 train`` of a generator takes its token shape (``--model.in-channels``,
``--model.input-size``) from the token cache's metadata unless the command line sets it; a
value set on the command line that disagrees with the cache is one line naming the flag."""

import pytest
import torch
from torch import nn

from openvision3 import cli
from openvision3.configs.parse import parse_experiment
from openvision3.errors import ConfigError
from tests.generation.conftest import write_cache


class WideTokens(nn.Module):
    """(B, 16, 4, 4) latents -> (B, 16, 32) tokens: D = 32, unlike the smoke preset's 16."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, -z], 1).flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide")
    write_cache(out, count=8, encoder=WideTokens())
    return str(out)


def parse(*flags: str):
    return parse_experiment("demo_generation_smoke", list(flags), "ov3 train")


def test_token_shape_comes_from_the_cache(cache):
    by_hand = parse("--data.cache", cache, "--model.in-channels", "32").model
    cfg = parse("--data.cache", cache)
    assert (cfg.model.in_channels, cfg.model.input_size) == (32, 4)
    assert cfg.model == by_hand  # the model a user got by passing the flag


def test_a_conflicting_flag_names_itself_and_the_cache_value(cache, capsys):
    with pytest.raises(ConfigError, match=r"--model.in-channels 16 .* in-channels 32"):
        parse("--data.cache", cache, "--model.in-channels", "16")
    with pytest.raises(ConfigError, match=r"--model.input-size 2 .* input-size 4"):
        parse("--data.cache", cache, "--model.input_size=2")
    argv = ["train", "demo_generation_smoke", "--data.cache", cache, "--model.in-channels", "16"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model.in-channels 16" in err and "32" in err


def test_a_missing_cache_is_one_line_naming_the_flag(tmp_path, capsys):
    argv = ["train", "demo_generation_smoke", "--data.cache", str(tmp_path / "none")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data.cache" in err and "Traceback" not in err
