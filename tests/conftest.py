import os

# A hub look-up retries for a minute before failing offline; tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Spawned workers and subprocesses import this repository's `tests` package first, even where an
# installed distribution ships a top-level `tests` package of its own (latex2sympy2 does).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def photo_data(tmp_path_factory):
    """Real photos in every documented data layout (tests/photos.py), plus ``vae/``: the
    packaged demo VAE as a diffusers folder (the stand-in for a local FLUX.1 VAE)."""
    import shutil

    from openvision3.models.vae import PACKAGED_VAES
    from tests.photos import write_photo_data

    root = write_photo_data(tmp_path_factory.mktemp("photos"))
    shutil.copytree(PACKAGED_VAES["ov3-demo-vae"], root / "vae")
    return root


PHOTO_TRAIN_SHRINK = [
    "--model-preset", "ov3-mu", "--data.num-workers", "2", "--eval.num-images", "8",
    "--eval.batch-size", "4",
    "--train.stages.0.steps", "2", "--train.stages.0.batch-size", "4",
    "--train.stages.0.warmup-steps", "1", "--train.stages.1.steps", "2",
    "--train.stages.1.batch-size", "4", "--train.stages.1.warmup-steps", "1",
]  # fmt: skip


@pytest.fixture(scope="session")
def fake_torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random LPIPS-VGG16 and Inception-v3 weights under
    their real file names (tests/fake_weights.py)."""
    from tests.fake_weights import write_metric_weights

    home = tmp_path_factory.mktemp("torch_home")
    write_metric_weights(home)
    return home


@pytest.fixture(scope="session")
def photo_run(tmp_path_factory, photo_data, fake_torch_home):
    """``ov3 train ov3_b2`` (both stages, shrunk to ov3-mu and 2 + 2 steps; LPIPS on in the
    second, with random VGG weights) on the photos' webdataset shards with the demo VAE;
    returns the run folder (``final/`` is the export)."""
    import os
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("photo_run") / "ov3_b2"
    args = [
        sys.executable, "-m", "openvision3.cli", "train", "ov3_b2",
        "--data.path", str(photo_data / "shards" / "{000000..000002}.tar"),
        "--model.vae.pretrained", str(photo_data / "vae"), "--run-dir", str(run),
        *PHOTO_TRAIN_SHRINK,
    ]  # fmt: skip
    env = dict(os.environ, TORCH_HOME=str(fake_torch_home))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return run
