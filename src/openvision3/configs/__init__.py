"""Experiment presets as code. ``get_preset(name)`` returns a fresh ``ExperimentConfig``."""

from openvision3.configs.presets import PRESETS, get_preset, preset_names

__all__ = ["PRESETS", "get_preset", "preset_names"]
