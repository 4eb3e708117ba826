"""Install by need: ``pip install openvision3`` (no extras) gives inference, and a command that
needs an extra says which one in one line.

The fast tests check the guards in this environment (``extras.py`` against pyproject.toml, and
the guard of every command). The slow test builds a fresh venv that holds only torch and
torchvision, installs the package without extras, encodes an export and runs ``ov3 train``.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from openvision3.cli import main
from openvision3.extras import EXTRA_MODULES
from openvision3.pretrained import save_pretrained

ROOT = Path(__file__).resolve().parents[1]
# distribution name (pyproject.toml) -> import name, where they differ
IMPORT_NAME = {
    "torch-fidelity": "torch_fidelity",
    "lmms-eval": "lmms_eval",
    "scikit-image": "skimage",
}


def extra_distributions(extras: dict, name: str) -> set[str]:
    """The distributions an extra installs, with ``openvision3[...]`` references expanded."""
    found = set()
    for req in extras[name]:
        dist = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        if dist == "openvision3":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                found |= extra_distributions(extras, inner.strip())
        else:
            found.add(dist)
    return found


def test_extras_module_table_mirrors_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name, modules in EXTRA_MODULES.items():
        # caps on what other packages install, not packages of their own
        dists = extra_distributions(extras, name) - {"pillow", "filelock"}
        assert {IMPORT_NAME.get(d, d) for d in dists} == set(modules), name
    assert set(EXTRA_MODULES) == set(extras) - {"dev"}
    dev = extra_distributions(extras, "dev")
    assert "lmms-eval" not in dev and {"pytest", "ruff", "scikit-image"} <= dev
    assert all(m in {IMPORT_NAME.get(d, d) for d in dev} for e in EXTRA_MODULES for m in
               EXTRA_MODULES[e] if e != "lmms")  # fmt: skip


@pytest.mark.parametrize(
    "argv, extra",
    [
        (["train", "demo_smoke"], "train"),
        (["demo", "--preset", "demo_smoke"], "train"),
        (["train-vae"], "train"),
        (["cache-latents", "demo_smoke", "--out", "x"], "train"),
        (["bench", "train"], "train"),
        (["eval", "all", "--model", "x"], "eval"),
    ],
)
def test_a_command_without_its_extra_names_it_in_one_line(argv, extra, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchmetrics" else real(name, *a),
    )
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f'pip install "openvision3[{extra}]"' in err and "torchmetrics" in err


ENCODE = """
import sys, torch, openvision3
model = openvision3.load(sys.argv[1], device="cpu")
out = model.encode(torch.rand(2, 3, 32, 32))
print(tuple(out.shape))
"""


@pytest.mark.slow
def test_core_install_runs_inference_and_names_the_train_extra(tmp_path):
    from openvision3.models.openvision3 import OpenVision3
    from openvision3.models.presets import model_config

    model_dir = str(tmp_path / "export")  # ov3-mu, random weights, its tiny VAE in vae/
    save_pretrained(OpenVision3(model_config("ov3-mu")), model_dir, card={"trained_on": "nothing"})
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    torch_pins = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
    ]
    subprocess.run(pip + torch_pins, check=True, timeout=1200)
    # Built from a copy: an in-tree build would leave build/ in the repository.
    package = tmp_path / "package"
    shutil.copytree(ROOT / "src", package / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, package / name)
    subprocess.run(pip + [str(package)], check=True, timeout=1200)
    python = str(venv / "bin" / "python")
    present = subprocess.run(
        [python, "-c", "import importlib.util as u; print([m for m in ('lpips', 'torchmetrics', "
         "'matplotlib', 'scipy', 'transformers', 'wandb') if u.find_spec(m)])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert present.stdout.strip() == "[]"

    env = {"HF_HUB_OFFLINE": "1", "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    enc = subprocess.run(
        [python, "-c", ENCODE, model_dir], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout.strip().startswith("(2, ")

    train = subprocess.run(
        [str(venv / "bin" / "ov3"), "train", "demo_smoke"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 1
    assert train.stderr.strip().count("\n") == 0
    assert 'pip install "openvision3[train]"' in train.stderr
