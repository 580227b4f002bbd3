"""Latent-space planners (CEM, MPPI) and PlaNet's acting policy.

- :class:`CEMPlanner`, :class:`MPPIPlanner`: TorchRL policy modules that plan from
  ``state`` / ``belief`` (drop-ins for TorchRL's planners of the same names, which
  they also accept a ``DreamerEnv`` for), built on the tensor functions
  :func:`cem` and :func:`mppi`.
- :class:`PlaNetPolicy`: filter the belief with the observation, plan, add
  exploration noise; carries the latent across env steps with a primer.
"""
from ._common import ActionSpace, FastRSSMReturns, PlannerBase, TensorReturns
from .cem import CEMPlanner, cem
from .mppi import MPPIPlanner, mppi
from .policy import PlaNetPolicy

__all__ = [
    "ActionSpace", "CEMPlanner", "FastRSSMReturns", "MPPIPlanner", "PlaNetPolicy", "PlannerBase",
    "TensorReturns", "cem", "mppi",
]
