"""The preset registry (``openvision3.configs``): one table of names over the families' own
``PRESETS``, each family imported only when one of its presets is asked for."""

import importlib
import subprocess
import sys

import pytest

from openvision3.configs import get_preset, preset_names
from openvision3.configs.presets import MODULES
from openvision3.errors import ConfigError


def test_the_table_names_exactly_the_families_presets():
    families = {}
    for module in set(MODULES.values()):
        for name in importlib.import_module(module).PRESETS:
            assert name not in families, f"{name} is a preset of two families"
            families[name] = module
    assert families == MODULES


def test_an_ov3_preset_imports_no_other_family():
    code = (
        "import sys\n"
        "from openvision3.configs import get_preset\n"
        "get_preset('demo_smoke', 'ov3-mu')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('openvision3.generation', "
        "'openvision3.understanding', 'transformers'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "hint"),
    [("demo_generation_smoke", "DiT-DH"), ("llava15_ov3_b2_stage1_smoke", "ov3 vlm build")],
)
def test_model_preset_is_refused_by_downstream_families_in_one_line(name, hint):
    with pytest.raises(ConfigError, match=hint):
        get_preset(name, "ov3-mu")


def test_unknown_names_are_one_line():
    with pytest.raises(ConfigError, match="unknown experiment preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="unknown model preset"):
        get_preset("demo_smoke", "ov3-nope")
    assert "demo" in preset_names() and "llava15_ov3_b2_stage1_smoke" in preset_names()
