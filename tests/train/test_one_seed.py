"""One seed orders the data in every family: ``--train.seed`` reshuffles the training batches of
an OpenVision 3 run, a generator and a LLaVA alike (and the same seed gives the same order)."""

import pytest

from openvision3.configs import parse
from tests.generation.conftest import write_cache


def _first_batches(cfg, field: str, n: int = 2) -> list:
    """The first ``n`` values of ``field`` of the batches the engine would train on."""
    task = cfg.build_task()
    task.build_model()  # a LLaVA task takes its processor from the model it builds
    it = iter(task.build_loader(cfg.train.stages[0], 4, 0, 1))
    return [next(it)[field] for _ in range(n)]


def _same(a: list, b: list) -> bool:
    import torch

    if isinstance(a[0], list):
        return a == b
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def family_flags(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tokens")
    write_cache(cache)
    gen = ["--data.cache", str(cache), "--data.label-field", "small_label",
           "--model.num-classes", "5"]  # fmt: skip
    return {
        "demo_smoke": ([], "key"),  # OpenVision 3
        "demo_generation_smoke": (gen, "x"),
        "llava15_ov3_b2_stage1_smoke": ([], "pixel_values"),
    }


@pytest.mark.parametrize(
    "preset", ["demo_smoke", "demo_generation_smoke", "llava15_ov3_b2_stage1_smoke"]
)
def test_train_seed_orders_the_data(preset, family_flags, tmp_path):
    flags, field = family_flags[preset]

    def batches(seed: str) -> list:
        argv = [*flags, "--run-dir", str(tmp_path / seed), "--train.seed", seed]
        return _first_batches(parse.parse_experiment(preset, argv, f"ov3 train {preset}"), field)

    zero = batches("0")
    assert _same(zero, batches("0"))
    assert not _same(zero, batches("1"))
