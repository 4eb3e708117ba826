"""Experiment presets by name, across the families (``configs/presets.py``), and the command
line's parsing of a preset plus its dotted overrides (``configs/parse.py``)."""

from openvision3.configs.presets import get_preset, preset_factory, preset_names

__all__ = ["get_preset", "preset_factory", "preset_names"]
