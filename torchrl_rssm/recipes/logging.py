"""Old path of :mod:`torchrl_rssm.recipes.tensorboard` (a standard-library name; kept as a re-export)."""
from .tensorboard import RSSMTensorboardLogger

__all__ = ["RSSMTensorboardLogger"]
