"""Training recipes: one trainer core (:class:`Trainer`) running an agent (PlaNet or Dreamer) from a
:class:`RunConfig` (``torchrl-rssm train``)."""
from .agent import Agent
from .config import PRESETS, RunConfig, apply_overrides, preset
from .dreamer import DreamerAgent
from .dreamerv3 import DreamerV3Agent
from .planet import PlaNetAgent
from .trainer import ConfigMismatchError, EpisodeTooShortError, Trainer, agent_class, load_trainer, resolve_device

__all__ = ["PRESETS", "Agent", "ConfigMismatchError", "DreamerAgent", "DreamerV3Agent", "EpisodeTooShortError", "PlaNetAgent",
           "RunConfig", "Trainer", "agent_class", "apply_overrides", "load_trainer", "preset", "resolve_device"]
