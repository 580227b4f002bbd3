"""Acting policies: filter the belief, choose an action, explore.

- :class:`BeliefFilter`: THE belief filter both policies run (one posterior step per
  env step, episode starts filtered from h_0 = f(0, 0, 0), the primer).
- :class:`ExplorationNoise`: Gaussian / epsilon-greedy noise under ``ExplorationType.RANDOM``.
- :class:`FilterThenAct`: the shape both policies share (filter -> choose -> explore -> advance).
- :class:`PlaNetPolicy`: filter -> planner -> exploration.
- :class:`DreamerPolicy`: filter -> actor -> exploration.
- :class:`DreamerV3Policy`: categorical filter (:class:`BeliefFilterV3`) -> actor.
"""
from .base import FilterThenAct
from .belief_filter import BeliefFilter, dequantize_pixels
from .dreamer import DreamerPolicy
from .dreamer_v3 import BeliefFilterV3, DreamerV3Policy
from .exploration import ExplorationNoise
from .planet import PlaNetPolicy

__all__ = ["BeliefFilter", "BeliefFilterV3", "DreamerV3Policy", "FilterThenAct", "DreamerPolicy", "ExplorationNoise", "PlaNetPolicy", "dequantize_pixels"]
