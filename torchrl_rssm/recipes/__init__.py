"""Training recipes: PlaNet (``torchrl-rssm train``)."""
from .config import PRESETS, PlaNetConfig, apply_overrides, preset
from .planet import ConfigMismatchError, PlaNetTrainer, load_trainer, resolve_device

__all__ = ["PRESETS", "ConfigMismatchError", "PlaNetConfig", "PlaNetTrainer", "apply_overrides",
           "load_trainer", "preset", "resolve_device"]
