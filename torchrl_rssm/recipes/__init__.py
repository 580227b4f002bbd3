"""Training recipes: one trainer core (``Trainer``) with the PlaNet agent (``torchrl-rssm train``)."""
from .agent import Agent
from .config import PRESETS, PlaNetConfig, RunConfig, apply_overrides, preset
from .planet import PlaNetAgent, PlaNetTrainer
from .trainer import ConfigMismatchError, EpisodeTooShortError, Trainer, agent_class, load_trainer, resolve_device

__all__ = ["PRESETS", "Agent", "ConfigMismatchError", "EpisodeTooShortError", "PlaNetAgent", "PlaNetConfig",
           "PlaNetTrainer", "RunConfig", "Trainer", "agent_class", "apply_overrides", "load_trainer", "preset",
           "resolve_device"]
